"""Properties of the robustness curve, PGD restarts and the minimal L-infinity perturbation (synthetic inputs)."""

from __future__ import annotations

import pytest
import torch

from cnnlab.errors import UserError
from cnnlab.stats import wilson_interval
from cnnlab.visualize import attacks as A
from tests.test_visualize import net  # noqa: F401 - the synthetic-trained VGG (one_thread comes from conftest)

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]

EPS = [1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255]


@pytest.fixture(scope="module")
def points(net):  # noqa: F811
    """Synthetic images the net classifies correctly (a robustness curve starts from correct decisions)."""
    from cnnlab.data.synthetic import generate

    images, labels = generate(96, 32, 10, seed=3)
    x, y = torch.from_numpy(images).float() / 255, torch.from_numpy(labels).long()
    keep = A.predict(net, x) == y
    return x[keep][:48], y[keep][:48]


def test_pgd_accuracy_is_monotone_in_eps_up_to_sampling(net, points):  # noqa: F811
    x, y = points
    raw = A.robustness_curve(net, x, y, EPS, ("pgd",), steps=5, generator=torch.Generator().manual_seed(0), cumulative=False)["pgd"]
    acc = raw.float().mean(0)
    n = len(x)
    for a, b in zip(acc[:-1].tolist(), acc[1:].tolist()):
        lo, hi = wilson_interval(round(a * n), n)
        assert b <= hi  # a larger ball is never clearly harder to leave
    assert acc[0] == 1.0 and acc[-1] < acc[0]  # the net is not robust at 16/255
    worst = A.robustness_curve(net, x, y, EPS, ("pgd",), steps=5, generator=torch.Generator().manual_seed(0))["pgd"]
    assert (worst.float().mean(0).diff() <= 0).all()  # the cumulative curve never increases
    assert (worst <= raw).all()


def test_pgd_restarts_are_never_weaker_than_one_start(net, points):  # noqa: F811
    x, y = points
    eps = 2 / 255  # small enough that some points survive one start
    one = A.fooled(net, A.pgd(net, x, y, eps, steps=3, generator=torch.Generator().manual_seed(1)), y)
    many = A.fooled(net, A.pgd(net, x, y, eps, steps=3, generator=torch.Generator().manual_seed(1), restarts=4), y)
    assert (many | ~one).all()  # every point one start fooled, the restarts fooled too
    assert many.sum() >= one.sum()


def test_perturbations_stay_within_eps_and_pixel_range(net, points):  # noqa: F811
    x, y = points
    x = x.clone()
    x[:, :, :3] = 0.0  # pixels at the borders of the range
    x[:, :, -3:] = 1.0
    eps = torch.linspace(1 / 255, 16 / 255, len(x))  # one radius per image
    adv = A.pgd(net, x, y, eps, steps=4, restarts=3, generator=torch.Generator().manual_seed(0))
    assert ((adv - x).abs().flatten(1).amax(1) <= eps + 1e-6).all()
    assert adv.min() >= 0 and adv.max() <= 1


def test_minimal_linf_radius_fools_and_is_bounded(net, points):  # noqa: F811
    x, y = points
    r = A.minimal_linf(net, x, y, eps_max=16 / 255, search_steps=3, steps=4, generator=torch.Generator().manual_seed(0))
    found = r < float("inf")
    assert found.any() and (r[found] > 0).all() and (r[found] <= 16 / 255 + 1e-7).all()
    # an adversarial example exists at the radius reported: PGD finds it again for most images (random starts differ)
    again = A.fooled(net, A.pgd(net, x[found], y[found], r[found] * 1.0001, steps=4, restarts=3,
                                generator=torch.Generator().manual_seed(5)), y[found])
    assert again.float().mean() >= 0.5


def test_curve_summary_has_clean_point_and_intervals(net, points):  # noqa: F811
    x, y = points
    curves = A.robustness_curve(net, x, y, [8 / 255, 2 / 255], steps=2, batch_size=16, generator=torch.Generator().manual_seed(0))
    rows = A.curve_summary(curves, [8 / 255, 2 / 255])
    assert [r["eps_255"] for r in rows] == [0, 2, 8, 0, 2, 8] and {r["attack"] for r in rows} == {"fgsm", "pgd"}
    assert all(r["ci_low"] <= r["accuracy"] <= r["ci_high"] and r["n"] == len(x) for r in rows)


@pytest.mark.parametrize("eps", [[0.0, 8 / 255], [8 / 255, 8.0], [-1 / 255]])
def test_curve_eps_outside_pixel_range_is_a_user_error(net, eps):  # noqa: F811
    with pytest.raises(UserError, match="outside the pixel range"):
        A.robustness_curve(net, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), eps)
    with pytest.raises(UserError, match="one value in"):
        A.pgd(net, torch.rand(2, 3, 32, 32), torch.tensor([0, 1]), torch.tensor([0.1, 1.5]))


def test_lightness_classifier_is_attacked_in_its_own_one_channel_input():
    """A data.color_space=L classifier (the gap's) takes L / 100 in [0, 1]; the attacks perturb that one channel."""
    from cnnlab.color import convert
    from cnnlab.models import Classifier

    torch.manual_seed(0)
    model = Classifier(backbone={"_target_": "cnnlab.backbones.VGGCifar", "in_channels": 1, "width": 8}, num_classes=10).eval()
    model.requires_grad_(False)
    rgb = torch.rand(24, 3, 32, 32)
    rgb[:4] = 1.0  # white and black images: L / 100 at the ends of the range
    rgb[4:8] = 0.0
    x = convert(rgb, "L")
    assert x.shape == (24, 1, 32, 32) and x.min() >= 0 and x.max() <= 1
    y = A.predict(model, x)  # the model's own decisions: every point starts correct
    curves = A.robustness_curve(model, x, y, [2 / 255, 8 / 255, 32 / 255], steps=3, restarts=2, batch_size=10,
                                generator=torch.Generator().manual_seed(0))
    for c in curves.values():
        assert c.shape == (24, 4) and c[:, 0].all() and (c.float().mean(0).diff() <= 0).all()
    eps = 8 / 255
    adv = A.pgd(model, x, y, eps, steps=3, restarts=2, generator=torch.Generator().manual_seed(0))
    assert adv.shape == x.shape and adv.min() >= 0 and adv.max() <= 1
    assert ((adv - x).abs().flatten(1).amax(1) <= eps + 1e-6).all()
    assert A.fgsm(model, x, y, eps).shape == x.shape
    r = A.minimal_linf(model, x, y, eps_max=32 / 255, search_steps=2, steps=3, generator=torch.Generator().manual_seed(0))
    found = r < float("inf")
    assert r.shape == (24,) and (r[found] > 0).all() and (r[found] <= 32 / 255 + 1e-7).all()
