"""cnnlab-analyze end to end: a real (tiny) trained classifier and trunk files, the HTML report in headless Chromium."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir

from cnnlab.backbones import VGGCifar, save_trunk
from cnnlab.config import CONF_DIR
from cnnlab.errors import UserError
from tests.conftest import run_cli

ALL = ["filters", "patches", "embedding", "occlusion", "attribution", "color_units", "faithfulness", "sanity"]
FAST = ["analyses.embedding.max_iter=250", "analyses.occlusion.images=2", "analyses.occlusion.stride=4",
        "analyses.attribution.images=2", "analyses.attribution.ig_steps=8", "analyses.patches.units=4",
        "analyses.faithfulness.images=4", "analyses.faithfulness.steps=8", "analyses.faithfulness.ig_steps=4",
        "analyses.sanity.images=2", "analyses.sanity.max_layers=3", "analyses.sanity.ig_steps=4",
        "analyses.sanity.draws=1"]


@pytest.fixture(scope="module")
def classifier_ckpt(tmp_path_factory, data_dir) -> Path:
    """A small Classifier trained for a few steps on synthetic images, saved by a real Trainer."""
    import pytorch_lightning as pl

    from cnnlab.data import ImageDataModule
    from cnnlab.models import Classifier

    pl.seed_everything(0)
    dm = ImageDataModule(name="synthetic", data_dir=str(data_dir), batch_size=64, augment=[], progress=False)
    model = Classifier(backbone={"_target_": "cnnlab.backbones.VGGCifar", "width": 8}, num_classes=10,
                       optimizer={"_target_": "torch.optim.Adam", "_partial_": True, "lr": 3e-3})
    trainer = pl.Trainer(max_steps=15, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, accelerator="cpu", limit_val_batches=0)
    trainer.fit(model, datamodule=dm)
    path = tmp_path_factory.mktemp("clf") / "last.ckpt"
    trainer.save_checkpoint(path)
    return path


@pytest.fixture(scope="module")
def colorization_trunk(tmp_path_factory) -> Path:
    """A lightness-input trunk file, as a colorization run exports it (weights random: shapes are what matter here)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("trunk") / "trunk.pt"
    return save_trunk(path, VGGCifar(in_channels=1, width=8), color_space="L", method="colorization", info={"image_size": 32})


@pytest.fixture(scope="module")
def full_run(classifier_ckpt, data_dir, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("analyze") / "run"
    run_cli("cnnlab.analyze", f"ckpt={classifier_ckpt}", "data=synthetic", f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}",
            "limit=120", *FAST)
    return run_dir


def compose_cfg(*overrides: str):
    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        return compose("analyze", overrides=["logger=none", *overrides])


def test_report_contains_every_requested_analysis_and_each_figure(full_run):
    summary = json.loads((full_run / "analysis.json").read_text())
    assert sorted(summary["analyses"]) == sorted(ALL)
    html = (full_run / "report.html").read_text()
    assert re.findall(r"data-analysis='(\w+)'", html) == ALL
    figures = [Path(p) for p in summary["figures"]]
    assert len(figures) >= len(ALL) and all(p.is_file() and p.parent == full_run for p in figures)
    embedded = re.findall(r"<img src='data:image/png;base64,[^']+' alt='([^']+)'>", html)
    assert embedded == [p.stem for p in figures]
    assert html.count("<figcaption>") == len(figures)
    assert list((full_run / "features").glob("*.pt")), "pooled features are cached for the run"
    media = list((full_run / "wandb").glob("offline-run-*/files/media/images/analysis/*.png"))
    assert len(media) == len(figures), "every figure goes to the offline W&B run as media"
    assert 0.0 <= summary["analyses"]["embedding"]["purity"] <= 1.0
    auc = summary["analyses"]["faithfulness"]["auc"]
    assert set(auc) == {"saliency", "deconvnet", "guided_backprop", "integrated_gradients", "grad_cam", "occlusion", "random"}
    assert all(0.0 <= a[k] <= 1.0 for a in auc.values() for k in ("deletion_auc", "insertion_auc"))
    sanity = summary["analyses"]["sanity"]
    assert len(sanity["layers"]) == 4 and all(v[0] == 1.0 and len(v) == 4 for v in sanity["spearman_abs"].values())


def chromium_image_status(html: Path, tmp: Path) -> list[tuple[str, bool]]:
    """Open ``html`` (a copy with a load-time check appended) in headless Chromium; ``[(alt, loaded)]`` per <img>."""
    js = ("<script>window.addEventListener('load',()=>{const r=[...document.images].map(i=>[i.alt,i.complete&&i.naturalWidth>0]);"
          "const p=document.createElement('pre');p.id='imgcheck';p.textContent=JSON.stringify(r);document.body.appendChild(p);});</script>")
    page = tmp / "check.html"
    page.write_text(html.read_text().replace("</body>", js + "</body>"))
    proc = subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}", "--virtual-time-budget=10000", "--dump-dom",
         page.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="imgcheck">(.*?)</pre>', proc.stdout, re.S)
    assert found, f"chromium did not render the page (rc {proc.returncode}): {proc.stderr[-2000:]}"
    return [tuple(x) for x in json.loads(found.group(1).replace("&quot;", '"'))]


