"""Segmentation end to end on the real CamVid archive: cnnlab-train (interrupted and resumed), cnnlab-eval, cnnlab-segment."""

import json
import tarfile

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data.segmentation import SegmentationDataModule
from cnnlab.labelmaps import majority_class_scores
from tests.conftest import run_cli

# a tiny working size and network: the point is the plumbing and that it learns, not the score
TINY = ["experiment=segment_camvid", "data.image_size=[45,60]", "backbone.width=8", "model.hidden=32",
        "model.samples_per_image=64", "+trainer.limit_train_batches=12", "trainer.max_epochs=2",
        # the first 16 val frames and a fixed 32 of the test frames: full-resolution scoring is what costs on a CPU.
        # The test subset is a data setting (saved in the checkpoint), not a trainer limit, so cnnlab-eval scores it too
        "data.eval_batch_size=16", "+trainer.limit_val_batches=1", "data.test_limit=32",
        "callbacks.progress_bar=null", "callbacks.model_summary=null"]


@pytest.fixture(scope="module")
def camvid_run(tmp_path_factory, data_dir, camvid_archive):
    """A run interrupted after its first epoch and resumed (``resume=``) to the end; returns (run dir, first process)."""
    run_dir = tmp_path_factory.mktemp("seg") / "run"
    first = run_cli("cnnlab.train", *TINY, f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}",
                    "+callbacks.interrupt._target_=cnnlab.callbacks.InterruptAfter", "+callbacks.interrupt.epochs=1", check=False)
    run_cli("cnnlab.train", f"resume={run_dir}", "~callbacks.interrupt")
    return run_dir, first


@pytest.mark.slow
def test_resumed_camvid_run_finishes_and_beats_the_majority_class(camvid_run, data_dir):
    run_dir, first = camvid_run
    assert first.returncode == 1 and f"cnnlab-train resume={run_dir}" in first.stderr
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["epoch"] == 1 and last["cnnlab_data"]["classes"][0] == "sky"
    assert len(list((run_dir / "wandb").glob("offline-run-*"))) == 2, "the resumed run continues the same W&B run"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    dm = SegmentationDataModule(data_dir=str(data_dir), image_size=[45, 60], test_limit=32, progress=False)
    dm.setup()
    majority = majority_class_scores(dm.splits["train"].masks, dm.splits["test"].masks, dm.num_classes)
    assert metrics["test/frames"] == 32 and metrics["val/frames"] == 16
    assert metrics["test/miou"] > float(majority["miou"]) + 0.03, (metrics["test/miou"], float(majority["miou"]))
    assert metrics["test/pixel_acc"] > float(majority["pixel_acc"])
    assert {"val/miou", "test/iou_road", "test/iou_sky"} <= set(metrics)
    assert list((run_dir / "images" / "test_panels").glob("*.png")) and (run_dir / "trunk.pt").is_file()


@pytest.mark.slow
def test_eval_and_segment_commands_on_the_checkpoint(camvid_run, data_dir, camvid_archive, tmp_path):
    run_dir, _ = camvid_run
    best = next((run_dir / "checkpoints").glob("best_*.ckpt"))
    out = tmp_path / "eval"
    # no data arguments: the data comes from the checkpoint (CamVid, 45x60, the run's 32 test frames)
    run_cli("cnnlab.evaluate", f"ckpt_path={best}", f"paths.data_dir={data_dir}", f"hydra.run.dir={out}")
    evaluated, trained = (json.loads(p.read_text()) for p in (out / "metrics.json", run_dir / "metrics.json"))
    assert evaluated["test/frames"] == trained["test/frames"] == 32, "the same frames, or the scores differ by which"
    assert evaluated["test/miou"] == pytest.approx(trained["test/miou"], abs=1e-4)
    assert evaluated["test/pixel_acc"] == pytest.approx(trained["test/pixel_acc"], abs=1e-4)
    fewer = tmp_path / "eval8"
    run_cli("cnnlab.evaluate", f"ckpt_path={best}", "data.test_limit=8", f"paths.data_dir={data_dir}",
            f"hydra.run.dir={fewer}")  # data.<key> on the command line changes that one setting of the saved data
    assert json.loads((fewer / "metrics.json").read_text())["test/frames"] == 8

    with tarfile.open(camvid_archive) as tar:
        member = next(m for m in tar if m.name.endswith(".jpg"))
        (tmp_path / "frame.jpg").write_bytes(tar.extractfile(member).read())
    proc = run_cli("cnnlab.segment", str(tmp_path / "frame.jpg"), "--ckpt", str(best), "--out", str(tmp_path / "seg"), "--labels")
    seg = tmp_path / "seg" / "frame_seg.png"
    assert proc.stdout.split() == [str(seg)]
    labels = np.asarray(Image.open(tmp_path / "seg" / "frame_labels.png"))
    assert Image.open(seg).size == (480, 360) and labels.shape == (360, 480) and labels.max() < 11
    again = run_cli("cnnlab.segment", str(tmp_path / "frame.jpg"), "--ckpt", str(best), "--out", str(tmp_path / "seg"))
    assert "already segmented" in again.stderr and not again.stdout.strip()


def test_a_bad_source_is_one_line_and_writes_nothing(tmp_path, data_dir):
    src = tmp_path / "bad"
    for d in ("train/images", "train/labels"):
        (src / d).mkdir(parents=True)
    (src / "classes.txt").write_text("a\nb\n")
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(src / "train/images/f.png")
    Image.fromarray(np.zeros((10, 16), np.uint8)).save(src / "train/labels/f.png")
    run_dir = tmp_path / "run"
    proc = run_cli("cnnlab.train", *TINY, f"data.source={src}", "data.ignore_index=255", "logger=none",
                   f"paths.data_dir={tmp_path / 'data'}", f"hydra.run.dir={run_dir}", check=False)
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == ["error: label map of train/images/f.png is 16x10 but its image is 16x12: "
                      "give every image a label map of the same size"], proc.stderr[-2000:]
    assert not (run_dir / "checkpoints").exists() and not (run_dir / "metrics.json").exists()
    assert not (tmp_path / "data" / "cache").exists() or not any((tmp_path / "data" / "cache").iterdir())
