"""Properties of the image-optimization building blocks, attacks and experiments (synthetic inputs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cnnlab.analysis.attribution import saliency_map
from cnnlab.errors import UserError
from cnnlab.hooks import LayerCapture, hook_count
from cnnlab.io.images import load_image
from cnnlab.models import Classifier
from cnnlab.subject import Subject, from_classifier, from_torchvision, load_subject
from cnnlab.visualize import attacks as A
from cnnlab.visualize import objectives as O
from cnnlab.visualize.experiments import Context, actmax, class_model, deepdream, fooling, inversion, style
from cnnlab.visualize.module import ImageOptimization, run_optimization
from cnnlab.visualize.param import FourierImage, PixelImage
from cnnlab.visualize.regularizers import StepRegularizer, total_variation
from cnnlab.visualize.transforms import RandomTransforms, lucid_transforms

pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning"), pytest.mark.usefixtures("one_thread")]


@pytest.fixture(scope="module")
def net(one_thread) -> Subject:
    """A small VGG trained for a few seconds on the synthetic shapes (confident, non-trivial gradients).

    It is trained in float64 and then used in float32: float32 training would give weights that depend on the
    CPU's rounding (its kernels differ between CPUs), float64 leaves differences far below any margin here.
    """
    from cnnlab.data.synthetic import generate

    torch.manual_seed(0)
    module = Classifier(backbone={"_target_": "cnnlab.backbones.VGGCifar", "width": 8}, num_classes=10).double()
    images, labels = generate(320, 32, 10, seed=0)
    x, y = torch.from_numpy(images).double() / 255, torch.from_numpy(labels)
    opt = torch.optim.Adam(module.parameters(), lr=0.01)
    module.train()
    for _epoch in range(3):
        for i in range(0, len(x), 64):
            loss = nn.functional.cross_entropy(module(x[i:i + 64]), y[i:i + 64])
            opt.zero_grad()
            loss.backward()
            opt.step()
    module.data_info = {"color_space": "rgb", "image_size": 32, "classes": [f"c{i}" for i in range(10)]}
    return from_classifier(module.float().eval())


def _state(net: Subject) -> dict:
    return {k: v.clone() for k, v in net.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# --------------------------------------------------------------------------------- parameterizations
@pytest.mark.parametrize("h,w", [(32, 32), (33, 31), (7, 8), (1, 5)])
def test_fourier_zero_spectrum_is_uniform_gray_and_sizes_match(h, w):
    img = FourierImage(batch=2, height=h, width=w)
    assert img().shape == (2, 3, h, w)
    with torch.no_grad():
        img.spectrum.zero_()
    out = img()
    assert torch.allclose(out, torch.full_like(out, 0.5), atol=1e-6)


@pytest.mark.parametrize("h,w", [(32, 32), (17, 9)])
def test_pixel_image_sizes_and_range(h, w):
    img = PixelImage(3, h, w, init="noise", sd=2.0)
    assert img().shape == (3, 3, h, w)
    img.project()
    assert img().min() >= 0 and img().max() <= 1
    assert torch.equal(PixelImage(1, h, w, init="zeros")(), torch.full((1, 3, h, w), 0.5))


def test_fourier_image_is_in_unit_range_and_trainable():
    img = FourierImage(4, 24, 25, sd=1.0, seed=0)
    out = img()
    assert out.min() > 0 and out.max() < 1
    out.mean().backward()
    assert img.spectrum.grad is not None and img.spectrum.grad.abs().sum() > 0


# --------------------------------------------------------------------------------- regularizers and losses
@pytest.mark.parametrize("beta", [1.0, 2.0, 3.0])
def test_total_variation_of_constant_image_is_zero(beta):
    const = torch.full((2, 3, 9, 11), 0.37)
    assert total_variation(const, beta).item() == 0.0
    noisy = const + 0.1 * torch.randn_like(const)
    assert total_variation(noisy, beta).item() > 0
    x = const.clone().requires_grad_(True)
    total_variation(x, beta).backward()
    assert torch.isfinite(x.grad).all()


def test_gram_is_symmetric_psd_and_style_content_losses_vanish():
    feats = torch.randn(3, 16, 5, 7)
    g = O.gram(feats)
    assert torch.allclose(g, g.transpose(1, 2))
    assert torch.linalg.eigvalsh(g.double()).min() > -1e-6
    assert O.style_loss(feats, O.gram(feats)).item() == 0.0
    assert O.style_loss(feats + 0.5, O.gram(feats)).item() > 0
    assert O.content_loss(feats, feats).item() == 0.0
    content = O.content("conv2_1", feats)
    assert content({"conv2_1": feats}).item() == 0.0


def test_objectives_add_and_scale_like_numbers():
    acts = {"logits": torch.randn(2, 10), "conv1_1": torch.randn(2, 4, 6, 6), "input": torch.rand(2, 3, 8, 8)}
    a, b, c = O.class_logit([1, 2]), O.channel("conv1_1", 3), O.tv()
    combo = 2 * a + b * 0.5 - c
    expected = 2 * a(acts) + 0.5 * b(acts) - c(acts)
    assert torch.allclose(combo(acts), expected)
    assert combo.layers == {"logits", "conv1_1", "input"}
    assert torch.allclose(sum([a, b, c])(acts), a(acts) + b(acts) + c(acts))
    assert torch.allclose((a / 4)(acts), a(acts) / 4)
    assert torch.allclose(a(acts), -acts["logits"][[0, 1], [1, 2]].mean())


def test_step_regularizers_blur_and_clip():
    torch.manual_seed(0)
    img = PixelImage(1, 16, 16, init="noise", sd=0.3, clamp=False)
    before = total_variation(img()).item()
    StepRegularizer(blur_sigma=1.0, blur_every=1)(img, 0)
    assert total_variation(img()).item() < 0.5 * before
    StepRegularizer(norm_pct=50)(img, 1)
    gray = (img.pixels.norm(dim=1) == 0).float().mean().item()
    assert 0.45 <= gray <= 0.55
    with pytest.raises(UserError):
        StepRegularizer(norm_pct=120)


# --------------------------------------------------------------------------------- transforms
def test_transforms_fixed_between_resamples():
    t = lucid_transforms(32)
    x = torch.rand(2, 3, 32, 32)
    t.resample(2, torch.Generator().manual_seed(0))
    a = t(x)
    assert torch.equal(a, t(x)), "parameters stay fixed until the next resample"
    t.resample(2, torch.Generator().manual_seed(1))
    y = t(x)
    assert not torch.equal(a, y), "another seed draws other parameters"
    t.resample(2, torch.Generator().manual_seed(0))
    assert torch.equal(t(x), a), "the same seed reproduces the same transform"
    r = RandomTransforms(roll=4)
    r.resample(2, torch.Generator().manual_seed(3))
    assert torch.equal(r(x), r(x)) and r(x).shape == x.shape


# --------------------------------------------------------------------------------- network, hooks, module
def test_unknown_layer_and_class_are_user_errors(net):
    with pytest.raises(UserError, match="unknown layer 'conv9_9'"):
        LayerCapture(net, ["conv9_9"])
    with pytest.raises(UserError, match="unknown class 'zebra'"):
        net.class_index("zebra")
    with pytest.raises(UserError, match="out of range"):
        net.class_index(10)
    assert net.class_index("c3") == 3


def test_capture_stops_early_and_removes_hooks(net):
    x = torch.rand(2, 3, 32, 32)
    with LayerCapture(net, ["conv2_1"]) as cap:
        assert hook_count(net) == 1
        acts = cap.run(x)
    assert hook_count(net) == 0
    assert acts["conv2_1"].shape == (2, 16, 16, 16) and "logits" not in acts
    with LayerCapture(net, ["conv1_1", "logits"]) as cap:
        acts = cap.run(x)
    assert torch.allclose(acts["logits"], net(x))


# normalized steps of 0.01 oscillate on this network (the first step overshoots), and whether 8 of them end
# below the start depended on the CPU; at 0.002 every step is in the first-order regime and the objective falls
@pytest.mark.parametrize("optimizer,lr", [("adam", 0.05), ("sgd", 0.5), ("lbfgs", 0.5), ("normalized", 0.002)])
def test_run_improves_objective_and_leaves_network_untouched(net, optimizer, lr):
    before = _state(net)
    obj = O.class_logit(list(range(4))) + 0.01 * O.l2()
    kw = {"line_search_fn": "strong_wolfe"} if optimizer == "lbfgs" else {}
    mod = ImageOptimization(net, PixelImage(4, 32, init="noise", sd=0.05, seed=0), obj, None, optimizer, lr,
                            optimizer_kwargs=kw)
    run_optimization(mod, 8, progress=False)
    assert mod.history[-1] < mod.history[0]
    assert _same(before, _state(net))
    assert not net.training and not any(m.training for m in net.modules())
    assert hook_count(net) == 0
    assert all(not p.requires_grad for p in net.parameters())
    assert [n for n, p in mod.named_parameters() if p.requires_grad] == ["image.pixels"]


def test_hooks_removed_when_the_objective_fails(net):
    calls = {"n": 0}

    def boom(acts):
        calls["n"] += 1
        if calls["n"] >= 3:
            raise RuntimeError("objective failed")
        return -acts["conv3_1"].mean()

    mod = ImageOptimization(net, PixelImage(1, 32), O.Objective(boom, ["conv3_1"]), optimizer="adam")
    with pytest.raises(RuntimeError, match="objective failed"):
        run_optimization(mod, 5, progress=False)
    assert hook_count(net) == 0 and not net.training


def test_lbfgs_closure_sees_one_transform_per_step(net):
    seen: list[list[torch.Tensor]] = []
    transforms = lucid_transforms(24)
    inner = transforms.forward

    def recording(x):
        out = inner(x)
        seen[-1].append(transforms.params["angle"].clone())
        return out

    transforms.forward = recording

    class Marker(ImageOptimization):
        def training_step(self, batch, batch_idx):
            seen.append([])
            return super().training_step(batch, batch_idx)

    kw = {"max_iter": 3, "line_search_fn": None}
    mod = Marker(net, PixelImage(1, 24, seed=0), O.class_logit([0]), transforms, "lbfgs", 0.1, optimizer_kwargs=kw)
    run_optimization(mod, 3, progress=False)
    assert len(seen) == 3
    assert any(len(s) > 1 for s in seen)  # L-BFGS re-evaluated the closure within a step
    for calls in seen:
        assert all(torch.equal(calls[0], c) for c in calls)
    assert not torch.equal(seen[0][0], seen[1][0])  # but new transforms each step


# --------------------------------------------------------------------------------- saliency and attacks
def test_saliency_of_linear_model_is_abs_weight():
    torch.manual_seed(0)
    lin = nn.Sequential(nn.Flatten(), nn.Linear(3 * 5 * 6, 4))
    x = torch.rand(2, 3, 5, 6)
    sal = saliency_map(lin, x, torch.tensor([1, 3]))
    w = lin[1].weight.detach().view(4, 3, 5, 6)
    assert sal.shape == (2, 5, 6)
    assert torch.allclose(sal[0], w[1].abs().amax(0)) and torch.allclose(sal[1], w[3].abs().amax(0))
    assert all(p.grad is None for p in lin.parameters())


def test_one_pgd_step_of_size_eps_without_random_start_is_fgsm(net):
    x, y = torch.rand(6, 3, 32, 32), torch.arange(6)
    eps = 8 / 255
    assert torch.equal(A.pgd(net, x, y, eps, step_size=eps, steps=1, random_start=False), A.fgsm(net, x, y, eps))


def test_adversarial_images_stay_in_eps_ball_and_pixel_range(net):
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, 32, 32, generator=g), torch.arange(6)
    x[:, :, :4] = 0.0  # pixels at the border of the range
    x[:, :, -4:] = 1.0
    eps = 8 / 255
    advs = [A.fgsm(net, x, y, eps), A.pgd(net, x, y, eps, 2 / 255, 5, generator=g),
            A.pgd(net, x, (y + 1) % 10, eps, 2 / 255, 5, targeted=True, generator=g), A.fgsm(net, x, (y + 1) % 10, eps, targeted=True)]
    for adv in advs:
        assert (adv - x).abs().max() <= eps + 1e-6
        assert adv.min() >= 0 and adv.max() <= 1
    md, ok = A.minimal_distortion(net, x[:3], A.predict(net, x[:3]), steps=15, search_steps=2, lr=0.02)
    x = x[:3]
    assert md.min() >= 0 and md.max() <= 1
    assert ok.any()
    assert (A.predict(net, md[ok]) != net(x[ok]).argmax(1)).all()


def test_pgd_lowers_accuracy_more_than_noise(net):
    from cnnlab.data.synthetic import generate

    images, _ = generate(16, 32, 10, seed=1)
    x = torch.from_numpy(images).float() / 255
    y = A.predict(net, x)
    g = torch.Generator().manual_seed(0)
    adv = A.pgd(net, x, y, 8 / 255, steps=10, generator=g)
    noise = (x + (8 / 255) * torch.randint(0, 2, x.shape, generator=g).float().mul(2).sub(1)).clamp(0, 1)
    pgd_acc, noise_acc = ((A.predict(net, a) == y).float().mean().item() for a in (adv, noise))
    assert noise_acc >= 0.75 and pgd_acc <= 0.5 and pgd_acc <= noise_acc - 0.25, (pgd_acc, noise_acc)


@pytest.mark.parametrize("eps", [0.0, -0.1, 8.0])
def test_eps_outside_pixel_range_is_a_user_error(net, eps):
    with pytest.raises(UserError, match="outside the pixel range"):
        A.fgsm(net, torch.rand(1, 3, 32, 32), torch.tensor([0]), eps)


def test_fooling_images_reach_confidence(net):
    classes = torch.tensor([0, 5])
    start = net(torch.rand(2, 3, 24, 24, generator=torch.Generator().manual_seed(0))).softmax(1)[[0, 1], classes]
    imgs, conf, taken = A.fooling_images(net, classes, 24, steps=60, lr=0.2, confidence=0.6,
                                         generator=torch.Generator().manual_seed(0))
    assert imgs.shape == (2, 3, 24, 24) and imgs.min() >= 0 and imgs.max() <= 1
    assert (conf >= start - 1e-3).all()  # noise start is clamped to [0.02, 0.98]: tiny differences
    # an image that reached the confidence stopped there; one that did not used every step
    assert all((c >= 0.6) or (t == 60) for c, t in zip(conf.tolist(), taken.tolist()))
    assert (conf >= 0.6).any()


# --------------------------------------------------------------------------------- inputs
def test_image_loading_errors(tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(UserError, match="not a readable image"):
        load_image(str(bad))
    with pytest.raises(UserError, match="does not exist"):
        load_image(str(tmp_path / "missing.png"))
    with pytest.raises(UserError, match="unknown scikit-image photo"):
        load_image("skimage:nothing")
    img = load_image("skimage:chelsea", 33)
    assert img.shape[0] == 1 and img.shape[1] == 3 and min(img.shape[-2:]) == 33


def test_user_photo_is_bounded_unless_a_size_is_asked(tmp_path):
    from PIL import Image

    from cnnlab.io.images import MAX_SIDE

    path = tmp_path / "big.png"
    Image.new("RGB", (MAX_SIDE + 476, MAX_SIDE // 2), (10, 200, 30)).save(path)
    img = load_image(str(path))
    assert img.shape[-1] == MAX_SIDE and img.shape[-2] == round((MAX_SIDE // 2) * MAX_SIDE / (MAX_SIDE + 476))
    assert load_image(str(path), (MAX_SIDE, 2 * MAX_SIDE)).shape[-2:] == (MAX_SIDE, 2 * MAX_SIDE)
    small = tmp_path / "small.png"
    Image.new("RGB", (40, 30)).save(small)
    assert load_image(str(small)).shape[-2:] == (30, 40)


def test_wrong_kind_of_checkpoint_is_a_user_error(tmp_path, net):
    from cnnlab.backbones import save_trunk

    trunk = save_trunk(tmp_path / "trunk.pt", net.model.backbone, "rgb", "supervised")
    with pytest.raises(UserError, match="trunk file"):
        load_subject(checkpoint=str(trunk))
    tnet = load_subject(trunk=str(trunk))
    assert not tnet.has_logits
    with pytest.raises(UserError, match="no class"):
        LayerCapture(tnet, ["logits"])
    with pytest.raises(UserError, match="exactly one"):
        load_subject()
    with pytest.raises(UserError, match="is a directory"):
        load_subject(trunk=str(tmp_path))


def test_torchvision_network_layer_aliases():
    vgg = from_torchvision("vgg16", None, image_size=64)
    assert {"conv1_1", "conv4_2", "conv5_1", "pool5", "features.0"} <= set(vgg.layer_names)
    assert isinstance(vgg.layer("conv4_2"), nn.ReLU)
    with LayerCapture(vgg, ["conv1_1", "conv2_1"]) as cap:
        acts = cap.run(torch.rand(1, 3, 40, 40))
    assert acts["conv2_1"].shape == (1, 128, 20, 20)
    assert hook_count(vgg) == 0


# --------------------------------------------------------------------------------- experiments (small)
@pytest.fixture()
def ctx(net, tmp_path) -> Context:
    return Context(network=net, out_dir=tmp_path, progress=False)


def test_class_model_and_fourier_variant_improve(ctx, net):
    before = _state(net)
    m = class_model(ctx, classes=[0, "c1"], steps=8, lr=0.05, size=16)
    assert m["objective_end"] < m["objective_start"]
    m = class_model(ctx, classes=[2], steps=10, lr=0.05, image="fourier", robust=True, size=24)
    assert m["objective_end"] < m["objective_start"]
    assert (ctx.out_dir / "images" / "class_model.png").is_file()
    assert _same(before, _state(net)) and hook_count(net) == 0


def test_actmax_presets_improve(ctx):
    m = actmax(ctx, layer="conv3_1", units=[0, 1], steps=6, lr=0.5, size=16)
    for p in "abcd":
        assert m[f"{p}/objective_end"] < m[f"{p}/objective_start"], p
    with pytest.raises(UserError):
        actmax(ctx, presets=["z"], steps=2)


def test_inversion_improves_and_keeps_more_at_shallow_layers(ctx):
    m = inversion(ctx, images=["skimage:chelsea"], size=24, layers=["conv1_2", "conv3_2"], steps=20, lr=0.05,
                  alpha_weight=0.0, tv_weight=0.0)
    assert m["conv1_2/feature_error"] < 1.0 and m["conv3_2/feature_error"] < 1.0
    for layer in ("conv1_2", "conv3_2"):
        assert m[f"{layer}/objective_end"] < m[f"{layer}/objective_start"]
    img = (ctx.out_dir / "images" / "inversion.png")
    assert img.is_file()


def test_deepdream_raises_layer_energy(ctx):
    m = deepdream(ctx, image="skimage:coffee", size=40, layer="conv2_1", octaves=2, steps=4)
    assert m["layer_energy_after"] > m["layer_energy_before"]
    assert m["octave1/objective_end"] < m["octave1/objective_start"]


def test_style_lowers_style_loss(ctx, tmp_path):
    from torchvision.utils import save_image

    painting = tmp_path / "painting.png"
    stripes = torch.zeros(1, 3, 48, 48)
    stripes[:, 0, :, ::4] = 1.0
    stripes[:, 2, ::3] = 1.0
    save_image(stripes, painting)
    m = style(ctx, content_image="skimage:astronaut", style_image=str(painting), size=32, content_layer="conv2_2",
              style_layers=["conv1_1", "conv2_1"], steps=5)
    assert m["style_loss_end"] < m["style_loss_start"]
    assert m["objective_end"] < m["objective_start"]


def test_fooling_experiment_reports_share(ctx):
    """The share is the fraction of classes whose fooling image reached the confidence, and it is not 0 when one did."""
    m = fooling(ctx, classes=[0, 5, "c2"], size=24, steps=60, lr=0.2, confidence=0.6)
    conf = [m[f"conf/c{i}"] for i in (0, 5, 2)]
    assert m["share_confident"] == pytest.approx(sum(c >= 0.6 for c in conf) / 3)
    assert m["mean_confidence"] == pytest.approx(sum(conf) / 3)
    assert m["share_confident"] >= 1 / 3  # 60 steps reach 0.6 for at least one class (see test_fooling_images_reach_confidence)
    unreachable = fooling(ctx, classes=[1], size=16, steps=2, lr=1e-4, confidence=0.999999)
    assert unreachable["share_confident"] == 0.0 and unreachable["mean_steps"] == 2


def test_lightness_trunk_works_from_rgb_images(tmp_path):
    """A colorization trunk takes Lab L: the Network converts RGB in its forward path and gradients reach the pixels."""
    from cnnlab.backbones import VGGCifar, save_trunk

    torch.manual_seed(0)
    path = save_trunk(tmp_path / "trunk.pt", VGGCifar(in_channels=1, width=4), "L", "colorization")
    tnet = load_subject(trunk=str(path))
    assert tnet.color_space == "L" and "conv2_1" in tnet.layer_names
    ctx = Context(network=tnet, out_dir=tmp_path, progress=False)
    m = actmax(ctx, layer="conv2_1", units=[0, 1], presets=["c"], steps=5, lr=0.5, size=16)
    assert m["c/objective_end"] < m["c/objective_start"]
    with pytest.raises(UserError, match="no class"):
        class_model(ctx, steps=1)


def test_torchvision_weights_from_a_local_file(tmp_path):
    """A torchvision architecture with weights from a state_dict file: the weights are the file's, inputs are normalized."""
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet18(num_classes=1000)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)
    tv = from_torchvision("resnet18", str(path), image_size=64)
    assert torch.equal(tv.model.conv1.weight, ref.conv1.weight)
    x = torch.rand(1, 3, 64, 64)
    ref.eval()
    with torch.no_grad():
        expected = ref((x - tv.mean) / tv.std)
    assert torch.allclose(tv(x), expected, atol=1e-5)
    ctx = Context(network=tv, out_dir=tmp_path, progress=False)
    m = deepdream(ctx, image="skimage:coffee", size=48, layer="layer2", octaves=1, steps=3)
    assert m["layer_energy_after"] > m["layer_energy_before"]


def test_a_failing_tracker_never_stops_a_visualization(net, tmp_path, caplog):
    """Metrics go through tracking.log_metrics: a logger that fails is one warning, and the run goes on."""
    from pytorch_lightning.loggers import CSVLogger

    class Unreachable(CSVLogger):  # a tracker whose server went away mid-run
        def log_metrics(self, metrics, step=None):
            raise ConnectionError("tracking server unreachable")

    ctx = Context(net, tmp_path, loggers=[Unreachable(tmp_path)], progress=False)
    ctx.log_metrics({"accuracy": 0.5, "note": "not a number"})
    module = ctx.optimize(PixelImage(1, 16, seed=0), O.channel("conv2_1", [0]), 3, "t")
    assert len(module.history) == 3
    assert caplog.text.count("metric logging to Unreachable failed") == 1
