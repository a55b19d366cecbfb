"""The Python API on a plain ``nn.Module`` (not a cnnlab model): visualizations and analyses with its own layer names."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from cnnlab import api
from cnnlab.errors import UserError

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]


class Net(nn.Module):
    """A user's own small CNN: named blocks, no cnnlab base class."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))

    def forward(self, x):
        return self.head(self.block(self.stem(x)))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return api.network(Net().eval(), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), classes=["red", "green", "blue"],
                       image_size=16, layers=["stem", "block"], name="mynet")


def test_visualize_any_module_by_class_name(net, tmp_path):
    metrics = api.visualize(net, "class_model", out_dir=tmp_path, classes=["green"], steps=3)
    assert "prob/green" in metrics and 0 <= metrics["prob/green"] <= 1
    assert (tmp_path / "images" / "class_model.png").is_file()
    metrics = api.visualize(net, "actmax", out_dir=tmp_path, layer="block", units=[0, 1], presets=["a"], steps=2)
    assert "a/objective_end" in metrics


def test_analyze_any_module_on_in_memory_images(net, tmp_path):
    torch.manual_seed(0)
    images, labels = torch.rand(12, 3, 16, 16), torch.arange(12) % 3
    summary = api.analyze(net, images, labels, {"filters": {}, "patches": {"units": 2, "k": 2}, "attribution": {"images": 2, "ig_steps": 2}},
                          out_dir=tmp_path)
    assert set(summary) == {"filters", "patches", "attribution"}
    assert summary["patches"]["tap"] in ("stem", "block")
    report = json.loads((tmp_path / "analysis.json").read_text())
    assert (tmp_path / "report.html").is_file() and all(p.endswith(".png") for p in report["figures"])


def test_api_mistakes_are_user_errors(net, tmp_path):
    with pytest.raises(UserError, match="unknown viz 'dream'"):
        api.visualize(net, "dream", out_dir=tmp_path)
    with pytest.raises(UserError, match="unknown analysis"):
        api.analyze(net, torch.rand(2, 3, 16, 16), analyses=["lime"], out_dir=tmp_path)
    with pytest.raises(UserError, match="unknown layer 'layer9'"):
        api.network(Net(), layers=["layer9"])
    with pytest.raises(UserError, match=r"\(N, 3, H, W\)"):
        api.analyze(net, torch.rand(2, 16, 16), out_dir=tmp_path)
