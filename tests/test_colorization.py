"""Colorization: targets, hypercolumns, decoding, metrics and the module (unit tests, synthetic inputs)."""

import math

import pytest
import torch

from cnnlab.color import lab_to_rgb, rgb_to_hue_chroma, rgb_to_lab
from cnnlab.colorization import bins as B
from cnnlab.colorization.decode import annealed_probs, decode_ab, decode_hue_chroma
from cnnlab.hypercolumn import dense_hypercolumns, gather_pixels, pixel_centers, random_pixels, sample_hypercolumns
from cnnlab.colorization.metrics import ab_error_auc, AbAuC
from cnnlab.colorization.prior import cached_ab_stats, compute_ab_stats
from cnnlab.errors import UserError
from cnnlab.models.colorizer import Colorizer

VGG = {"_target_": "cnnlab.backbones.VGGCifar", "in_channels": 1, "width": 4}
RESNET = {"_target_": "cnnlab.backbones.ResNet18Cifar", "in_channels": 1, "width": 4}


def _random_ab(n=4000, seed=0):
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(1, 3, n, 1, generator=g)
    return rgb_to_lab(rgb)[0, 1:, :, 0].T  # (n, 2) real in-gamut colours


def _cube_edge_ab(n=20000, seed=0):
    """ab ``(n, 2)`` of random colours on the 12 edges of the sRGB cube (the gamut's extreme colours)."""
    g = torch.Generator().manual_seed(seed)
    rgb = torch.randint(0, 2, (n, 3), generator=g).float()
    axis = torch.randint(0, 3, (n,), generator=g)
    rgb[torch.arange(n), axis] = torch.rand(n, generator=g)
    return rgb_to_lab(rgb.T.reshape(1, 3, n, 1))[0, 1:, :, 0].T


def test_ab_bins_cover_the_srgb_gamut():
    centers = B.ab_bin_centers()
    assert 290 <= centers.shape[0] <= 320  # the published lattice has 313 bins; ours is derived from sRGB
    assert torch.all(centers.remainder(10) == 0)
    ab = torch.cat([_random_ab(100000), _cube_edge_ab()])
    # the rule: every lattice point within one step (in a and in b) of some sRGB colour is a bin
    reached = set()
    for fa in (torch.floor, torch.ceil):
        for fb in (torch.floor, torch.ceil):
            reached |= set(map(tuple, torch.stack([fa(ab[:, 0] / 10), fb(ab[:, 1] / 10)], 1).long().tolist()))
    assert reached <= set(map(tuple, (centers / 10).long().tolist()))
    assert torch.cdist(ab, centers).min(1).values.max() <= 5 * math.sqrt(2) + 1e-4  # every colour lies in a bin's cell
    # a denser sampling of the gamut finds no further cell: the set is converged
    assert torch.equal(B.ab_bin_centers(samples=512), centers)


def test_soft_encoding_sums_to_one_and_decodes_back():
    centers = B.ab_bin_centers()
    ab = _random_ab()
    enc = B.soft_encode(ab, centers, neighbours=10, sigma=5.0)
    assert torch.allclose(enc.sum(1), torch.ones(len(ab)), atol=1e-5)
    assert ((enc > 0).sum(1) == 10).all()
    # expectation of the encoding (decode_ab at T=1) returns the colour within the bin resolution
    logits = enc.clamp_min(1e-12).log().T.reshape(1, -1, len(ab), 1)
    back = decode_ab(logits, centers, temperature=None)[0, :, :, 0].T
    assert (back - ab).norm(dim=1).max() < 5.0
    # the annealed mean sharpens towards the mode but stays a distribution
    p = annealed_probs(logits, 0.38)
    assert torch.allclose(p.sum(1), torch.ones(1, len(ab), 1), atol=1e-5)


def test_lab_round_trip():
    rgb = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    assert (lab_to_rgb(rgb_to_lab(rgb)) - rgb).abs().max() < 1e-3


