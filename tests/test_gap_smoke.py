"""cnnlab-gap end to end on the smoke budget (synthetic pool and classification task, tiny CamVid segmentation):
the protocol's properties, resuming, test labels that change no choice, and one-line errors for bad input."""

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from tests.conftest import run_cli

INITS = ("random", "colorization", "supervised")


def _choices(res: dict) -> dict:
    """Everything the protocol chose on validation, per task, from a gap_results.json."""
    out = {}
    for name, r in res["tasks"].items():
        pr = r["probe"]
        out[name] = {"best_tap": {i: b["tap"] for i, b in pr["best_tap"].items()},
                     "weight_decay": {i: {t: pr["linear"][i][t]["weight_decay_chosen"] for t in r["taps"]} for i in r["inits"]},
                     "finetune": {f: {i: (e[i]["lr_chosen"], e[i]["variant_chosen"], e[i]["step_chosen"]) for i in r["inits"]}
                                  for f, e in r["finetune"].items()}}
    return out


def _compose(*overrides):
    from hydra import compose, initialize_config_dir

    from cnnlab.config import CONF_DIR

    # every arm in this process (launcher=local): the tests below check its results, not the pool
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("gap", overrides=["launcher=local", *overrides])


@pytest.fixture(scope="module")
def shapes_segfolder(tmp_path_factory) -> Path:
    """A tiny synthetic segmentation folder (train 24 / val 8 / test 8 frames of 24x32): class 0 background, 1 and 2
    rectangles of their own colour. The smoke budget's own CamVid is scored at full resolution, minutes on a CPU."""
    from PIL import Image

    root = tmp_path_factory.mktemp("shapes_seg")
    (root / "classes.txt").write_text("background\nred\nblue\n")
    rng = np.random.default_rng(0)
    for split, n in (("train", 24), ("val", 8), ("test", 8)):
        for sub in ("images", "labels"):
            (root / split / sub).mkdir(parents=True)
        for i in range(n):
            image = rng.integers(90, 140, (24, 32, 3), dtype=np.uint8)
            mask = np.zeros((24, 32), np.uint8)
            for cls, colour in ((1, (200, 40, 40)), (2, (40, 40, 200))):
                y, x = rng.integers(0, 14), rng.integers(0, 20)
                image[y:y + 10, x:x + 12], mask[y:y + 10, x:x + 12] = colour, cls
            Image.fromarray(image).save(root / split / "images" / f"{i:03d}.png")
            Image.fromarray(mask).save(root / split / "labels" / f"{i:03d}.png")
    return root


