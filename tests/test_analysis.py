"""Properties of the analysis functions on synthetic inputs (no checkpoint, no CLI)."""

from __future__ import annotations

import base64
import re

import numpy as np
import pytest
import torch
from torch import nn

from cnnlab.analysis import attribution as A
from cnnlab.analysis import color_units as CU
from cnnlab.analysis import embedding as E
from cnnlab.analysis import occlusion as O
from cnnlab.analysis import patches as P
from cnnlab.analysis.filters import find_conv, first_layer_images, kernel_images
from cnnlab.analysis.report import Report
from cnnlab.backbones import Backbone, ResNet18Cifar, VGGCifar
from cnnlab.errors import UserError


def linear_model(c=3, h=8, w=8, k=4, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, k)).eval()


# ------------------------------------------------------------------------------------------ attributions
def test_saliency_of_linear_model_is_abs_weight_max_over_channels():
    model = linear_model()
    x = torch.rand(2, 3, 8, 8)
    target = torch.tensor([1, 3])
    sal = A.saliency_map(model, x, target)
    w = model[1].weight.detach().view(4, 3, 8, 8)
    expected = w[target].abs().amax(1)
    assert sal.shape == (2, 8, 8)
    torch.testing.assert_close(sal, expected)


def test_saliency_of_a_conv_net_is_the_autograd_gradient_and_leaves_no_parameter_gradient():
    torch.manual_seed(0)
    model = nn.Sequential(_randomize_bn(VGGCifar(width=4)), nn.Linear(32, 5)).eval()
    x = torch.rand(3, 3, 32, 32, requires_grad=True)
    target = torch.tensor([0, 4, 2])
    (grad,) = torch.autograd.grad(model(x).gather(1, target[:, None]).sum(), x)
    torch.testing.assert_close(A.saliency_map(model, x.detach(), target), grad.abs().amax(1))
    assert all(p.grad is None for p in model.parameters())


def test_guided_backprop_and_deconvnet_on_relu_free_linear_model_equal_the_gradient():
    model = linear_model()
    x = torch.rand(2, 3, 8, 8)
    w = model[1].weight.detach().view(4, 3, 8, 8)
    for method in ("guided_backprop", "deconvnet", "saliency"):
        torch.testing.assert_close(A.attribute(model, x, 2, method), w[2].expand(2, -1, -1, -1))


def test_integrated_gradients_of_linear_model_is_input_times_weight():
    model = linear_model()
    x = torch.rand(2, 3, 8, 8)
    ig = A.attribute(model, x, 0, "integrated_gradients", steps=8, baseline=0.0)
    w = model[1].weight.detach().view(4, 3, 8, 8)
    torch.testing.assert_close(ig, x * w[0], rtol=1e-4, atol=1e-6)
    # completeness: attributions sum to f(x) - f(baseline)
    with torch.no_grad():
        gap = model(x)[:, 0] - model(torch.zeros_like(x))[:, 0]
    torch.testing.assert_close(ig.sum((1, 2, 3)), gap, rtol=1e-4, atol=1e-5)


def test_grad_cam_of_gap_linear_head_is_relu_of_class_weighted_maps():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 3, padding=1)
    fc = nn.Linear(5, 3)
    model = nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), fc).eval()
    x = torch.rand(2, 3, 8, 8)
    cam = A.attribute(model, x, 1, "grad_cam", layer=model[1])
    with torch.no_grad():
        fmap = model[1](conv(x))
    expected = torch.relu((fc.weight[1].view(1, 5, 1, 1) / 64 * fmap).sum(1, keepdim=True))
    torch.testing.assert_close(cam, expected, rtol=1e-4, atol=1e-6)


def test_unknown_attribution_method_is_a_user_error():
    with pytest.raises(UserError, match="unknown attribution method"):
        A.attribute(linear_model(), torch.rand(1, 3, 8, 8), 0, "lrp")


