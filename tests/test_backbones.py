"""Backbones: named taps, channels, non-inplace ReLUs, local weights and trunk files."""

import pytest
import torch
from torch import nn

from cnnlab.backbones import BACKBONES, VGGCifar, build_backbone, load_torchvision_model, load_trunk, read_trunk, save_trunk
from cnnlab.errors import UserError

SMALL = {"vgg_cifar": {"width": 4}, "resnet18_cifar": {"width": 4}}


@pytest.mark.parametrize("arch", ["vgg_cifar", "resnet18_cifar"])
@pytest.mark.parametrize("in_channels", [1, 3])
def test_cifar_backbones_taps(arch, in_channels):
    net = build_backbone(arch, in_channels, **SMALL[arch]).eval()
    x = torch.rand(2, in_channels, 32, 32)
    taps = net.forward_taps(x, net.default_taps)
    assert list(taps) == net.default_taps
    strides = net.tap_strides(32)
    assert strides[net.default_taps[0]] == 1 and strides[net.default_taps[-1]] == 8
    pooled = net(x)
    assert pooled.shape == (2, net.out_dim)
    assert torch.allclose(pooled, taps[net.default_taps[-1]].mean(dim=(2, 3)))
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in net.modules())


@pytest.mark.parametrize("arch,size", [("vgg16_bn", 64), ("alexnet", 96), ("resnet18", 64)])
def test_torchvision_backbones_one_channel(arch, size):
    net = BACKBONES[arch](in_channels=1).eval()
    shapes = net.tap_shapes(size)
    assert set(net.default_taps) <= set(shapes)
    assert net(torch.rand(1, 1, size, size)).shape == (1, net.out_dim)
    assert not any(isinstance(m, nn.ReLU) and m.inplace for m in net.modules())


def test_torchvision_weights_from_local_file(tmp_path):
    torch.manual_seed(0)
    ref = load_torchvision_model("resnet18")
    torch.save(ref.state_dict(), tmp_path / "r18.pth")
    loaded = load_torchvision_model("resnet18", str(tmp_path / "r18.pth"))
    assert torch.equal(loaded.conv1.weight, ref.conv1.weight)
    gray = BACKBONES["resnet18"](in_channels=1, weights=str(tmp_path / "r18.pth"))
    assert torch.allclose(gray.stages["stem"][0].weight, ref.conv1.weight.sum(1, keepdim=True)), "RGB filters summed for gray input"
    torch.save(load_torchvision_model("alexnet").state_dict(), tmp_path / "alex.pth")
    with pytest.raises(UserError, match="does not match torchvision resnet18"):
        load_torchvision_model("resnet18", str(tmp_path / "alex.pth"))
    with pytest.raises(UserError, match="does not exist"):
        load_torchvision_model("resnet18", str(tmp_path / "nope.pth"))


def test_unknown_names_are_clear():
    with pytest.raises(UserError, match="unknown backbone 'vgg99'"):
        build_backbone("vgg99")
    net = build_backbone("vgg_cifar", 3, width=4)
    with pytest.raises(UserError, match=r"unknown tap\(s\) \['conv9_9'\].*available taps"):
        net.forward_taps(torch.rand(1, 3, 32, 32), ["conv9_9"])
    with pytest.raises(UserError, match="in_channels must be 1"):
        build_backbone("vgg_cifar", 2)


def test_trunk_round_trip_and_wrong_files(tmp_path):
    net = build_backbone("resnet18_cifar", 1, width=4).eval()
    path = save_trunk(tmp_path / "trunk.pt", net, "L", "random", {"note": "x"})
    back, meta = load_trunk(path)
    x = torch.rand(2, 1, 32, 32)
    assert torch.equal(back.eval()(x), net(x))
    assert meta["color_space"] == "L" and meta["method"] == "random" and meta["taps"] == net.default_taps
    with pytest.raises(UserError, match="holds a resnet18_cifar trunk but vgg_cifar"):
        load_trunk(path, expect_arch="vgg_cifar")
    with pytest.raises(UserError, match="set data.color_space=L"):
        load_trunk(path, expect_color_space="rgb")
    torch.save({"state_dict": {}, "pytorch-lightning_version": "2"}, tmp_path / "x.ckpt")
    with pytest.raises(UserError, match="not a cnnlab trunk file .a plain Lightning checkpoint"):
        read_trunk(tmp_path / "x.ckpt")
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot read .* not a torch file"):
        read_trunk(tmp_path / "junk.pt")
    with pytest.raises(UserError, match="is a directory"):
        read_trunk(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        read_trunk(tmp_path / "missing.pt")


def test_backbone_and_subject_are_tapped_networks_with_the_same_taps():
    from cnnlab.subject import from_backbone
    from cnnlab.taps import TappedNetwork

    torch.manual_seed(0)
    net = VGGCifar(width=8)
    subject = from_backbone(net)
    assert isinstance(net, TappedNetwork) and isinstance(subject, TappedNetwork)
    assert subject.tap_shapes(32) == net.tap_shapes(32)
    assert subject.check_taps(["conv2_2"]) == ["conv2_2"]
    x = torch.rand(2, 3, 32, 32)
    assert torch.allclose(subject.forward_taps(x, ["conv2_2"])["conv2_2"], net.eval().forward_taps(x, ["conv2_2"])["conv2_2"])