@pytest.mark.slow
@pytest.mark.timeout(1800)  # 17.7 min on a 2-core machine at load 11-19 (not yet timed idle)
def test_gap_smoke_both_tasks_end_to_end_resume_and_test_labels_change_no_choice(tmp_path, data_dir, shapes_segfolder, monkeypatch):
    """A plumbing check: synthetic pool, classification task and segmentation folder; every arm kind of both tasks."""
    out = tmp_path / "gap"
    args = ("budget=smoke", f"paths.data_dir={data_dir}", f"hydra.run.dir={out}", f"tasks.seg.cfg.source={shapes_segfolder}")
    proc = run_cli("cnnlab.gap", *args, timeout=1500)  # ~3 min idle; a machine shared with other jobs needs the margin
    res = json.loads((out / "gap_results.json").read_text())
    assert res["inits"] == list(INITS) and res["protocol"]["seeds"] == [0] and res["protocol"]["label_subsets"] == [0, 1]
    assert res["synthetic"] and "PLUMBING CHECK ON SYNTHETIC DATA" in proc.stdout, "the console says what the run is"
    cls, seg = res["tasks"]["cls"], res["tasks"]["seg"]
    taps = cls["taps"]
    assert taps[0] == "conv1_1" and taps[-1] == "conv4_2" and seg["taps"] == ["hypercolumn"] and seg["metric"] == "mIoU"
    arms = out / "arms"
    # pretraining read the pool alone (6 classes, its own images), the same steps for both pretrained inits
    for name in ("supervised_seed0", "colorization_seed0"):
        c = OmegaConf.load(arms / name / "config.yaml")
        assert c.data.synthetic.num_classes == 6 and c.data.synthetic.seed == 7 and c.trainer.max_steps == 8
        assert json.loads((arms / name / "gap_arm.json").read_text())["run"]["steps"] == 8, "every pretraining ran its 8 steps"
        assert (arms / name / "trunk.pt").is_file()
    # probes: fit on the task's label subset, the weight decay chosen on val is the grid's best, the test split read once
    for init in INITS:
        for k in (0, 1):
            p = json.loads((arms / f"probe_cls_{init}_seed0_sub{k}" / "probe.json").read_text())
            assert 0.45 * 270 <= p["n_train"] <= 0.55 * 270 and (p["n_val"], p["n_test"]) == (30, 100), "half the task's pool; val; test"
            for t in taps:
                lin = p["linear"][t]
                assert lin["val"] == max(lin["grid"].values()) and lin["grid"][repr(lin["weight_decay"])] == lin["val"]
                assert 0.0 <= lin["test"] <= 1.0 and p["knn"][t]["k"] == 20
        best = cls["probe"]["best_tap"][init]
        assert best["chosen_on"] == "validation" and best["test"]["n"] == 1, "n counts pretraining seeds, not label subsets"
        assert best["test"]["mean"] > 0.2, "the best linear probe of every init is at least twice chance on 10 classes"
        d = json.loads((arms / f"probe_seg_{init}_seed0" / "probe.json").read_text())["dense"]
        assert d["val_miou"] == max(d["grid"].values()) and 0 <= d["test_miou"] <= 1
    # fine-tunes: each candidate kept its best-on-val checkpoint and never read test; the test arm chose on val
    for init in INITS:
        for k in (0, 1):
            base = arms / f"finetune_cls_{init}_f0.5_seed0_sub{k}"
            choice = json.loads((base / "choice.json").read_text())
            assert choice["val"] == max(choice["grid"].values()) and choice["lr"] in (0.01, 0.05)
            assert len(choice["grid"]) == 4 and choice["variant"] in ("plain", "lpft"), "the grid is lr x recipe variant"
            assert choice["step"] in (2, 4) and choice["step_is_last"] == (choice["step"] == 4)
            hist = json.loads((arms / choice["candidate"] / "candidate.json").read_text())["history"]
            assert [s for s, _ in hist] == [2, 4] and max(v for _, v in hist) == pytest.approx(choice["val"])
            assert choice["last_gain"] == pytest.approx(hist[1][1] - hist[0][1]), "what the last validation added"
            for lr in ("0.01", "0.05"):
                for suffix, head_only in (("", 0), ("_lpft", 2)):
                    cand = arms / f"finetune_cls_{init}_f0.5_seed0_sub{k}_lr{lr}{suffix}"
                    metrics = json.loads((cand / "metrics.json").read_text())
                    assert not any(key.startswith("test/") for key in metrics), "a candidate never reads the test split"
                    c = OmegaConf.load(cand / "config.yaml")
                    assert c.data.label_seed == k and c.data.label_fraction == 0.5 and c.model.optimizer.lr == float(lr)
                    assert c.model.head_only_steps == head_only and c.model.warmup_steps == 1, "the variant over the recipe"
                    assert c.data.synthetic.num_classes == 10 and c.data.color_space == "L"
                    assert [p.name for p in (cand / "checkpoints").iterdir()] == [Path(json.loads((cand / "candidate.json").read_text())["path"]).name]
            assert "test/acc" in json.loads((base / "metrics.json").read_text())
            seg_choice = json.loads((arms / f"finetune_seg_{init}_f0.5_seed0_sub{k}" / "choice.json").read_text())
            assert seg_choice["val"] is not None and 0 <= seg_choice["test"] <= 1 and seg_choice["lr"] == 0.001
            assert "test/miou" in json.loads((arms / f"finetune_seg_{init}_f0.5_seed0_sub{k}" / "metrics.json").read_text())
    for r in (cls, seg):
        for block in (r["finetune"]["0.5"]["gap"], r["probe"]["linear_gap"]["best"]):
            g = block["gap_closed"]
            assert (g["mean"] is None) == bool(g["note"].startswith("undefined")), "a gap is a number or undefined with its reason"
            assert block["colorization - random"]["n"] == 1, "one pretraining seed: one unit, no interval"
    md = (out / "gap_table.md").read_text()
    assert md.startswith("## PLUMBING CHECK ON SYNTHETIC DATA") and "**PLUMBING CHECK ON SYNTHETIC DATA" in md
    assert "## Task cls: classification" in md and "## Task seg: segmentation" in md and "mIoU %" in md
    assert "| gap closed |" in md and "±" not in md and "chosen on val" in md and "Where the time went" in md
    t = res["timing"]
    workers = int(re.search(r"arms run by: pool of (\d+) worker", proc.stdout).group(1))
    assert 0 < t["train_batch_seconds"] < t["arm_seconds"] <= workers * t["wall_seconds"], "arms overlap in the workers"
    assert (out / "gap.png").stat().st_size > 10_000
    assert list((out / "wandb").glob("offline-run-*")), "the table and plot go to an offline W&B run"
    assert list((out / "wandb").glob("offline-run-*/files/requirements.txt")), "the gap's own run lists the packages"
    assert not list(arms.glob("*/wandb/offline-run-*/files/requirements.txt")), "its arms do not repeat the list"
    assert "54 arms, 0 already done" in proc.stdout
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in arms.glob("*/gap_arm.json")}

    # resume: delete one probe arm and the random trunk (re-created with the same seed: identical weights)
    shutil.rmtree(arms / "probe_cls_colorization_seed0_sub0")
    shutil.rmtree(arms / "random_seed0")
    proc = run_cli("cnnlab.gap", *args, "report.wandb=false", timeout=1500)
    assert "54 arms, 35 already done" in proc.stdout and "arms: ran 2, reused 52" in proc.stdout
    after = {p.parent.name: p.stat().st_mtime_ns for p in arms.glob("*/gap_arm.json")}
    rerun = {k for k in after if after[k] != stamps.get(k)}
    assert rerun == {"probe_cls_colorization_seed0_sub0", "random_seed0"}, f"only the deleted arms run again, not {rerun}"
    res2 = json.loads((out / "gap_results.json").read_text())
    assert res2["tasks"]["cls"]["probe"]["linear"]["colorization"] == cls["probe"]["linear"]["colorization"]
    assert res2["tasks"]["cls"]["finetune"] == cls["finetune"] and res2["tasks"]["seg"]["finetune"] == seg["finetune"]

    # the same run on the same trunks with every task's test labels permuted: every choice identical, the test numbers not
    from cnnlab.data.datamodule import ImageDataModule
    from cnnlab.data.segmentation import SegmentationDataModule
    from cnnlab.gap import run

    shuffled = tmp_path / "shuffled"
    for name in (f"{i}_seed0" for i in INITS):
        shutil.copytree(arms / name, shuffled / "arms" / name)
    for cls_, field in ((ImageDataModule, "labels"), (SegmentationDataModule, "masks")):
        def permuted(self, stage=None, _setup=cls_.setup, _field=field):
            fresh = not self.splits
            _setup(self, stage)
            if fresh:
                test = self.splits["test"]
                values = getattr(test, _field)
                setattr(test, _field, values[torch.randperm(len(values), generator=torch.Generator().manual_seed(1))])
        monkeypatch.setattr(cls_, "setup", permuted)
    cfg = _compose(*args[:2], f"paths.output_dir={shuffled}", f"tasks.seg.cfg.source={shapes_segfolder}", "report.wandb=false")
    monkeypatch.delenv("WANDB_RUN_GROUP", raising=False)
    res3 = run(cfg, out_dir=shuffled, choices={})
    assert "WANDB_RUN_GROUP" not in os.environ, "the arms' W&B group would outlive the run in this process"
    assert all(res3["arms"][f"{i}_seed0"]["reused"] for i in INITS), "the copied trunks are reused"
    assert _choices(res3) == _choices(res), "no choice depends on a test label"
    assert res3["tasks"]["cls"]["probe"]["linear"] != cls["probe"]["linear"], "the permuted test labels did reach the test scores"
    assert res3["tasks"]["seg"]["probe"]["linear"] != seg["probe"]["linear"], "the permuted test masks did reach the test scores"