# ------------------------------------------------------------------------------------------ occlusion
@pytest.mark.parametrize("output", ["logit", "prob"])
def test_occlusion_of_linear_model_matches_closed_form(output):
    model = linear_model(k=3)
    x = torch.rand(2, 3, 8, 8)
    fill = torch.tensor([0.5, 0.2, 0.9])
    patch, stride = 3, 2
    maps = O.occlusion_map(model, x, torch.tensor([0, 2]), patch=patch, stride=stride, fill=fill, output=output, chunk=5)
    ys = O.occlusion_positions(8, patch, stride)
    assert ys == [0, 2, 4, 5] and maps.shape == (2, 4, 4)
    w = model[1].weight.detach().view(3, 3, 8, 8)
    with torch.no_grad():
        logits = model(x)
    for i, t in enumerate([0, 2]):
        for a, y in enumerate(ys):
            for q, xx in enumerate(ys):
                delta = fill.view(3, 1, 1) - x[i, :, y:y + patch, xx:xx + patch]
                # a linear model's logits move by <W, change of the input>
                occluded = logits[i] + (w[:, :, y:y + patch, xx:xx + patch] * delta).sum((1, 2, 3))
                expected = occluded[t] if output == "logit" else occluded.softmax(0)[t]
                torch.testing.assert_close(maps[i, a, q], expected, rtol=1e-5, atol=1e-6)


def test_occlusion_heatmap_averages_the_positions_covering_each_pixel():
    m = torch.arange(16.0).view(4, 4)
    heat = O.occlusion_heatmap(m, (8, 8), 3, 2)
    assert heat.shape == (8, 8)
    assert heat[0, 0] == m[0, 0]          # only the first position covers the corner
    assert heat[7, 7] == m[3, 3]
    torch.testing.assert_close(heat[2, 0], (m[0, 0] + m[1, 0]) / 2)
    with pytest.raises(UserError, match="larger than the image"):
        O.occlusion_positions(8, 9, 1)


# ------------------------------------------------------------------------------------------ patches
def _random_uint8(n, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=g)


def _batches(images, bs):
    for s in range(0, len(images), bs):
        yield images[s:s + bs], torch.zeros(len(images[s:s + bs]), dtype=torch.long)


def _randomize_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def test_receptive_fields_of_vgg_follow_the_stage_arithmetic():
    rf = P.receptive_fields(VGGCifar(width=4))
    assert (rf["conv1_1"].size, rf["conv1_1"].jump) == (3, 1)
    assert (rf["pool1"].size, rf["pool1"].jump) == (6, 2)
    assert (rf["conv2_2"].size, rf["conv2_2"].jump) == (14, 2)
    assert (rf["conv3_1"].size, rf["conv3_1"].jump) == (24, 4)
    assert rf["conv1_1"].span(0) == (-1, 2)


@pytest.mark.parametrize("arch,tap", [("vgg", "conv2_2"), ("vgg", "conv3_1"), ("resnet", "layer2")])
def test_recomputed_activation_of_each_crop_equals_the_recorded_one(arch, tap):
    torch.manual_seed(0)
    bb = _randomize_bn(VGGCifar(width=4) if arch == "vgg" else ResNet18Cifar(width=4))
    images = _random_uint8(20)
    units = [0, 3, 5]
    found = P.mine_top_patches(bb, _batches(images, 7), tap, units, k=4)
    rf = P.receptive_fields(bb)[tap]
    assert set(found) == set(units)
    with torch.no_grad():
        full = bb.forward_taps(images.float() / 255, [tap])[tap]
    for u in units:
        # the running top-k over batches of 7 agrees with the brute-force top-k of per-image maxima
        brute = full[:, u].flatten(1).max(1).values.topk(4).values
        torch.testing.assert_close(torch.tensor([p.activation for p in found[u]]), brute)
        for p in found[u]:
            y0, y1, x0, x1 = p.box
            assert y1 - y0 <= max(rf.size, rf.jump) + rf.jump and x1 - x0 <= max(rf.size, rf.jump) + rf.jump
            crop = P.crop(images[p.index], p)[None].float() / 255
            with torch.no_grad():
                again = bb.forward_taps(crop, [tap])[tap][0, u, p.pos_in_crop[0], p.pos_in_crop[1]]
            assert abs(float(again) - p.activation) <= 1e-4 * max(1.0, abs(p.activation)), (p, float(again))


