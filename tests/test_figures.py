"""Every figure a command shares explains itself: titles, class names, row and column labels, at a size that reads.

The figures are checked where they are written: ``Figure.savefig`` is wrapped to record every text a figure
carries (:func:`cnnlab.figures.figure_labels`) and its size in pixels.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image
from torch import nn

from cnnlab.figures import captioned_row, figure_labels, grid_figure
from cnnlab.subject import Subject
from cnnlab.visualize.experiments import Context, adversarial, class_model, fooling

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]

CIFAR = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture
def saved(monkeypatch) -> dict[str, dict]:
    """``{file stem: {"labels": [...], "size": (w, h)}}`` of every matplotlib figure saved while the test runs."""
    record: dict[str, dict] = {}
    original = Figure.savefig

    def savefig(fig, fname, *args, **kwargs):
        w, h = fig.get_size_inches() * fig.dpi
        name = str(getattr(fname, "name", fname)).rsplit("/", 1)[-1].lstrip(".")  # atomic writes save to .<name>.png.<tmp>
        record[name.split(".png")[0]] = {"labels": figure_labels(fig), "size": (w, h)}
        return original(fig, fname, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return record


@pytest.fixture(scope="module")
def net() -> Subject:
    """A small untrained CIFAR-shaped classifier with class names (the labels, not the weights, are under test)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(4), nn.Flatten(), nn.Linear(128, 10))
    return Subject(model.eval(), classes=CIFAR, image_size=32, name="tiny")


def _one(saved: dict, stem: str) -> dict:
    hits = [v for k, v in saved.items() if k == stem]
    assert len(hits) == 1, f"{stem}: {sorted(saved)}"
    return hits[0]


def test_grid_figure_carries_title_caption_rows_columns_and_notes():
    fig = grid_figure(torch.rand(6, 3, 32, 32), 3, "A title", rows=["first", "second"], cols=["a", "b", "c"],
                      notes=[f"n{i}" for i in range(6)], caption="what it shows")
    labels = figure_labels(fig)
    assert {"A title", "what it shows", "first", "second", "a", "b", "c", *(f"n{i}" for i in range(6))} <= set(labels)
    w, h = fig.get_size_inches() * fig.dpi
    assert w >= 3 * 96 and h >= 2 * 96, "tiles are enlarged to a size that reads"


def test_class_model_and_fooling_name_every_class(net, tmp_path, saved):
    ctx = Context(network=net, out_dir=tmp_path, progress=False)
    class_model(ctx, classes=["cat", "ship"], steps=2)
    fooling(ctx, classes=["cat", "ship"], steps=2)
    for stem, kind in (("class_model", "Class models"), ("fooling", "Fooling images")):
        labels = " ".join(_one(saved, stem)["labels"])
        assert kind in labels and "tiny" in labels, labels
        assert "cat" in labels and "ship" in labels, labels


def test_adversarial_rows_and_columns_are_labelled(net, data_dir, cifar_archive, tmp_path, saved):
    ctx = Context(network=net, out_dir=tmp_path, data_dir=str(data_dir), progress=False)
    adversarial(ctx, count=3, steps=2, md_steps=2, md_search=1, curve_count=0)
    fig = _one(saved, "adversarial")
    labels = fig["labels"]
    assert {"clean", "FGSM", "PGD-2", "minimal distortion", "its perturbation x10"} <= set(labels), labels
    assert {"true: airplane", "true: automobile", "true: bird"} <= set(labels), labels
    assert sum(label.startswith("-> ") for label in labels) == 3 * 4, "a predicted class under every attacked image"
    assert any(label.startswith("Adversarial examples") for label in labels)


def test_training_panels_are_labelled_and_readable(tmp_path, saved):
    from cnnlab.tracking import log_image_grid

    trainer = SimpleNamespace(default_root_dir=str(tmp_path), global_step=7, current_epoch=1, loggers=[])
    path = log_image_grid(trainer, "val/panels", torch.rand(24, 3, 32, 32), nrow=6, caption="gray | prediction | truth")
    labels = _one(saved, "step_0000007")["labels"]
    assert labels.count("prediction") == 2 and labels.count("truth") == 2 and "val/panels, epoch 1, step 7" in labels
    w, h = Image.open(path).size
    assert w >= 6 * 96 and h >= 4 * 96, (w, h)


def test_analysis_grids_and_plots_get_titles_and_labels(net, tmp_path, saved):
    import matplotlib.pyplot as plt

    from cnnlab.analysis.context import AnalysisContext

    ctx = AnalysisContext(net, None, tmp_path)
    sec = ctx.section("patches", "Maximally activating patches")
    ctx.save_figure(sec, "grid", torch.rand(4, 3, 8, 8), "one row per unit", nrow=2, rows=["unit 0", "unit 1"], cols=["#1", "#2"])
    fig, ax = plt.subplots()
    ax.plot([0, 1])
    ctx.save_figure(sec, "plot", fig, "a curve")
    grid = _one(saved, "analysis_grid")["labels"]
    assert {"Maximally activating patches", "one row per unit", "unit 0", "unit 1", "#1", "#2"} <= set(grid), grid
    assert "Maximally activating patches" in _one(saved, "analysis_plot")["labels"]


def test_captioned_row_keeps_pixels_and_writes_a_caption_above_each_part():
    a = np.full((120, 80, 3), 200, np.uint8)
    b = np.zeros((120, 100, 3), np.uint8)
    out = captioned_row([a, b], ["gray input", "colorized"])
    strip = out.shape[0] - 120
    assert strip > 0 and out.shape[1] == 80 + 100 + 8
    assert (out[strip:, :80] == a).all() and (out[strip:, 88:] == b).all(), "the images themselves are unchanged"
    for x0, x1 in ((0, 80), (88, 188)):
        assert (out[:strip, x0:x1] < 128).any(), "dark caption text above each part"