@pytest.mark.parametrize("override, message", [
    ("tasks.cls.label_fractions=[0.1,1.5]", "label fraction 1.5 of task cls is outside (0, 1]"),
    ("probe.taps=[conv1_1,conv9_9]", "unknown tap(s) ['conv9_9']"),
    ("inits=[random,imagenet]", "unknown init(s) ['imagenet']"),
    ("tasks.cls.cfg.val_fraction=0", "every choice of the gap is made on the validation split"),
    ("finetune.lrs=[]", "finetune.lrs is empty"),
    ("+finetune.variants.fast={lr:1.0}", "a variant sets fine-tune recipe options only"),
    ("tasks.seg.kind=detection", "tasks.seg.kind=detection: choose one of"),
    ("pretrain.steps=0", "pretrain.steps=0"),
])
def test_gap_bad_input_is_one_line_error(tmp_path, data_dir, override, message):
    if override.startswith("tasks.cls.label"):  # one real process for the exit code and the one-line message
        proc = run_cli("cnnlab.gap", "budget=smoke", override, f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path}", check=False)
        assert proc.returncode == 2
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert lines == [f"error: {lines[0][len('error: '):]}"] and message in lines[0]
        assert not (tmp_path / "arms").exists(), "nothing runs before the settings are checked"
        return
    from cnnlab.errors import UserError
    from cnnlab.gap import run

    cfg = _compose("budget=smoke", override, f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path}")
    with pytest.raises(UserError) as err:
        run(cfg, out_dir=tmp_path, choices={})
    assert message in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_validation_only_run_reads_no_test_split(tmp_path, data_dir):
    """The gap's own plan as a search: validation_only=true runs probes and fine-tune choices without any test read.
    Its arms train as the standard budget's do, in bf16 mixed precision with channels-last weights."""
    from cnnlab.gap import run

    cfg = _compose("budget=smoke", f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path}", "report.wandb=false",
                   "validation_only=true", "inits=[random]", "tasks.seg=null", "probe.taps=[conv2_2,conv4_2]",
                   "finetune.lrs=[0.05]", "~finetune.variants.lpft",
                   "+arm.groups.precision=bf16-mixed", "+arm.cfg.callbacks.channels_last._target_=cnnlab.callbacks.ChannelsLast")
    res = run(cfg, out_dir=tmp_path, choices={})
    arm_cfg = OmegaConf.load(tmp_path / "arms" / "finetune_cls_random_f0.5_seed0_sub0_lr0.05" / "config.yaml")
    assert arm_cfg.trainer.precision == "bf16-mixed" and arm_cfg.callbacks.channels_last._target_.endswith("ChannelsLast")
    found = []

    def walk(node, path=""):
        if isinstance(node, dict):
            for k, v in node.items():
                if k in ("test", "test_miou") and v is not None and not isinstance(v, dict):
                    found.append(f"{path}/{k}")
                if k == "n_test" and v:
                    found.append(f"{path}/{k}")
                walk(v, f"{path}/{k}")
        elif isinstance(node, list):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    for probe in (tmp_path / "arms").glob("probe_*/probe.json"):
        walk(json.loads(probe.read_text()), probe.parent.name)
    for choice in (tmp_path / "arms").glob("finetune_*/choice.json"):
        walk(json.loads(choice.read_text()), choice.parent.name)
    assert not found, f"a validation-only run read the test split: {found}"
    r = res["tasks"]["cls"]
    assert r["probe"]["linear"]["random"]["conv2_2"]["val"]["mean"] is not None and r["finetune"]["0.5"]["random"]["val"]["mean"] is not None
    assert all(not json.loads(m.read_text()) for m in (tmp_path / "arms").glob("finetune_cls_random_f0.5_seed0_sub?/metrics.json"))
    table = (tmp_path / "gap_table.md").read_text()
    assert "Validation only: no test split was read" in table and "test split, read once" not in table
    assert "every training arm in bf16-mixed with channels-last weights" in table, "the report says how its arms computed"
    row = next(r for r in table.splitlines() if r.startswith("| random | "))
    assert "–" not in row, "the probe table shows the validation scores a validation-only run has, not empty cells"
