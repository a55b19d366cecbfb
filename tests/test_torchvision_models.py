"""Any torchvision classifier as the model under inspection: random weights (no download), small inputs."""

from __future__ import annotations

import pytest
import torch

from cnnlab.analysis.attribution import attribute
from cnnlab.backbones.tv import imagenet_classes, load_torchvision_model, weight_enum
from cnnlab.errors import UserError
from cnnlab.hooks import LayerCapture, hook_count
from cnnlab.subject import Subject, from_torchvision, load_subject
from cnnlab.visualize import objectives as O
from cnnlab.visualize.module import ImageOptimization, run_optimization
from cnnlab.visualize.param import PixelImage

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]

#: one architecture per family: plain residual, inverted residual with squeeze-excitation and hard-swish,
#: MBConv with SiLU and stochastic depth, inception branches, dense concatenation
ARCHS = ["resnet18", "mobilenet_v3_small", "efficientnet_b0", "googlenet", "densenet121"]
SIZE = 64


@pytest.fixture(scope="module", params=ARCHS)
def subject(request) -> Subject:
    torch.manual_seed(0)
    return from_torchvision(request.param, None, image_size=SIZE)


def test_layers_come_from_the_model_and_classes_from_the_weight_metadata(subject):
    taps = subject.default_taps
    assert len(taps) >= 3 and set(taps) <= set(subject.layer_names)
    shapes = subject.layer_shapes(taps)
    assert all(len(shapes[t]) == 3 and min(shapes[t][1:]) > 1 for t in taps)
    assert subject.num_classes == 1000 and subject.class_name(1) == "goldfish" and subject.class_index("tench") == 0
    listing = subject.describe_layers()
    assert all(t in listing for t in taps) and hook_count(subject) == 0
    assert subject(torch.rand(2, 3, SIZE, SIZE)).shape == (2, 1000)


