"""The configured experiments of ``cnnlab-visualize`` (one function each, ``conf/viz/<name>.yaml``).

Each function takes a :class:`Context` (the frozen network, the run dir, the loggers) plus its
settings, writes image grids to ``<run dir>/images/<key>.png`` (and to W&B as media), and returns a
dict of scalar results that the entry point writes to ``metrics.json``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from cnnlab.analysis.attribution import saliency_map
from cnnlab.data.datamodule import cifar_test_images
from cnnlab.errors import UserError
from cnnlab.figures import grid_figure
from cnnlab.hooks import LOGITS, LayerCapture
from cnnlab.io.images import load_image, resize, write_figure
from cnnlab.subject import Subject
from cnnlab.tracking import log_images, log_metrics
from cnnlab.visualize import attacks as A
from cnnlab.visualize import objectives as O
from cnnlab.visualize.module import ImageOptimization, run_optimization
from cnnlab.visualize.param import PixelImage, make_image
from cnnlab.visualize.regularizers import YOSINSKI_PRESETS, StepRegularizer
from cnnlab.visualize.transforms import RandomTransforms, lucid_transforms

log = logging.getLogger("cnnlab")


@dataclass
class Context:
    """What every experiment needs: the network, where to write, whom to log to."""

    network: Subject
    out_dir: Path
    loggers: list = field(default_factory=list)
    data_dir: str = "data"
    seed: int = 0
    progress: bool = True
    device: str = "cpu"
    #: W&B step shared by all optimization runs of this experiment (histories never overlap)
    step: int = 0

    def optimize(self, image, objective: O.Objective, steps: int, tag: str, transforms: RandomTransforms | None = None,
                 optimizer: str = "adam", lr: float = 0.05, post_steps: Sequence = (), optimizer_kwargs: dict | None = None,
                 ) -> ImageOptimization:
        module = ImageOptimization(self.network, image, objective, transforms, optimizer, lr, optimizer_kwargs, post_steps,
                                   tag=tag, loggers=self.loggers, step_offset=self.step, seed=self.seed)
        run_optimization(module, steps, progress=self.progress, accelerator="gpu" if self.device == "cuda" else "cpu")
        self.step += int(steps)
        module.to("cpu")
        return module

    def save(self, key: str, images: torch.Tensor, nrow: int = 8, caption: str | None = None, title: str | None = None,
             rows: Sequence[str] | None = None, cols: Sequence[str] | None = None, notes: Sequence[str] | None = None) -> Path:
        """Write a labelled grid (:func:`~cnnlab.figures.grid_figure`: ``title`` over ``caption``, row and column labels,
        a note under each tile) to ``<run dir>/images/<key>.png`` and send it to W&B."""
        return self.save_figure(key, grid_figure(images, nrow, title, rows, cols, notes, caption), caption or title or key)

    def save_figure(self, key: str, fig, caption: str | None = None) -> Path:
        """Write a matplotlib figure to ``<run dir>/images/<key>.png`` and send it to W&B."""
        path = write_figure(self.out_dir / "images" / f"{key}.png", fig, dpi=fig.dpi)
        log_images(self.loggers, f"viz/{key}", [path], caption or key, step=self.step)
        log.info("saved %s", path)
        return path

    def log_metrics(self, metrics: dict) -> None:
        log_metrics(self.loggers, {f"viz/{k}": v for k, v in metrics.items()}, step=self.step)

    # ----------------------------------------------------------------------------- inputs
    def class_indices(self, classes: Sequence | None) -> list[int]:
        if classes is None:
            return list(range(self.network.num_classes))
        return [self.network.class_index(c) for c in classes]

    def images(self, specs: Sequence[str] | None, size, count: int = 10) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Given image specs (files, ``skimage:<name>``) resized to ``size``, or ``count`` CIFAR-10 test images."""
        if specs:
            imgs = [load_image(s, size) for s in specs]
            shape = imgs[0].shape[-2:]
            return torch.cat([resize(i, tuple(shape)) for i in imgs]), None
        x, y, _ = cifar_test_images(count, self.data_dir)
        return resize(x, size) if size and size != x.shape[-1] else x, y


def _cols(n: int) -> int:
    """Tiles per row for ``n`` single images: at most 5, so labels under 96-px tiles keep their room."""
    return min(n, 5)