def test_top_k_memory_stays_bounded_and_bad_units_or_empty_data_are_user_errors():
    top = P.TopK(3, 2)
    for s in range(10):
        top.update(torch.rand(50, 2), torch.arange(s * 50, s * 50 + 50), torch.zeros(50, 2, dtype=torch.long))
    assert top.values.shape == (3, 2) and top.index.shape == (3, 2)
    bb = VGGCifar(width=4).eval()
    with pytest.raises(UserError, match=r"unknown unit\(s\) \[99\]"):
        P.mine_top_patches(bb, _batches(_random_uint8(4), 2), "conv2_2", [99])
    with pytest.raises(UserError, match="unknown tap"):
        P.mine_top_patches(bb, _batches(_random_uint8(4), 2), "conv9_9", [0])
    with pytest.raises(UserError, match="empty"):
        P.mine_top_patches(bb, iter([]), "conv2_2", [0])


# ------------------------------------------------------------------------------------------ embedding
def test_tsne_keeps_well_separated_synthetic_clusters_apart():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 64)) * 10
    labels = np.repeat(np.arange(4), 30)
    feats = torch.from_numpy(centres[labels] + rng.normal(size=(120, 64))).float()
    coords = E.tsne_embed(feats, perplexity=10, seed=0, max_iter=300)
    assert coords.shape == (120, 2)
    assert E.neighbour_purity(coords, labels, k=10) == 1.0
    from sklearn.metrics import silhouette_score

    assert silhouette_score(coords, labels) > 0.6
    # the property is not vacuous: shuffled labels are far from pure
    assert E.neighbour_purity(coords, rng.permutation(labels), k=10) < 0.5


def test_nearest_neighbours_find_the_query_first_and_mosaic_places_extremes_in_corners():
    feats = torch.randn(30, 16)
    idx, sims = E.nearest_neighbours(feats, feats[[4, 9]], k=3)
    assert idx[:, 0].tolist() == [4, 9] and torch.allclose(sims[:, 0], torch.ones(2))
    coords = np.array([[0.0, 0.0], [1.0, 1.0], [0.5, 0.5]])
    imgs = torch.stack([torch.full((3, 8, 8), v, dtype=torch.uint8) for v in (0, 255, 128)])
    canvas = E.mosaic(coords, imgs, grid=4, tile=8)
    assert canvas.shape == (3, 32, 32)
    assert canvas[:, 24:, :8].max() == 0          # lowest-left point: bottom-left cell, black
    assert canvas[:, :8, 24:].min() == 1          # highest-right point: top-right cell, white
    assert canvas[:, :8, :8].min() == 1           # an empty cell stays white
    with pytest.raises(UserError, match="at least 5"):
        E.tsne_embed(torch.randn(3, 4))


# ------------------------------------------------------------------------------------------ filters
def test_filter_images_keep_zero_at_gray_and_kernels_have_one_row_per_output():
    bb = VGGCifar(width=4)
    name, conv = find_conv(bb)
    assert name == "conv1_1.0" and conv.weight.shape[1] == 3
    imgs = first_layer_images(conv.weight)
    assert imgs.min() >= 0 and imgs.max() <= 1
    assert torch.isclose(imgs.flatten(1).sub(0.5).abs().amax(1), torch.full((4,), 0.5)).all()
    w = torch.zeros(2, 3, 3, 3)
    w[0, 0, 1, 1] = 2.0
    tiles = kernel_images(w)
    assert tiles.shape == (6, 1, 3, 3) and tiles[0, 0, 1, 1] == 1.0 and tiles[1].eq(0.5).all()
    with pytest.raises(UserError, match="unknown conv layer"):
        find_conv(bb, "conv7_1")