@pytest.fixture
def chromium():
    if shutil.which("chromium") is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed in CI: .ci/run installs Debian's chromium package")
        pytest.skip("chromium is not installed (apt-get install -y chromium): cannot render the report headless")


def test_every_figure_of_the_report_loads_in_headless_chromium(full_run, tmp_path, chromium):
    status = chromium_image_status(full_run / "report.html", tmp_path)
    assert len(status) == len(json.loads((full_run / "analysis.json").read_text())["figures"])
    assert all(ok for _, ok in status), status
    # the check can fail: a corrupted figure is reported as not loaded
    broken = tmp_path / "broken.html"
    broken.write_text("<html><body><img alt='bad' src='data:image/png;base64,iVBORw0KGgoAAAA'></body></html>")
    assert chromium_image_status(broken, tmp_path) == [("bad", False)]


def test_colorization_trunk_gets_trunk_analyses_and_a_one_line_error_for_head_ones(colorization_trunk, data_dir, tmp_path):
    from cnnlab.analyze import run

    cfg = compose_cfg(f"ckpt={colorization_trunk}", "data=synthetic", f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path}",
                      "analysis=[filters,patches,color_units]", "limit=120", "analyses.patches.units=[0,2]")
    summary = run(cfg)
    assert set(summary) == {"filters", "patches", "color_units"}
    assert sum(summary["color_units"]["counts"].values()) == 32  # conv3_1 of a width-8 VGG has 32 units
    html = (tmp_path / "report.html").read_text()
    assert "colorization trunk" in html and "L input" in html
    cfg = compose_cfg(f"ckpt={colorization_trunk}", "data=synthetic", f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path}",
                      "analysis=[occlusion]")
    with pytest.raises(UserError, match=r"\(colorization\) has no classifier head") as err:
        run(cfg)
    assert "\n" not in str(err.value)


def test_bad_inputs_are_one_line_errors(classifier_ckpt, data_dir, tmp_path, monkeypatch, capsys):
    from cnnlab.analyze import main, run

    # the console entry point itself (in-process: a subprocess would only add start-up time)
    monkeypatch.setattr("sys.argv", ["cnnlab-analyze", f"ckpt={classifier_ckpt}", "data=synthetic", f"paths.data_dir={data_dir}",
                                     f"hydra.run.dir={tmp_path / 'r'}", "logger=none", "analysis=patches", "analyses.patches.tap=conv9_9"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "unknown layer 'conv9_9'" in errors[0] and "list_layers=true" in errors[0], errors
    # the run dir the mistake made is gone, and no log handler of this process still writes into it
    assert not (tmp_path / "r").exists()
    import logging

    handlers = [h for lg in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()] for h in getattr(lg, "handlers", [])]
    assert not [h for h in handlers if str(tmp_path / "r") in str(getattr(h, "baseFilename", ""))]
    logging.getLogger("cnnlab").warning("logging still works after the run dir went")

    base = [f"ckpt={classifier_ckpt}", "data=synthetic", f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path}"]
    with pytest.raises(UserError, match=r"unknown unit\(s\) \[500\]"):
        run(compose_cfg(*base, "analysis=patches", "analyses.patches.units=[1,500]", "limit=20"))
    with pytest.raises(UserError, match=r"unknown attribution method\(s\) \['lime'\]"):
        run(compose_cfg(*base, "analysis=[faithfulness]", "analyses.faithfulness.methods=[saliency,lime]", "limit=20"))
    with pytest.raises(UserError, match="deletion_fill must be one of"):
        run(compose_cfg(*base, "analysis=[faithfulness]", "analyses.faithfulness.deletion_fill=purple", "limit=20"))
    with pytest.raises(UserError, match="does not exist"):
        run(compose_cfg(*base[1:], f"ckpt={tmp_path / 'nope.ckpt'}", "analysis=filters"))
    with pytest.raises(UserError, match="no checkpoint given"):
        run(compose_cfg(*base[1:], "ckpt=null", "analysis=filters"))
    with pytest.raises(UserError, match=r"reference CIFAR-10 classifier is not built yet.*`cnnlab-train experiment=reference_cifar`.*network.arch="):
        run(compose_cfg(*base[1:], f"paths.log_dir={tmp_path / 'fresh'}", "analysis=filters"))
    not_a_ckpt = tmp_path / "x.pt"
    torch.save({"weights": torch.zeros(2)}, not_a_ckpt)
    with pytest.raises(UserError, match="neither a cnnlab Lightning checkpoint nor a trunk file"):
        run(compose_cfg(*base[1:], f"ckpt={not_a_ckpt}", "analysis=filters"))


def test_split_val_is_the_split_the_checkpoints_run_held_out(classifier_ckpt, data_dir, tmp_path, monkeypatch, capsys):
    from cnnlab.analyze import build_datamodule, main
    from cnnlab.data import ImageDataModule
    from cnnlab.subject import load_subject

    subject = load_subject(path=classifier_ckpt)
    assert subject.data_split == {"name": "synthetic", "source": None, "val_fraction": 0.1, "split_seed": 0}
    trained = ImageDataModule(name="synthetic", data_dir=str(data_dir), augment=[], progress=False)  # as the fixture trained
    trained.setup()
    base = [f"ckpt={classifier_ckpt}", "data=synthetic", f"paths.data_dir={data_dir}", f"paths.output_dir={tmp_path}",
            "data.val_fraction=0.3", "data.split_seed=5"]
    dm = build_datamodule(compose_cfg(*base, "split=val"), subject)
    dm.setup()
    assert torch.equal(dm.splits["val"].images, trained.splits["val"].images)
    assert torch.equal(dm.splits["train"].images, trained.splits["train"].images)
    own = build_datamodule(compose_cfg(*base, "split=val", "follow_checkpoint_data=false"), subject)
    assert (own.hparams.val_fraction, own.hparams.split_seed) == (0.3, 5)
    with pytest.raises(UserError, match="data.val_fraction is 0"):
        build_datamodule(compose_cfg(*base, "split=val", "follow_checkpoint_data=false", "data.val_fraction=0"), subject)
    monkeypatch.setattr("sys.argv", ["cnnlab-analyze", *base[:3], f"hydra.run.dir={tmp_path / 'r'}", "logger=none",
                                     "analysis=sanity", "split=validation"])
    with pytest.raises(SystemExit) as exit_info:
        main()
    assert exit_info.value.code == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "split must be one of ['test', 'val', 'train']" in errors[0], errors
    assert not (tmp_path / "r").exists(), "refused before the run dir was made"


def test_each_file_is_read_once(classifier_ckpt, colorization_trunk, monkeypatch):
    from cnnlab.subject import load_subject

    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append(a[0]) or real_load(*a, **k))
    clf = load_subject(path=classifier_ckpt)
    trunk = load_subject(path=colorization_trunk)
    assert reads == [classifier_ckpt, colorization_trunk]
    assert clf.has_logits and clf.classes and not trunk.has_logits and trunk.color_space == "L"