def _size(ctx: Context, size) -> int:
    return int(size or ctx.network.image_size)


def _image(ctx: Context, kind: str, batch: int, height: int, width: int, spectrum: str = "auto", **pixel_kwargs):
    """An image parameterization by name; ``pixel_kwargs`` (init, sd) apply to pixels only."""
    if kind == "pixel":
        return make_image(kind, batch, height, width, seed=ctx.seed, **pixel_kwargs)
    return make_image(kind, batch, height, width, spectrum=spectrum, data_dir=ctx.data_dir, seed=ctx.seed)


def _logits(ctx: Context, images: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return ctx.network(images)


# --------------------------------------------------------------------------------- class models
def class_model(ctx: Context, classes: Sequence | None = None, steps: int = 200, lr: float = 0.05, optimizer: str = "adam",
                image: str = "pixel", size: int | None = None, l2_weight: float = 1e-2, tv_weight: float = 0.0,
                robust: bool = False, spectrum: str = "auto") -> dict:
    """Simonyan et al.: argmax_x S_c(x) - lambda ||x||^2 from a gray image, one image per class."""
    idx = ctx.class_indices(classes)
    s = _size(ctx, size)
    img = _image(ctx, image, len(idx), s, s, spectrum, init="zeros")
    obj = O.class_logit(idx) + l2_weight * O.l2()
    if tv_weight:
        obj = obj + tv_weight * O.tv()
    mod = ctx.optimize(img, obj, steps, "class_model", lucid_transforms(s) if robust else None, optimizer, lr)
    out = mod.result()
    probs = ctx.network.probabilities(_logits(ctx, out))
    names = [ctx.network.class_name(i) for i in idx]
    conf = probs[torch.arange(len(idx)), torch.tensor(idx)]
    ctx.save("class_model", out, nrow=_cols(len(idx)), title=f"Class models of {ctx.network.name} (Simonyan et al.)",
             caption=f"each image maximizes one class score from gray ({steps} steps {optimizer}, L2 {l2_weight:g}"
                     f"{', robust transforms' if robust else ''}); under it: the class and its "
                     f"{'sigmoid' if ctx.network.multilabel else 'softmax'} probability",
             notes=[f"{n} p={float(p):.2f}" for n, p in zip(names, conf)])
    return {"objective_start": mod.history[0], "objective_end": mod.history[-1],
            "mean_target_prob": float(conf.mean()), **{f"prob/{n}": float(p) for n, p in zip(names, conf)}}


def saliency(ctx: Context, images: Sequence[str] | None = None, count: int = 10, size: int | None = None,
             target: str = "predicted") -> dict:
    """Image-specific class saliency: the input images above their saliency maps (per-image normalized)."""
    x, y = ctx.images(images, size, count)
    logits = _logits(ctx, x)
    if target == "predicted" or y is None:
        t = logits.argmax(1)
    elif target == "true":
        t = y
    else:
        t = torch.full((len(x),), ctx.network.class_index(target))
    sal = saliency_map(ctx.network, x, t)
    flat = sal.flatten(1)
    norm = (flat / flat.amax(1, keepdim=True).clamp_min(1e-12)).view_as(sal)
    grid = torch.cat([x, norm.unsqueeze(1).expand(-1, 3, -1, -1)])
    names = [ctx.network.class_name(int(i)) for i in t]
    ctx.save("saliency", grid, nrow=len(x), title=f"Image-specific class saliency of {ctx.network.name} (Simonyan et al.)",
             caption=f"|d score / d x|, max over colour channels, for the {target} class", rows=["image", "saliency"],
             cols=None if y is None else [f"true {ctx.network.class_name(int(a))}" for a in y], notes=[*names, *names])
    # share of the saliency mass in the central half of the image (objects are mostly centred)
    h, w = sal.shape[-2:]
    centre = sal[:, h // 4: h - h // 4, w // 4: w - w // 4].sum((1, 2)) / sal.sum((1, 2)).clamp_min(1e-12)
    out = {"centre_mass": float(centre.mean())}
    if y is not None:
        out["accuracy"] = float((logits.argmax(1) == y).float().mean())
    return out


# --------------------------------------------------------------------------------- activation maximization
def _units(ctx: Context, layer: str, units: Sequence | None) -> tuple[list[int], O.Objective, list[str]]:
    """Class units at ``logits`` (default every class) or channels of ``layer`` (default 0-7): indices, objective, names."""
    ctx.network.check_layers([layer])
    if layer == LOGITS:
        idx = ctx.class_indices(units)
        return idx, O.class_logit(idx), [ctx.network.class_name(i) for i in idx]
    idx = [int(u) for u in (units if units is not None else range(8))]
    return idx, O.channel(layer, idx), [f"{layer}:{i}" for i in idx]


def actmax(ctx: Context, layer: str = LOGITS, units: Sequence | None = None, presets: Sequence[str] = ("a", "b", "c", "d"),
           steps: int = 100, lr: float = 3.0, size: int | None = None, init_sd: float = 0.0) -> dict:
    """Yosinski et al.: gradient ascent on one unit per image with each regularization preset (one grid row each)."""
    idx, obj, names = _units(ctx, layer, units)
    s = _size(ctx, size)
    rows, out = [], {}
    for p in presets:
        if p not in YOSINSKI_PRESETS:
            raise UserError(f"unknown Yosinski preset {p!r}: choose from {sorted(YOSINSKI_PRESETS)}")
        img = PixelImage(len(idx), s, init="noise" if init_sd else "zeros", sd=init_sd, seed=ctx.seed)
        mod = ctx.optimize(img, obj, steps, f"actmax_{p}", optimizer="sgd", lr=lr,
                           post_steps=[StepRegularizer(**YOSINSKI_PRESETS[p])])
        rows.append(mod.result())
        out[f"{p}/objective_start"], out[f"{p}/objective_end"] = mod.history[0], mod.history[-1]
    ctx.save("actmax", torch.cat(rows), nrow=len(idx), title=f"Activation maximization of {ctx.network.name} (Yosinski et al.)",
             caption=f"one unit per column, one regularization preset per row ({steps} steps)", rows=[f"preset {p}" for p in presets],
             cols=names)
    return out


def featviz(ctx: Context, layer: str = LOGITS, units: Sequence | None = None, image: str = "maco", size: int | None = None,
            steps: int = 256, lr: float = 0.05, robust: bool = True, spectrum: str = "auto") -> dict:
    """Feature visualization of one unit per image (a class or a channel) in the chosen parameterization
    (``pixel``, ``fourier`` or ``maco``), with robustness transforms; MACO also draws its transparency map.

    Besides the objective, reports each image's power-spectrum distance to natural images (RMS difference
    of the radial log10 power spectrum from that of natural images of the same size).
    """
    images, alpha, names, out = render_units(ctx, layer, units, image, size, steps, lr, robust, spectrum)
    rows, labels = [images], [image]
    if alpha is not None:
        rows += [alpha.expand(-1, 3, -1, -1), images * alpha + (1 - alpha)]
        labels += ["transparency", "on white by it"]
    ctx.save(f"featviz_{image}", torch.cat(rows), nrow=len(names), title=f"Feature visualization of {ctx.network.name}",
             caption=f"{image} parameterization, {steps} steps{', robust transforms' if robust else ''}; one unit per column"
                     + ("; transparency = accumulated |d loss / d image|" if alpha is not None else ""), rows=labels, cols=names)
    return out


def render_units(ctx: Context, layer: str, units: Sequence | None, image: str, size: int | None, steps: int, lr: float,
                 robust: bool = True, spectrum: str = "auto") -> tuple[torch.Tensor, torch.Tensor | None, list[str], dict]:
    """The optimization behind ``featviz``: ``(images (B, 3, H, W), transparency (B, 1, H, W) or None, unit names, metrics)``."""
    from cnnlab.visualize.spectrum import natural_images, radial_log_power, resolve_source, spectrum_distance

    idx, obj, names = _units(ctx, layer, units)
    s = _size(ctx, size)
    img = _image(ctx, image, len(idx), s, s, spectrum, init="noise", sd=0.01)
    mod = ctx.optimize(img, obj, steps, f"featviz_{image}", lucid_transforms(s, out_size=s) if robust else None, "adam", lr)
    out_img = mod.result()
    with LayerCapture(ctx.network, sorted(obj.layers)) as cap, torch.no_grad():
        acts = cap.run(out_img)
    # per unit, the objective of its own image (a loss: minus the activation)
    per_unit = [float(O.class_logit(i)({LOGITS: acts[LOGITS][b:b + 1]})) if layer == LOGITS else
                float(O.channel(layer, i)({layer: acts[layer][b:b + 1]})) for b, i in enumerate(idx)]
    reference = radial_log_power(natural_images(resolve_source(spectrum, (s, s)), (s, s), ctx.data_dir, limit=1000)).mean(0)
    dist = spectrum_distance(out_img, reference)
    alpha = img.transparency_map() if hasattr(img, "transparency_map") else None
    metrics = {"objective_start": mod.history[0], "objective_end": mod.history[-1], "objective": sum(per_unit) / len(per_unit),
               "spectrum_distance": float(dist.mean()), **{f"objective/{n}": v for n, v in zip(names, per_unit)}}
    return out_img, alpha, names, metrics


# --------------------------------------------------------------------------------- inversion
def inversion(ctx: Context, images: Sequence[str] | None = None, count: int = 4, size: int | None = None,
              layers: Sequence[str] = ("conv1_2", "conv2_2", "conv3_2", "conv4_2", "logits"), steps: int = 300,
              lr: float = 0.05, image: str = "pixel", alpha: float = 6.0, alpha_weight: float = 10.0,
              tv_weight: float = 1.0, beta: float = 2.0, robust: bool = False, spectrum: str = "auto") -> dict:
    """Mahendran & Vedaldi: reconstruct each image from its representation at several depths."""
    x, _ = ctx.images(images, size, count)
    layers = ctx.network.check_layers(list(layers))
    with LayerCapture(ctx.network, layers) as cap, torch.no_grad():
        targets = cap.run(x)
    b, _, h, w = x.shape
    cols, out = [x], {}
    for layer in layers:
        obj = O.feature_reconstruction(layer, targets[layer]) + alpha_weight * O.alpha(alpha) + tv_weight * O.tv(beta)
        img = _image(ctx, image, b, h, w, spectrum, init="noise", sd=0.05)
        mod = ctx.optimize(img, obj, steps, f"inversion_{layer}", lucid_transforms(h) if robust else None, "adam", lr)
        rec = mod.result()
        cols.append(rec)
        with LayerCapture(ctx.network, [layer]) as cap, torch.no_grad():
            feat = cap.run(rec)[layer]
        t = targets[layer]
        out[f"{layer}/feature_error"] = float(((feat - t).flatten(1).pow(2).sum(1) / t.flatten(1).pow(2).sum(1)).mean())
        out[f"{layer}/pixel_rmse"] = float((rec - x).pow(2).mean().sqrt())
        out[f"{layer}/objective_start"], out[f"{layer}/objective_end"] = mod.history[0], mod.history[-1]
    # rows: images; columns: original, then one reconstruction per layer
    grid = torch.stack(cols, dim=1).flatten(0, 1)
    ctx.save("inversion", grid, nrow=len(cols), title=f"Feature inversion of {ctx.network.name} (Mahendran & Vedaldi)",
             caption=f"each image reconstructed from its representation at one layer ({steps} steps)",
             rows=[f"image {i + 1}" for i in range(b)], cols=["original", *layers])
    return out


# --------------------------------------------------------------------------------- DeepDream
def deepdream(ctx: Context, image: str = "skimage:coffee", size: int = 160, layer: str = "conv3_2", octaves: int = 4,
              octave_scale: float = 1.4, steps: int = 10, lr: float = 0.006, jitter: int = 16) -> dict:
    """DeepDream: ascend 0.5 ||a||^2 at ``layer`` with normalized steps, octaves and roll jitter."""
    ctx.network.check_layers([layer])
    base = load_image(image, size)
    h, w = base.shape[-2:]
    shapes = [(max(8, round(h / octave_scale**k)), max(8, round(w / octave_scale**k))) for k in range(octaves - 1, -1, -1)]
    detail = torch.zeros(1, 3, *shapes[0])
    stages, out = [], {}
    for k, shp in enumerate(shapes):
        octave_base = resize(base, shp)
        detail = F.interpolate(detail, size=shp, mode="bilinear", align_corners=False)
        img = PixelImage(init=(octave_base + detail).clamp(0, 1))
        roll = max(1, round(jitter * shp[0] / h))
        mod = ctx.optimize(img, O.layer_l2(layer), steps, f"deepdream_octave{k}", RandomTransforms(roll=roll), "normalized", lr)
        result = mod.result()
        detail = result - octave_base
        stages.append(resize(result, (h, w)))
        out[f"octave{k}/objective_start"], out[f"octave{k}/objective_end"] = mod.history[0], mod.history[-1]
    ctx.save("deepdream_octaves", torch.cat(stages), nrow=len(stages), title=f"DeepDream on {ctx.network.name}, layer {layer}",
             caption="after each octave (small to full size)", cols=[f"octave {k + 1}/{len(stages)}" for k in range(len(stages))])
    ctx.save("deepdream", torch.cat([base, stages[-1]]), nrow=2, title=f"DeepDream on {ctx.network.name}",
             caption=f"ascending 0.5 ||a||^2 at {layer}, {octaves} octaves of {steps} steps", cols=["before", "after"])
    with LayerCapture(ctx.network, [layer]) as cap, torch.no_grad():
        before, after = (0.5 * cap.run(t)[layer].pow(2).sum().item() for t in (base, stages[-1]))
    out.update({"layer_energy_before": before, "layer_energy_after": after})
    return out


# --------------------------------------------------------------------------------- neural style
def style(ctx: Context, content_image: str = "skimage:astronaut", style_image: str = "", size: int = 128,
          content_layer: str = "conv3_2", style_layers: Sequence[str] = ("conv1_1", "conv2_1", "conv3_1", "conv4_1"),
          content_weight: float = 1.0, style_weight: float = 1e3, tv_weight: float = 0.0, optimizer: str = "lbfgs",
          lr: float = 1.0, steps: int = 100, init: str = "content") -> dict:
    """Gatys et al.: match content features at ``content_layer`` and Gram matrices at ``style_layers``."""
    if not style_image:
        raise UserError("viz.style_image is not set: pass a painting, e.g. viz.style_image=$CNNLAB_DATA/images/starry_night.jpg")
    ctx.network.check_layers([content_layer, *style_layers])
    c = load_image(content_image, size)
    s = resize(load_image(style_image, size), tuple(c.shape[-2:]))
    with LayerCapture(ctx.network, [content_layer, *style_layers]) as cap, torch.no_grad():
        c_feats = cap.run(c)
        s_feats = cap.run(s)
    grams = {l: O.gram(s_feats[l]) for l in style_layers}
    c_obj, s_obj = O.content(content_layer, c_feats[content_layer]), O.style(style_layers, grams)
    obj = content_weight * c_obj + style_weight * s_obj
    if tv_weight:
        obj = obj + tv_weight * O.tv()
    start = c if init == "content" else torch.rand(c.shape, generator=torch.Generator().manual_seed(ctx.seed))
    kw = {"line_search_fn": "strong_wolfe", "max_iter": 1} if optimizer == "lbfgs" else {}
    mod = ctx.optimize(PixelImage(init=start), obj, steps, "style", optimizer=optimizer, lr=lr, optimizer_kwargs=kw)
    result = mod.result()
    ctx.save("style", torch.cat([c, s, result]), nrow=3, title=f"Neural style on {ctx.network.name} (Gatys et al.)",
             caption=f"content at {content_layer}, style at {', '.join(style_layers)}, {steps} {optimizer} steps",
             cols=["content", "style", "result"])
    with LayerCapture(ctx.network, [content_layer, *style_layers]) as cap, torch.no_grad():
        acts = cap.run(result)
        a0 = cap.run(start)
    return {"objective_start": mod.history[0], "objective_end": mod.history[-1],
            "content_loss_end": float(c_obj(acts)), "style_loss_start": float(s_obj(a0)), "style_loss_end": float(s_obj(acts))}


# --------------------------------------------------------------------------------- adversarial
#: the usual L-infinity radii of a CIFAR-10 robustness curve, in pixel units of [0, 1] images
CURVE_EPS = (1 / 255, 2 / 255, 4 / 255, 8 / 255, 16 / 255)


def adversarial(ctx: Context, count: int = 10, eps: float = 8 / 255, step_size: float = 2 / 255, steps: int = 10,
                md_steps: int = 50, md_search: int = 4, md_lr: float = 0.01, curve_eps: Sequence[float] = CURVE_EPS,
                curve_count: int = 200, curve_steps: int = 10, restarts: int = 3, batch_size: int = 100,
                minimal_search: int = 6) -> dict:
    """FGSM, PGD, targeted PGD and the minimal-distortion attack on CIFAR-10 test images, then the
    robustness curve: robust accuracy against L-infinity eps for FGSM and PGD with ``restarts`` random
    starts (worst case per point) on ``curve_count`` test images, beside the median minimal L-infinity
    perturbation (bisection over eps of PGD success per image, ``minimal_search`` rounds)."""
    ctx.network.single_label("viz=adversarial")
    A.check_eps(eps)
    A.check_eps(step_size, "step_size")
    curve_eps = sorted(A.check_eps(e, "curve_eps") for e in curve_eps)
    x, y, _ = cifar_test_images(count, ctx.data_dir)
    net, g = ctx.network, torch.Generator().manual_seed(ctx.seed)
    k = net.num_classes
    adv_fgsm = A.fgsm(net, x, y, eps)
    adv_pgd = A.pgd(net, x, y, eps, step_size, steps, random_start=True, generator=g)
    target = (y + 1) % k
    adv_tgt = A.pgd(net, x, target, eps, step_size, steps, random_start=True, targeted=True, generator=g)
    adv_md, ok = A.minimal_distortion(net, x, y, steps=md_steps, search_steps=md_search, lr=md_lr)
    pred = {n: A.predict(net, a) for n, a in (("clean", x), ("fgsm", adv_fgsm), ("pgd", adv_pgd), ("targeted", adv_tgt), ("md", adv_md))}
    amp = lambda a: (0.5 + (a - x) / (2 * eps)).clamp(0, 1)  # noqa: E731 - perturbation, eps mapped to full contrast
    cls = net.class_name
    notes = [f"-> {cls(int(p))}" if key else "" for key in ("clean", "fgsm", None, "pgd", None, "md", None)
             for p in pred[key or "clean"]]
    ctx.save("adversarial", torch.cat([x, adv_fgsm, amp(adv_fgsm), adv_pgd, amp(adv_pgd), adv_md,
                                       (0.5 + 10 * (adv_md - x)).clamp(0, 1)]), nrow=len(x),
             title=f"Adversarial examples against {net.name}",
             caption=f"L-inf eps {eps * 255:g}/255 (FGSM; PGD {steps} steps), and the smallest L2 change that flips the class; "
                     "perturbations drawn around gray (eps = full contrast); under each image: the class predicted for it",
             rows=["clean", "FGSM", "FGSM perturbation", f"PGD-{steps}", "PGD perturbation", "minimal distortion",
                   "its perturbation x10"], cols=[f"true: {cls(int(t))}" for t in y], notes=notes)
    norms = (adv_md - x).flatten(1).norm(dim=1)
    ok = ok & (pred["clean"] == y)  # distortion needed to flip a correct decision (a wrong one needs none)
    out = {"clean_acc": float((pred["clean"] == y).float().mean()), "fgsm_acc": float((pred["fgsm"] == y).float().mean()),
           "pgd_acc": float((pred["pgd"] == y).float().mean()),
           "targeted_success": float((pred["targeted"] == target).float().mean()),
           "md_success": float(ok.float().mean()), "md_mean_l2": float(norms[ok].mean()) if ok.any() else float("nan"),
           "md_median_l2": float(norms[ok].median()) if ok.any() else float("nan"),
           "max_linf_pgd": float((adv_pgd - x).abs().max())}
    if curve_count:
        out.update(robustness(ctx, curve_eps, curve_count, curve_steps, restarts, batch_size, minimal_search))
    return out


def robustness(ctx: Context, eps: Sequence[float], count: int, steps: int, restarts: int, batch_size: int, minimal_search: int) -> dict:
    """The robustness curve and the minimal L-infinity perturbation; writes ``robustness.md`` and the figure."""
    from cnnlab.io.files import write_text

    x, y, _ = cifar_test_images(count, ctx.data_dir, per_class=False)
    g = torch.Generator().manual_seed(ctx.seed)
    curves = A.robustness_curve(ctx.network, x, y, eps, ("fgsm", "pgd"), steps, restarts, batch_size, g, progress=ctx.progress)
    rows = A.curve_summary(curves, eps)
    chunks = range(0, len(x), int(batch_size))
    if ctx.progress:
        from cnnlab.io.progress import progress

        chunks = progress(chunks, "minimal L-inf perturbation")
    radius = torch.cat([A.minimal_linf(ctx.network, x[i:i + batch_size], y[i:i + batch_size], max(eps), minimal_search, steps,
                                       restarts, g) for i in chunks])
    correct = radius > 0
    median = float(radius[correct].median()) if correct.any() else float("nan")
    label = {"fgsm": "FGSM", "pgd": f"PGD-{steps}, {restarts} restart(s)"}
    lines = [f"# Robust accuracy against L-inf eps ({ctx.network.name}, {len(x)} CIFAR-10 test images)", "",
             "| attack | eps (/255) | robust accuracy | 95% CI (Wilson) | n |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {label[r['attack']]} | {r['eps_255']:g} | {r['accuracy']:.3f} | [{r['ci_low']:.3f}, {r['ci_high']:.3f}] | {r['n']} |" for r in rows]
    med = "not reached within eps_max" if median == float("inf") else f"{median * 255:.2f}/255"
    lines += ["", f"Median minimal L-inf perturbation (PGD bisection over eps, correctly classified points, n = {int(correct.sum())}): {med}."]
    write_text(ctx.out_dir / "robustness.md", "\n".join(lines) + "\n")
    title = f"Robust accuracy of {ctx.network.name}, {len(x)} CIFAR-10 test images (bands: 95% Wilson intervals)"
    ctx.save_figure("robustness_curve", _curve_figure(rows, label, median, title), caption="robust accuracy against L-inf eps")
    out = {f"robust/{r['attack']}/eps{r['eps_255']:g}": r["accuracy"] for r in rows}
    out.update({"curve_n": len(x), "curve_restarts": int(restarts), "curve_steps": int(steps),
                "median_min_linf_255": median * 255 if median != float("inf") else None,
                "min_linf_found": float((radius[correct] < float("inf")).float().mean()) if correct.any() else float("nan")})
    return out


def _curve_figure(rows: list[dict], label: dict, median: float, title: str = ""):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    for attack in dict.fromkeys(r["attack"] for r in rows):
        rs = [r for r in rows if r["attack"] == attack]
        e = [r["eps_255"] for r in rs]
        ax.plot(e, [r["accuracy"] for r in rs], marker="o", label=label[attack])
        ax.fill_between(e, [r["ci_low"] for r in rs], [r["ci_high"] for r in rs], alpha=0.2)
    if 0 < median < float("inf"):
        ax.axvline(median * 255, color="gray", linestyle="--", label=f"median minimal eps {median * 255:.2f}")
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlabel("L-inf eps (/255)")
    ax.set_ylabel("robust accuracy")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=9, wrap=True)
    fig.tight_layout()
    return fig


def fooling(ctx: Context, classes: Sequence | None = None, size: int | None = None, steps: int = 300, lr: float = 0.05,
            confidence: float = 0.99) -> dict:
    """Nguyen et al.: unrecognizable images classified as each class with >= ``confidence``."""
    ctx.network.single_label("viz=fooling")
    idx = ctx.class_indices(classes)
    imgs, conf, taken = A.fooling_images(ctx.network, torch.tensor(idx), _size(ctx, size), steps, lr, confidence,
                                         generator=torch.Generator().manual_seed(ctx.seed))
    names = [ctx.network.class_name(i) for i in idx]
    ctx.save("fooling", imgs, nrow=_cols(len(idx)), title=f"Fooling images for {ctx.network.name} (Nguyen et al.)",
             caption=f"noise optimized until the network gives each class >= {confidence:g} confidence; under each image: "
                     "the class it is taken for and the network's confidence",
             notes=[f"{n} {c:.3f}" for n, c in zip(names, conf.tolist())])
    return {"share_confident": float((conf >= confidence).float().mean()), "mean_confidence": float(conf.mean()),
            "mean_steps": float(taken.float().mean()), **{f"conf/{n}": float(c) for n, c in zip(names, conf)}}