def test_a_layer_objective_improves_and_hooks_are_removed(subject):
    tap = subject.default_taps[len(subject.default_taps) // 2]
    before = {k: v.clone() for k, v in subject.state_dict().items()}
    # normalized steps small enough for first-order descent on any CPU (the objective is smooth at this scale)
    mod = ImageOptimization(subject, PixelImage(1, SIZE, init="noise", sd=0.1, seed=0), O.layer_l2(tap), None,
                            "normalized", 0.002)
    run_optimization(mod, 4, progress=False)
    assert mod.history[-1] < mod.history[0], mod.history
    assert hook_count(subject) == 0
    assert all(torch.equal(before[k], v) for k, v in subject.state_dict().items())


def test_grad_cam_has_the_input_size_and_leaves_no_hooks(subject):
    x = torch.rand(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    cam = attribute(subject, x, torch.tensor([3, 7]), "grad_cam", layer=subject.layer(subject.default_taps[-1]))
    assert cam.shape == (2, 1, SIZE, SIZE) and torch.isfinite(cam).all() and cam.min() >= 0
    assert hook_count(subject) == 0


def test_capture_stops_early_and_unknown_names_are_one_line_with_close_matches(subject):
    tap = subject.default_taps[1]
    with LayerCapture(subject, [tap]) as cap:
        acts = cap.run(torch.rand(1, 3, SIZE, SIZE))
    assert list(acts) == [tap] and hook_count(subject) == 0
    with pytest.raises(UserError, match=rf"unknown layer '{tap}x'.*did you mean {tap}") as err:
        subject.layer(f"{tap}x")
    assert "\n" not in str(err.value)


def test_unknown_arch_and_weight_names_suggest_close_matches():
    with pytest.raises(UserError, match="unknown torchvision architecture 'resnet51': did you mean resnet50") as err:
        load_subject(arch="resnet51")
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="unknown weights for resnet50 'IMAGENET1K_V3': did you mean IMAGENET1K_V2, IMAGENET1K_V1"):
        load_torchvision_model("resnet50", "IMAGENET1K_V3")
    # weight names resolve without a download; DEFAULT is the enum's default
    assert weight_enum("resnet50", "DEFAULT") == weight_enum("resnet50", "ResNet50_Weights.IMAGENET1K_V2")
    assert imagenet_classes("googlenet")[:2] == ["tench", "goldfish"]


def test_a_local_state_dict_of_another_head_size_keeps_the_trunk(tmp_path):
    torch.manual_seed(0)
    ref = load_torchvision_model("mobilenet_v3_small", num_classes=1000)
    torch.save(ref.state_dict(), tmp_path / "m.pth")
    sub = load_subject(arch="mobilenet_v3_small", weights=str(tmp_path / "m.pth"), num_classes=7, image_size=SIZE)
    assert torch.equal(sub.model.features[0][0].weight, ref.features[0][0].weight)
    assert sub(torch.rand(1, 3, SIZE, SIZE)).shape == (1, 7) and sub.classes == []
    with pytest.raises(UserError, match="does not match torchvision resnet18"):
        load_subject(arch="resnet18", weights=str(tmp_path / "m.pth"))


def test_analyze_runs_on_a_torchvision_network(data_dir, tmp_path):
    """cnnlab-analyze network.arch=...: filters, top patches (measured receptive field), occlusion and attributions."""
    import json

    from hydra import compose, initialize_config_dir

    from cnnlab.analyze import run
    from cnnlab.config import CONF_DIR

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("analyze", overrides=[
            "logger=none", "network.arch=resnet18", "network.image_size=32", "data=synthetic", f"paths.data_dir={data_dir}",
            f"paths.output_dir={tmp_path}", "analysis=[filters,patches,occlusion,attribution]", "limit=20",
            "analyses.patches.units=2", "analyses.patches.k=3", "analyses.occlusion.images=1", "analyses.occlusion.stride=8",
            "analyses.attribution.images=2", "analyses.attribution.ig_steps=4"])
        summary = run(cfg)
    assert set(summary) == {"filters", "patches", "occlusion", "attribution"}
    assert summary["filters"]["layer"] == "conv1" and summary["patches"]["tap"] in ("layer1", "maxpool")
    report = json.loads((tmp_path / "analysis.json").read_text())
    assert all(p.endswith(".png") for p in report["figures"]) and len(report["figures"]) >= 4


def test_visualize_lists_layers_and_names_imagenet_classes(tmp_path, capsys):
    """``cnnlab-visualize network.arch=... list_layers=true`` prints the layers; class names work in a visualization."""
    from hydra import compose, initialize_config_dir

    from cnnlab.config import CONF_DIR
    from cnnlab.visualize.cli import run
    from cnnlab.visualize.experiments import Context, class_model

    with initialize_config_dir(CONF_DIR, version_base="1.3"):
        cfg = compose("visualize", overrides=["logger=none", "network.arch=mobilenet_v3_small", "network.image_size=32",
                                              "list_layers=true", f"paths.output_dir={tmp_path}"])
    assert run(cfg) == {}
    out = capsys.readouterr().out
    assert "features.12" in out and "logits" in out and "Hardswish" in out
    torch.manual_seed(0)
    ctx = Context(network=from_torchvision("mobilenet_v3_small", None, image_size=32), out_dir=tmp_path, progress=False)
    m = class_model(ctx, classes=["goldfish", 0], steps=2, size=32)
    assert {"prob/goldfish", "prob/tench"} <= set(m) and (tmp_path / "images" / "class_model.png").is_file()


def test_captured_activation_is_the_layer_output_even_when_the_block_adds_to_it_in_place():
    """ResNet's BasicBlock does ``out = bn2(out); out += identity``: the capture keeps bn2's own output."""
    torch.manual_seed(0)
    sub = from_torchvision("resnet18", None, image_size=32)
    x = torch.rand(1, 3, 32, 32)
    with LayerCapture(sub, ["layer1.0.bn2"]) as cap:  # stops right after bn2
        alone = cap.run(x)["layer1.0.bn2"]
    with LayerCapture(sub, ["layer1.0.bn2", "logits"]) as cap:  # runs the whole network
        together = cap.run(x)["layer1.0.bn2"]
    torch.testing.assert_close(alone, together)