def test_empty_dataset_is_a_one_line_error(classifier_ckpt, data_dir, tmp_path):
    from cnnlab.analysis.context import AnalysisContext
    from cnnlab.analysis.runners import run_embedding, run_patches
    from cnnlab.data import ImageDataModule
    from cnnlab.data.datamodule import TensorImageDataset
    from cnnlab.subject import load_subject

    dm = ImageDataModule(name="synthetic", data_dir=str(data_dir), augment=[], progress=False)
    dm.setup()
    dm.splits["test"] = TensorImageDataset(dm.splits["test"].images[:0], dm.splits["test"].labels[:0])
    ctx = AnalysisContext(load_subject(path=classifier_ckpt), dm, tmp_path)
    for fn in (run_patches, run_embedding):
        with pytest.raises(UserError, match="split is empty"):
            fn(ctx)


def test_cifar_features_are_cached_and_reused_between_analyses_and_runs(cifar_dm_kwargs, tmp_path):
    from cnnlab.analysis.context import AnalysisContext
    from cnnlab.analysis.runners import run_embedding, run_patches
    from cnnlab.data import ImageDataModule
    from cnnlab.subject import load_subject

    torch.manual_seed(0)
    trunk = save_trunk(tmp_path / "trunk.pt", VGGCifar(width=8), color_space="rgb", method="random")
    cache = tmp_path / "cache"

    dm = ImageDataModule(**cifar_dm_kwargs, augment=[])  # one data module: decoding CIFAR-10 is the slow part

    def context(out):
        return AnalysisContext(load_subject(path=trunk), dm, tmp_path / out, limit=200, feature_cache_dir=cache)

    ctx = context("a")
    res = run_patches(ctx, tap="conv2_2", units=[0, 1], k=3)
    assert len(res["patches"][0]) == 3 and ctx.classes[:2] == ["airplane", "automobile"]
    run_embedding(ctx, max_iter=250, queries=2, neighbours=3, grid=8)
    files = list(cache.glob("*.pt"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    feats = ctx.features("conv4_2")  # second use in the run: from memory
    assert feats is ctx.features("conv4_2") and feats["conv4_2"].shape == (200, 64)
    ctx2 = context("b")  # a later run with the same weights and data: from the disk cache
    again = ctx2.features("conv4_2")
    assert files[0].stat().st_mtime_ns == mtime
    torch.testing.assert_close(again["conv4_2"], feats["conv4_2"])