def test_rebalancing_weights_have_unit_expectation_and_gray_images_zero_weight():
    centers = B.ab_bin_centers()
    counts = torch.bincount(B.nearest_bin(_random_ab(20000) * 0.3, centers), minlength=centers.shape[0])
    prior = B.smooth_prior(counts, centers, sigma=5.0)
    assert torch.isclose(prior.sum(), torch.tensor(1.0), atol=1e-5)
    w = B.rebalance_weights(prior, lam=0.5)
    assert torch.isclose((prior * w).sum(), torch.tensor(1.0), atol=1e-5)
    assert w.min() > 0 and w[prior.argmax()] < 1 < w[prior.argmin()]  # rare colours weigh more
    gray_rgb = torch.rand(1, 1, 8, 8).expand(1, 3, 8, 8)
    colour_rgb = torch.rand(1, 3, 8, 8)
    ab = rgb_to_lab(torch.cat([gray_rgb, colour_rgb]))[:, 1:]
    colour = B.image_has_colour(ab)
    assert colour.tolist() == [False, True]
    pix_ab = ab.permute(0, 2, 3, 1).reshape(-1, 2)
    pw = B.pixel_weights(pix_ab, centers, w, colour.repeat_interleave(64))
    assert (pw[:64] == 0).all() and (pw[64:] > 0).all()


def test_hue_chroma_bins_decode_and_reconstruct():
    rgb = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    hue, chroma = rgb_to_hue_chroma(rgb)
    back = B.hue_chroma_to_rgb(hue, chroma, rgb.mean(1, keepdim=True))
    assert (back - rgb).abs().max() < 1e-4  # hue, chroma and mean intensity determine RGB
    n = 32
    one_hot = torch.nn.functional.one_hot(B.uniform_bin(hue, n, circular=True), n).float()
    assert (B.decode_hue_circular_mean(one_hot) - B.bin_centers(n)[B.uniform_bin(hue, n, True)]).abs().max() < 1e-5
    # the median of a histogram with all mass in one bin lies inside that bin
    c_bins = B.uniform_bin(chroma, n)
    med = B.decode_chroma_median(torch.nn.functional.one_hot(c_bins, n).float())
    assert ((med - chroma).abs() <= 1.0 / n + 1e-6).all()
    # hue loss vanishes for gray pixels: only chroma is learned there
    logits_h, logits_c = torch.randn(4, n), torch.randn(4, n)
    gray_loss = B.hue_chroma_loss(logits_h, logits_c, torch.rand(4), torch.zeros(4))
    assert torch.isclose(gray_loss, torch.nn.functional.cross_entropy(logits_c, torch.zeros(4, dtype=torch.long)))


