"""cnnlab-gap end to end on the smoke budget (synthetic data), resuming, and one-line errors for bad input."""

import json
import shutil

import pytest

from tests.conftest import run_cli


@pytest.mark.slow
def test_gap_smoke_end_to_end_and_resume(tmp_path, data_dir):
    out = tmp_path / "gap"
    args = ("budget=smoke", f"paths.data_dir={data_dir}", f"hydra.run.dir={out}")
    proc = run_cli("cnnlab.gap", *args)
    res = json.loads((out / "gap_results.json").read_text())
    assert res["inits"] == ["random", "colorization", "supervised"] and res["seeds"] == [0]
    taps = res["taps"]
    assert taps[0] == "conv1_1" and taps[-1] == "conv4_2"
    for init in res["inits"]:
        for t in taps:
            assert 0.0 <= res["probe"][init][t]["mean"] <= 1.0
        assert 0.0 <= res["finetune"][init]["0.5"]["mean"] <= 1.0
    assert set(res["probe_gap"]) == {*taps, "best"} and "0.5" in res["finetune_gap"]
    for g in [*res["probe_gap"].values(), *res["finetune_gap"].values()]:
        assert (g["mean"] is None) == bool(g["notes"][0]), "a gap is a number or undefined with its reason"
    md = (out / "gap_table.md").read_text()
    assert "| gap closed |" in md and "| colorization |" in md
    assert (out / "gap.png").stat().st_size > 10_000
    assert list((out / "wandb").glob("offline-run-*")), "the table and plot go to an offline W&B run"
    assert "gap closed" in proc.stdout and "9 arms, 0 already done" in proc.stdout
    arms = out / "arms"
    for name in ("supervised_seed0", "colorization_seed0"):
        assert (arms / name / "trunk.pt").is_file() and (arms / name / "metrics.json").is_file()
        assert (arms / name / "checkpoints" / "last.ckpt").is_file(), "each pretraining is a real cnnlab-train run"
    from cnnlab.backbones import read_trunk

    metas = {i: read_trunk(arms / f"{i}_seed0" / "trunk.pt") for i in res["inits"]}
    assert {m["method"] for m in metas.values()} == {"random", "colorization", "supervised"}
    assert {(m["in_channels"], m["color_space"], m["arch"], m["arch_kwargs"]["width"]) for m in metas.values()} == {(1, "L", "vgg_cifar", 8)}
    stamps = {p.parent.name: p.stat().st_mtime_ns for p in arms.glob("*/gap_arm.json")}

    # resume: delete one probe arm and the random trunk (re-created with the same seed: identical weights)
    shutil.rmtree(arms / "probe_colorization_seed0")
    shutil.rmtree(arms / "random_seed0")
    proc = run_cli("cnnlab.gap", *args)
    assert "9 arms, 5 already done" in proc.stdout and "arms: ran 2, reused 7" in proc.stdout
    after = {p.parent.name: p.stat().st_mtime_ns for p in arms.glob("*/gap_arm.json")}
    rerun = {k for k in after if after[k] != stamps.get(k)}
    assert rerun == {"probe_colorization_seed0", "random_seed0"}, f"only the deleted arms run again, not {rerun}"
    res2 = json.loads((out / "gap_results.json").read_text())
    assert res2["probe"]["colorization"] == res["probe"]["colorization"], "the same trunk and seed give the same probe"
    assert res2["finetune"] == res["finetune"]


@pytest.mark.parametrize("override, message", [
    ("label_fractions=[0.1,1.5]", "label fraction 1.5 is outside (0, 1]"),
    ("probe.taps=[conv1_1,conv9_9]", "unknown tap(s) ['conv9_9']"),
    ("inits=[random,imagenet]", "unknown init(s) ['imagenet']"),
])
def test_gap_bad_input_is_one_line_error(tmp_path, data_dir, override, message):
    if override.startswith("label"):  # one real process for the exit code and the one-line message
        proc = run_cli("cnnlab.gap", "budget=smoke", override, f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path}", check=False)
        assert proc.returncode == 2
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert lines == [f"error: {lines[0][len('error: '):]}"] and message in lines[0]
        assert not (tmp_path / "arms").exists(), "nothing runs before the settings are checked"
        return
    from hydra import compose, initialize_config_dir

    from cnnlab.config import CONF_DIR
    from cnnlab.errors import UserError
    from cnnlab.gap import run

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("gap", overrides=["budget=smoke", override, f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path}"], return_hydra_config=False)
    with pytest.raises(UserError) as err:
        run(cfg, out_dir=tmp_path, choices={"data": "synthetic", "backbone": "vgg_cifar"})
    assert message in str(err.value) and "\n" not in str(err.value)