# ------------------------------------------------------------------------------------------ colour units
class RedUnit(Backbone):
    """Unit 0 fires on red (R - G - B); unit 1 on the image being bright (R + G + B)."""

    arch = "red_unit"

    def __init__(self):
        super().__init__(3)
        conv = nn.Conv2d(3, 2, 1)
        with torch.no_grad():
            conv.weight.copy_(torch.tensor([[1.0, -1.0, -1.0], [1.0, 1.0, 1.0]]).view(2, 3, 1, 1))
            conv.bias.zero_()
        self.input_norm = nn.Identity()
        self.stages["c"] = nn.Sequential(conv, nn.ReLU(), nn.AvgPool2d(4))
        self.default_taps = ["c"]


def test_class_selectivity_index_closed_forms():
    csi, pref = CU.class_selectivity(torch.tensor([[0.0, 2.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0], [3.0, 1.0, 1.0, 1.0]]))
    torch.testing.assert_close(csi, torch.tensor([1.0, 0.0, 0.5]))
    assert pref[0] == 1 and pref[2] == 0


def test_colour_statistics_find_a_red_unit_and_a_class_unit():
    g = torch.Generator().manual_seed(0)
    n = 256
    colours = torch.randint(0, 256, (n, 3), generator=g, dtype=torch.uint8)
    colours[::2] = colours[::2, :1]  # every other image gray: chroma varies, and only coloured cells can be red
    images = colours.view(n, 3, 1, 1).expand(n, 3, 8, 8).contiguous()
    labels = (colours.float().sum(1) > 380).long()  # class 1 = bright images
    batches = [(images[s:s + 64], labels[s:s + 64]) for s in range(0, n, 64)]
    stats = CU.unit_color_class_stats(RedUnit(), batches, "c", 2, lambda x: x.float() / 255, top_cells=20)
    hue = (stats.mean_hue_deg[0] + 30) % 360  # reds: Lab hue from about -30 (crimson) to 70 (orange) degrees
    assert 0 < hue < 100, stats.mean_hue_deg
    assert stats.hue_consistency[0] > 0.8 and stats.chroma_ratio[0] > 1.2 and stats.chroma_corr[0] > 0.2
    assert stats.preferred_class[1] == 1 and stats.class_selectivity[1] > 0.3  # the brightness unit prefers the bright class
    assert stats.chroma_ratio[1] < 1.0  # the brightest cells are mostly the gray images
    cats = stats.categories(colour_threshold=0.5, class_threshold=0.3)
    assert cats[0] in ("colour", "both") and cats[1] == "object"
    with pytest.raises(UserError, match="empty"):
        CU.unit_color_class_stats(RedUnit(), [], "c", 2, lambda x: x.float() / 255)


# ------------------------------------------------------------------------------------------ report
def test_report_embeds_every_figure_and_section(tmp_path):
    from torchvision.utils import save_image

    rep = Report("t", meta={"checkpoint": "x.ckpt"})
    for key in ("filters", "occlusion"):
        sec = rep.section(key, key.title(), "text <with> markup")
        p = tmp_path / f"{key}.png"
        save_image(torch.rand(3, 8, 8), str(p))
        sec.figures.append(__import__("cnnlab.analysis.report", fromlist=["Figure"]).Figure(p, f"caption of {key}"))
    sec.tables.append((["a", "b"], [[1, 0.25]]))
    html = rep.write(tmp_path / "r.html").read_text()
    assert "text &lt;with&gt; markup" in html and "caption of occlusion" in html and "0.250" in html
    assert re.findall(r"data-analysis='(\w+)'", html) == ["filters", "occlusion"]
    uris = re.findall(r"src='data:image/png;base64,([^']+)'", html)
    assert len(uris) == 2 and all(base64.b64decode(u).startswith(b"\x89PNG") for u in uris)
    assert "src='http" not in html and "src='/" not in html  # nothing to fetch: viewable from a file