def test_hue_confidence_decode_moves_uncertain_hues_towards_gray():
    n = 32
    x = torch.full((1, 1, 1, 3), 0.6)  # Lab L = 60
    chroma_logits = torch.full((1, n, 1, 3), -20.0)
    chroma_logits[:, 12] = 20.0  # chroma ~0.39 at every pixel
    hue_logits = torch.full((1, n, 1, 3), -20.0)
    hue_logits[0, 5, 0, 0] = 20.0  # pixel 0: a certain hue
    hue_logits[0, :, 0, 1] = 0.0  # pixel 1: uniform hue (resultant length 0)
    hue_logits[0, 5, 0, 2] = hue_logits[0, 21, 0, 2] = 20.0  # pixel 2: two opposite hues
    hue, resultant = B.hue_mean_resultant(torch.softmax(hue_logits, 1).movedim(1, -1))
    assert torch.allclose(resultant[0, 0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-4)
    ab_of = lambda lab: lab[0, 1:, 0].norm(dim=0)  # noqa: E731  chroma in ab units per pixel
    scaled = ab_of(decode_hue_chroma(hue_logits, chroma_logits, x, "L"))
    paper = ab_of(decode_hue_chroma(hue_logits, chroma_logits, x, "L", hue_confidence=False))
    assert abs(scaled[0] - paper[0]) < 1e-3 and paper[0] > 20  # a certain hue keeps the median chroma
    assert scaled[1] < 1.0 and scaled[2] < 1.0  # no preferred hue: gray, however saturated the chroma median
    assert paper[1] > 20  # the plain decode paints an arbitrary hue at full chroma


def test_sparse_hypercolumns_equal_dense_at_pixel_centres_and_reach_every_tap():
    torch.manual_seed(0)
    taps = [torch.randn(2, 3, 16, 16), torch.randn(2, 5, 8, 8), torch.randn(2, 4, 4, 4), torch.randn(2, 2, 2, 2)]
    pixels = random_pixels(2, 50, 16, 16)
    pixels[:, :4] = torch.tensor([[0, 0], [15, 15], [0, 15], [15, 0]])  # the borders too
    sparse = sample_hypercolumns(taps, pixel_centers(pixels, 16, 16))
    dense = gather_pixels(dense_hypercolumns(taps, (16, 16)), pixels)
    assert sparse.shape == (2, 50, 14)
    assert torch.allclose(sparse, dense, atol=1e-5)

    for backbone in (VGG, RESNET):
        model = Colorizer(backbone, hidden=32, samples_per_image=16)
        x = torch.rand(2, 1, 32, 32)
        pix = random_pixels(2, 16, 32, 32)
        model.eval()  # the same normalization statistics in both paths
        sp = model.sparse_logits(x, pix)
        de = gather_pixels(model.dense_logits(x), pix)
        assert torch.allclose(sp, de, atol=1e-4)
        # inference in bands of a few rows (bounded memory) decodes exactly what the dense head gives
        model.hparams.eval_chunk_pixels = 2 * 32 * 3  # 3 rows of both images per band
        with torch.no_grad():
            assert torch.allclose(model.predict_lab(x), model.decode(model.dense_logits(x), x), atol=1e-3)
        model.train()
        model.sparse_loss(torch.rand(2, 3, 32, 32)).backward()
        for tap in model.taps:
            grads = [p.grad for p in model.backbone.stages[tap].parameters() if p.grad is not None]
            assert grads and any(g.abs().sum() > 0 for g in grads), f"no gradient reached {tap}"


@pytest.mark.parametrize("targets", ["hue_chroma", "lab_bins"])
def test_module_trains_on_one_batch_and_decodes(targets):
    torch.manual_seed(0)
    model = Colorizer(VGG, targets=targets, hidden=32, samples_per_image=32, dropout=0.0)
    images = (torch.rand(16, 3, 16, 16) * 255).to(torch.uint8)
    model.fit_prior(images)
    assert bool(model.prior_ready)
    rgb = torch.rand(8, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    pixels = random_pixels(8, 32, 16, 16, generator=torch.Generator().manual_seed(4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model.sparse_loss(rgb, pixels).item()
    for _ in range(20):
        loss = model.sparse_loss(rgb, pixels)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < first - 0.5  # the soft lab targets keep an entropy floor, so an absolute drop
    model.eval()
    out = model.colorize(model.model_input(rgb))
    assert out.shape == (8, 3, 16, 16) and 0 <= out.min() and out.max() <= 1
    assert model.trunk_color_space() == "L"


def test_checkpoint_keeps_the_bins_it_was_trained_on():
    trained = Colorizer(VGG, hidden=8)
    state = trained.state_dict()
    for name in ("ab_centers", "ab_prior", "class_weights"):  # as if made with a coarser gamut sampling
        state[name] = state[name][:300].clone()
    fresh = Colorizer(VGG, hidden=8)
    fresh.on_load_checkpoint({"state_dict": state})
    fresh.load_state_dict(state)
    assert torch.equal(fresh.ab_centers, state["ab_centers"])
    assert fresh.eval().colorize(torch.rand(1, 1, 8, 8)).shape == (1, 3, 8, 8)
    lab_state = Colorizer(VGG, targets="lab_bins", hidden=8).state_dict()
    lab_state["ab_centers"] = lab_state["ab_centers"][:300]
    with pytest.raises(UserError, match="predicts 300 Lab bins"):
        Colorizer(VGG, targets="lab_bins", hidden=8).on_load_checkpoint({"state_dict": lab_state})


def test_auc_metric_and_perfect_prediction():
    true = torch.randn(2, 2, 4, 4) * 20
    assert torch.isclose(ab_error_auc(torch.zeros(10)), torch.tensor(1.0))
    assert torch.isclose(ab_error_auc(torch.full((10,), 75.0)), torch.tensor(76 / 151))
    m = AbAuC()
    m.update(true, true)
    m.update(true + torch.tensor([74.5, 0.0]).view(1, 2, 1, 1), true)
    assert torch.isclose(m.compute(), torch.tensor((1.0 + 76 / 151) / 2), atol=1e-5)
    # weighted (class-rebalanced) AuC: unit weights change nothing; the weights decide which pixels count
    off = true + torch.tensor([74.5, 0.0]).view(1, 2, 1, 1)
    pred = torch.where(torch.arange(4).view(1, 1, 1, 4) < 2, true, off)  # left half exact, right half 74.5 off
    plain, unit, left = AbAuC(), AbAuC(), AbAuC()
    plain.update(pred, true)
    unit.update(pred, true, torch.ones(2, 4, 4))
    left.update(pred, true, (torch.arange(4) < 2).float().expand(2, 4, 4) * 7.0)
    assert torch.isclose(plain.compute(), unit.compute()) and torch.isclose(left.compute(), torch.tensor(1.0))


def test_rebalanced_auc_counts_rare_colours_more():
    model = Colorizer(VGG, hidden=8)
    dull = torch.tensor([0.55, 0.5, 0.45]).view(1, 3, 1, 1).expand(30, 3, 8, 8)  # a common, nearly gray colour
    vivid = torch.tensor([0.1, 0.2, 0.9]).view(1, 3, 1, 1).expand(2, 3, 8, 8)  # a rare saturated blue
    model.fit_prior((torch.cat([dull, vivid]) * 255).to(torch.uint8))
    w = model.inverse_prior_weights(rgb_to_lab(torch.cat([dull[:1], vivid[:1]]))[:, 1:])
    assert w.shape == (2, 8, 8) and w[1].min() > 5 * w[0].max()
    metrics = model.metrics["test"]
    truth = torch.cat([dull[:4], vivid[:1]])
    gray = lab_to_rgb(rgb_to_lab(truth) * torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1))
    metrics.update(gray, truth, {"gray": gray, "prior": gray}, model.inverse_prior_weights)
    m = metrics.compute()
    # gray is right about the common dull pixels and wrong about the rare vivid ones: rebalancing exposes it
    assert m["auc_rebal_gray"] < m["auc_gray"] - 0.2


def test_bad_inputs_give_user_errors(tmp_path):
    with pytest.raises(UserError, match="unknown tap"):
        Colorizer(VGG, taps=["conv1_1", "fc9"])
    with pytest.raises(UserError, match="in_channels=1"):
        Colorizer({**VGG, "in_channels": 3})
    with pytest.raises(UserError, match="model.targets"):
        Colorizer(VGG, targets="rgb")
    with pytest.raises(UserError, match="color_space=lab"):
        Colorizer(VGG, hidden=8).sparse_loss(torch.rand(2, 1, 16, 16))
    gray = (torch.rand(8, 1, 8, 8) * 255).to(torch.uint8).expand(8, 3, 8, 8)
    with pytest.raises(UserError, match="gray"):
        compute_ab_stats(gray, B.ab_bin_centers())


def test_prior_is_cached(tmp_path):
    centers = B.ab_bin_centers()
    images = (torch.rand(20, 3, 8, 8, generator=torch.Generator().manual_seed(5)) * 255).to(torch.uint8)
    images[:5] = images[:5, :1]  # some all-gray images: skipped, not fatal
    first = cached_ab_stats(images, centers, "t", tmp_path)
    files = list(tmp_path.glob("ab_prior_t_*.pt"))
    assert len(files) == 1 and first["gray_fraction"] == 0.25
    again = cached_ab_stats(images, centers, "t", tmp_path)
    assert torch.equal(first["counts"], again["counts"])


def test_recombine_keeps_full_resolution_lightness_and_upsamples_colour():
    """cnnlab-colorize's last step: a low-resolution ab over the photo's own lightness, band by band."""
    import numpy as np

    import cnnlab.colorize as C

    g = torch.Generator().manual_seed(6)
    rgb = (torch.rand(1, 3, 37, 53, generator=g) * 0.5 + 0.25)
    rgb8 = (rgb[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    truth = rgb_to_lab(torch.from_numpy(rgb8).permute(2, 0, 1).unsqueeze(0).float() / 255)
    ramp = torch.linspace(-1, 1, 7).view(1, 1, 1, 7).expand(1, 1, 5, 7)
    ab = torch.cat([8 * ramp, -6 * ramp.transpose(-1, -2).reshape(1, 1, 5, 7)], 1)  # small ab: in gamut here
    old, C.BAND_PIXELS = C.BAND_PIXELS, 100  # many bands of two rows
    try:
        out = C.recombine(rgb8, ab)
        gray = C.recombine(rgb8, None)
    finally:
        C.BAND_PIXELS = old
    lab = rgb_to_lab(torch.from_numpy(out).permute(2, 0, 1).unsqueeze(0).float() / 255)
    assert out.shape == rgb8.shape
    assert (lab[:, 0] - truth[:, 0]).abs().max() < 1.0  # every pixel keeps its lightness (to 8-bit rounding)
    upsampled = torch.nn.functional.interpolate(ab, size=(37, 53), mode="bilinear", align_corners=False)
    assert (lab[:, 1:] - upsampled).abs().max() < 1.5  # and the colour upsampled to full resolution
    assert (rgb_to_lab(torch.from_numpy(gray).permute(2, 0, 1).unsqueeze(0).float() / 255)[:, 1:]).abs().max() < 1.5
