"""Deletion/insertion curves and the cascading-randomization sanity check on models whose answer is known."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from cnnlab.analysis import faithfulness as F
from cnnlab.analysis import sanity as S
from cnnlab.errors import UserError


def linear_model(c=3, h=8, w=8, k=4, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(c * h * w, k)).eval()


def small_cnn(seed=0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 5)).eval()
    bn = model[1]  # "trained" statistics, unlike a fresh BatchNorm's 1 / 0
    with torch.no_grad():
        for t in (bn.weight, bn.bias, bn.running_mean):
            t.uniform_(0.5, 1.5)
        bn.running_var.uniform_(0.5, 2.0)
    return model


# ------------------------------------------------------------------------------------------ curves
def test_pixel_ranks_follow_the_scores_and_break_ties_at_random():
    scores = torch.tensor([[[0.1, 0.9], [0.5, 0.3]]])
    assert F.pixel_ranks(scores).tolist() == [[3, 0, 1, 2]]
    flat = torch.zeros(1, 8, 8)
    r1 = F.pixel_ranks(flat, torch.Generator().manual_seed(0))
    r2 = F.pixel_ranks(flat, torch.Generator().manual_seed(1))
    assert sorted(r1[0].tolist()) == list(range(64)) and not torch.equal(r1, r2), "ties are not broken in raster order"


def test_perturbation_curve_runs_from_start_to_end():
    model = linear_model()
    x = torch.rand(3, 3, 8, 8)
    target = torch.tensor([0, 1, 2])
    fill = torch.zeros(1, 3, 1, 1)
    curve = F.perturbation_curve(model, x, fill, target, F.pixel_ranks(torch.rand(3, 8, 8)), steps=4, chunk=5)
    with torch.no_grad():
        p_x = model(x).softmax(1)[torch.arange(3), target]
        p_fill = model(torch.zeros_like(x)).softmax(1)[torch.arange(3), target]
    assert curve.shape == (3, 5)
    torch.testing.assert_close(curve[:, 0], p_x)
    torch.testing.assert_close(curve[:, -1], p_fill)
    assert float(F.curve_auc(torch.ones(2, 9)).min()) == pytest.approx(1.0)


def test_exact_attribution_of_a_linear_model_beats_random_order_on_deletion_and_insertion():
    """For a linear model ``w . x`` the contribution of each pixel to the target logit is known exactly."""
    model = linear_model(seed=1)
    w = model[1].weight.detach().view(4, 3, 8, 8) * 4  # sharper softmax: probabilities move visibly
    with torch.no_grad():
        model[1].weight.copy_(w.view(4, -1))
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 3, 8, 8, generator=gen)
    with torch.no_grad():
        target = model(x).argmax(1)
    fill = torch.zeros(1, 3, 1, 1)  # deleting a pixel removes exactly its contribution w * x
    exact = (w[target] * x).sum(1)
    ig = F.Explainer("integrated_gradients", ig_steps=8).pixel_map(model, x, target)  # the project's method, same answer
    torch.testing.assert_close(ig, exact, rtol=1e-3, atol=1e-5)
    exact_c = F.deletion_insertion(model, x, target, exact, fill, fill, steps=16, generator=gen).aucs()
    rand_c = F.deletion_insertion(model, x, target, torch.rand(64, 8, 8, generator=gen), fill, fill, steps=16, generator=gen).aucs()
    assert exact_c["deletion"].mean() < rand_c["deletion"].mean() - 0.1
    assert exact_c["insertion"].mean() > rand_c["insertion"].mean() + 0.1
    # and per image, almost always
    assert (exact_c["deletion"] < rand_c["deletion"]).float().mean() > 0.8


@pytest.mark.parametrize("baseline", [0.0, 0.5, "blur"])
def test_integrated_gradients_add_up_to_the_logit_change_from_their_baseline(baseline):
    """Completeness on a linear model: the attributions sum to ``f(x) - f(baseline)``, the blurred image included."""
    model = linear_model(seed=2)
    x, target = torch.rand(2, 3, 8, 8), torch.tensor([1, 3])
    ex = F.Explainer("integrated_gradients", ig_steps=8, ig_baseline=baseline, blur_sigma=1.0)
    start = F.blur(x, 1.0) if baseline == "blur" else torch.full_like(x, baseline)
    with torch.no_grad():
        change = (model(x) - model(start))[torch.arange(2), target]
    torch.testing.assert_close(ex.attribution(model, x, target).sum((1, 2, 3)), change, atol=1e-4, rtol=1e-4)


def test_bad_integrated_gradients_baseline_is_a_user_error():
    for bad in ("white", 1.5, -0.1, True):
        with pytest.raises(UserError, match="ig_baseline must be a value in"):
            F.Explainer("integrated_gradients", ig_baseline=bad)


def test_every_method_gives_one_map_per_image_and_bad_names_are_user_errors():
    model = small_cnn()
    x = torch.rand(2, 3, 8, 8)
    target = torch.tensor([0, 3])
    for m in F.METHODS:
        ex = F.Explainer(m, grad_cam_layer="3", ig_steps=4, occlusion_patch=4, occlusion_stride=2)
        assert ex.pixel_map(model, x, target).shape == (2, 8, 8), m
    with pytest.raises(UserError, match="unknown attribution method"):
        F.Explainer("lime")
    with pytest.raises(UserError, match="unknown attribution method"):
        F.check_methods(["saliency", "shap"])
    with pytest.raises(UserError, match="reduce"):
        F.reduce_channels(torch.zeros(1, 3, 2, 2), "median")


# ------------------------------------------------------------------------------------------ randomization
def test_cascade_order_is_top_down_in_execution_order():
    model = small_cnn()
    # registration order differs from execution order here: the forward pass decides
    model2 = nn.Module()
    model2.head, model2.body = nn.Linear(8, 3), nn.Conv2d(3, 8, 3)
    model2.forward = lambda x: model2.head(model2.body(x).mean((2, 3)))
    assert S.cascade_layers(model, torch.rand(1, 3, 8, 8)) == ["7", "3", "1", "0"]
    assert S.cascade_layers(model2, torch.rand(1, 3, 8, 8)) == ["head", "body"]


def test_cascading_randomization_is_cumulative_and_leaves_the_users_model_alone():
    model = small_cnn()
    before = copy.deepcopy(model.state_dict())
    x = torch.rand(1, 3, 8, 8)
    layers = S.cascade_layers(model, x)
    seen = []
    for i, (name, rand) in enumerate(S.cascading_randomization(model, layers, seed=0)):
        seen.append(name)
        for j, lname in enumerate(layers):
            same = all(torch.equal(a, b) for a, b in zip(rand.get_submodule(lname).state_dict().values(),
                                                         model.get_submodule(lname).state_dict().values()))
            assert same == (j > i), f"after {name}: {lname} should be {'intact' if j > i else 'randomized'}"
    assert seen == layers
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before), "the user's model was modified"


def test_fully_randomized_model_gives_gradient_maps_uncorrelated_with_the_trained_ones():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 64), nn.ReLU(), nn.Linear(64, 4)).eval()
    x = torch.rand(16, 3, 32, 32)
    target = torch.full((16,), 2)
    ex = F.Explainer("saliency")
    layers = S.cascade_layers(model, x[:1])
    *_, (_, rand) = S.cascading_randomization(model, layers, seed=123)
    a0, a1 = ex.attribution(model, x, target), ex.attribution(rand, x, target)
    sim = S.map_similarity(F.reduce_channels(a0, "sum"), F.reduce_channels(a0, "abs"),
                           F.reduce_channels(a1, "sum"), F.reduce_channels(a1, "abs"))
    # 1,024 pixels: over ten model seeds the mean |rho| stayed under 0.06; the trained model's own maps give rho = 1
    assert abs(float(sim["spearman"].mean())) < 0.15 and abs(float(sim["spearman_abs"].mean())) < 0.15
    same = S.map_similarity(F.reduce_channels(a0, "sum"), F.reduce_channels(a0, "abs"),
                            F.reduce_channels(a0, "sum"), F.reduce_channels(a0, "abs"))
    assert float(same["spearman"].min()) == pytest.approx(1.0) and float(same["ssim"].min()) == pytest.approx(1.0)


def test_spearman_of_a_constant_map_is_zero_and_a_model_without_parameters_is_a_user_error():
    assert S.spearman(torch.zeros(2, 4, 4), torch.rand(2, 4, 4)).tolist() == [0.0, 0.0]
    with pytest.raises(UserError, match="needs a model with parameters"):
        S.cascade_layers(nn.Sequential(nn.Flatten(), nn.ReLU()), torch.rand(1, 3, 4, 4))


# ------------------------------------------------------------------------------------------ report sections
def test_runners_write_curves_tables_and_json_for_every_baseline_option(data_dir, tmp_path):
    import json

    from cnnlab.analysis.context import AnalysisContext
    from cnnlab.analysis.runners import run_faithfulness, run_sanity
    from cnnlab.backbones import VGGCifar
    from cnnlab.data import ImageDataModule
    from cnnlab.subject import from_backbone

    torch.manual_seed(0)
    subject = from_backbone(VGGCifar(width=4), "rgb", method="test", source="random", head=nn.Linear(32, 10))
    dm = ImageDataModule(name="synthetic", data_dir=str(data_dir), augment=[], progress=False, synthetic={"n_train": 20, "n_test": 20})
    ctx = AnalysisContext(subject, dm, tmp_path, limit=20)
    before = copy.deepcopy(subject.backbone.state_dict())
    out = run_faithfulness(ctx, images=3, methods=["saliency", "grad_cam"], steps=4, deletion_fill="mean", insertion_start="zero")
    assert set(out["auc"]) == {"saliency", "grad_cam", "random"} and out["images"] == 3
    for fill, start in (("zero", "blur"), ("blur", "gray")):
        run_faithfulness(ctx, images=2, methods=["occlusion"], steps=2, deletion_fill=fill, insertion_start=start, occlusion_patch=16,
                         occlusion_stride=16)
    san = run_sanity(ctx, images=2, methods=["guided_backprop"], max_layers=3, draws=2, step="module")
    assert san["layers"] == ["(trained)", "head Linear", "conv4_2.1 BatchNorm2d", "conv4_2.0 Conv2d"]
    assert san["spearman_abs"]["guided_backprop"][0] == 1.0 and len(san["ssim"]["guided_backprop"]) == 4
    # the default steps (a layer with its BatchNorm) compare maps at a subset of those depths, with the same weights
    by_layer = run_sanity(ctx, images=2, methods=["guided_backprop"], max_layers=2, draws=2)
    assert by_layer["layers"] == ["(trained)", "head Linear", "conv4_2.0 Conv2d + BatchNorm2d"]
    for k in ("spearman", "spearman_abs", "ssim"):
        assert by_layer[k]["guided_backprop"] == [san[k]["guided_backprop"][i] for i in (0, 1, 3)], k
    assert all(torch.equal(before[k], v) for k, v in subject.backbone.state_dict().items())
    keys = [s.key for s in ctx.report.sections]
    assert keys == ["faithfulness"] * 3 + ["sanity"] * 2 and all(s.tables and s.figures for s in ctx.report.sections)
    assert json.loads((tmp_path / "sanity.json").read_text())["draws"] == 2
    with pytest.raises(UserError, match="insertion_start must be one of"):
        run_faithfulness(ctx, images=1, insertion_start="noise")
    with pytest.raises(UserError, match="draws must be at least 1"):
        run_sanity(ctx, images=1, draws=0)
    with pytest.raises(UserError, match="sanity step must be one of"):
        run_sanity(ctx, images=1, step="block")
