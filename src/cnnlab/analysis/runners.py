"""One function per analysis: compute, draw, and add a captioned section to the report.

Each takes the :class:`~cnnlab.analysis.context.AnalysisContext` and the keyword arguments of its
``conf/analysis/<name>.yaml``.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from cnnlab.analysis import attribution as attr_mod
from cnnlab.analysis import color_units as cu
from cnnlab.analysis import embedding as emb
from cnnlab.analysis import faithfulness as faith
from cnnlab.analysis import filters as flt
from cnnlab.analysis import occlusion as occ
from cnnlab.analysis import patches as pt
from cnnlab.analysis import sanity as san
from cnnlab.analysis.context import AnalysisContext
from cnnlab.errors import UserError
from cnnlab.io.progress import progress as show_progress
from cnnlab.stats import mean_halfwidth
from cnnlab.tiles import enlarge, upscale


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _display_rgb(ctx: AnalysisContext, images: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float RGB for figures (what the model sees is described in captions)."""
    return images.float() / 255


# --------------------------------------------------------------------------------------------- filters
def run_filters(ctx: AnalysisContext, layer: str | None = None, higher_layers=(), max_out: int = 16, max_in: int = 16,
                scale: int = 8) -> dict:
    bb = ctx.subject
    name, conv = flt.find_conv(bb, layer)
    sec = ctx.section("filters", "Filters",
                      f"Weights of {name}, shape {tuple(conv.weight.shape)}: 0.5 gray is a zero weight; each filter is scaled on its own.")
    w = conv.weight
    if w.shape[1] in (1, 3):
        imgs = upscale(flt.first_layer_images(w), scale)
        ctx.save_figure(sec, "filters_first", imgs,
                        f"{name}: all {w.shape[0]} filters ({'RGB' if w.shape[1] == 3 else 'lightness'} input, {w.shape[2]}x{w.shape[3]} px)",
                        nrow=int(np.ceil(np.sqrt(w.shape[0]))))
    else:
        higher_layers = [layer, *higher_layers]
    for lay in higher_layers:
        lname, lconv = flt.find_conv(bb, lay)
        k = upscale(flt.kernel_images(lconv.weight, max_out, max_in), scale)
        n_in = min(max_in, lconv.weight.shape[1])
        ctx.save_figure(sec, f"filters_{lname.replace('.', '_')}", k,
                        f"{lname}: first {min(max_out, lconv.weight.shape[0])} output filters (rows) x first {n_in} input channels (columns)", nrow=n_in,
                        rows=[f"out {i}" for i in range(min(max_out, lconv.weight.shape[0]))], cols=[f"in {j}" for j in range(n_in)])
    return {"layer": name, "filters": int(w.shape[0])}


# --------------------------------------------------------------------------------------------- patches
def _units(units, channels: int) -> list[int]:
    if isinstance(units, int):
        return list(range(min(units, channels)))
    return [int(u) for u in units]


def run_patches(ctx: AnalysisContext, tap: str | None = None, units=8, k: int = 9) -> dict:
    bb = ctx.subject
    tap = ctx.tap_or_default(tap)
    size = ctx.images.shape[-1]
    channels = bb.layer_shapes([tap], size)[tap][0]
    unit_list = _units(units, channels)
    found = pt.mine_top_patches(bb, ctx.batches(), tap, unit_list, k=k, preprocess=ctx.preprocess, device=ctx.device,
                                progress=f"top patches {tap}", total=ctx.num_batches())
    rf = pt.receptive_field(bb, tap, size)
    sec = ctx.section("patches", "Maximally activating patches",
                      f"For units of {tap} (receptive field {rf.size} px, stride {rf.jump}): the {k} images of the {ctx.split} split "
                      f"({len(ctx.dataset())} images) where the unit's strongest response is largest, cropped to its receptive field.")
    grid = pt.patch_grid_images(found, ctx.images, rf.size, size)
    ctx.save_figure(sec, f"patches_{tap}", enlarge(grid, 48), f"{tap}: one row per unit, strongest first", nrow=k,
                    rows=[f"unit {u}" for u in unit_list], cols=[f"#{i + 1}" for i in range(k)])
    rows = [[u, *(f"{p.activation:.2f}" for p in found[u][:min(k, 5)])] for u in unit_list]
    sec.tables.append((["unit", *(f"#{i + 1}" for i in range(min(k, 5)))], rows))
    return {"tap": tap, "units": unit_list, "patches": found}


# --------------------------------------------------------------------------------------------- embedding
def run_embedding(ctx: AnalysisContext, tap: str | None = None, target_dims: int | None = None, max_points: int = 10000,
                  perplexity: float = 30, pca_dims: int = 50, max_iter: int = 1000, grid: int = 24, queries: int = 6,
                  neighbours: int = 8) -> dict:
    tap = ctx.tap_or_default(tap, where="last")
    feats = ctx.features(tap, target_dims)
    x, labels = feats[tap], feats["labels"].numpy()
    n = min(len(x), max_points)
    x_e, lab_e = x[:n], labels[:n]
    coords = emb.tsne_embed(x_e, perplexity=perplexity, pca_dims=pca_dims, seed=ctx.seed, max_iter=max_iter)
    k_purity = min(10, n - 1)  # a small limit can leave fewer points than 10 neighbours
    purity = emb.neighbour_purity(coords, lab_e, k=k_purity)
    penultimate = target_dims is None and tap == ctx.tap_or_default(None, "last")
    what = "penultimate (last tap, globally pooled)" if penultimate else f"{tap} pooled to ~{target_dims or 'C'} dims"
    sec = ctx.section("embedding", "Feature embedding (t-SNE)",
                      f"{n} {ctx.split} images, {what} features ({x.shape[1]} dims), PCA to {pca_dims} then t-SNE (perplexity {perplexity}). "
                      f"{k_purity}-NN label agreement in the embedding: {purity:.3f}.")
    classes = ctx.classes or [str(i) for i in range(int(lab_e.max()) + 1)]
    ctx.save_figure(sec, "embedding_scatter", emb.scatter_figure(coords, lab_e, classes, f"t-SNE of {tap} features"),
                    "t-SNE scatter coloured by true class")
    ctx.save_figure(sec, "embedding_mosaic", emb.mosaic(coords, ctx.images[:n], grid=grid),
                    f"the same embedding as an image mosaic: each of {grid}x{grid} cells shows the image nearest its centre")
    q_idx = ctx.sample_indices(queries)
    q_idx = q_idx[q_idx < n]
    neighbours = min(neighbours, n - 1)
    idx, sims = emb.nearest_neighbours(x_e, x_e[q_idx], k=neighbours + 1)
    tiles = torch.cat([ctx.images[idx[r]] for r in range(len(q_idx))]).float() / 255
    ctx.save_figure(sec, "embedding_neighbours", enlarge(tiles, 48),
                    f"nearest neighbours by cosine similarity of {tap} features: first column is the query, then its {neighbours} nearest", nrow=neighbours + 1,
                    cols=["query", *(f"{i + 1}" for i in range(neighbours))])
    return {"tap": tap, "coords": coords, "purity": purity}


# --------------------------------------------------------------------------------------------- occlusion
def _targets(ctx: AnalysisContext, model, x: torch.Tensor, labels: torch.Tensor, target: str) -> torch.Tensor:
    if target == "label":
        return labels.long().to(x.device)
    if target == "pred":
        with torch.no_grad():
            return model(x).argmax(1)
    raise UserError(f"target must be 'pred' or 'label', got {target!r}")


def _overlay(images: torch.Tensor, heat: torch.Tensor, alpha: float = 0.6) -> torch.Tensor:
    """RGB ``(B, 3, H, W)`` and ``(B, H, W)`` in [0, 1] -> a jet-coloured overlay."""
    cmap = _plt().get_cmap("jet")
    colour = torch.from_numpy(cmap(heat.numpy())[..., :3]).permute(0, 3, 1, 2).float()
    return (1 - alpha) * images + alpha * colour


def run_occlusion(ctx: AnalysisContext, images: int = 4, patch: int = 8, stride: int = 2, target: str = "pred",
                  output: str = "prob") -> dict:
    model = ctx.subject.classifier("occlusion").to(ctx.device)
    pick = ctx.sample_indices(images)
    imgs, labels = ctx.images[pick], ctx.labels[pick]
    if len(imgs) == 0:
        raise UserError("the dataset is empty: nothing to occlude")
    x = ctx.preprocess(imgs)
    tgt = _targets(ctx, model, x, labels, target)
    maps = occ.occlusion_map(model, x, tgt, patch=patch, stride=stride, fill=ctx.gray_fill().to(x.device), output=output,
                             progress="occlusion")
    size = tuple(x.shape[2:])
    heat = torch.stack([occ.occlusion_heatmap(m, size, patch, stride) for m in maps])
    with torch.no_grad():
        p0 = model(x).softmax(1).gather(1, tgt.view(-1, 1)).view(-1).cpu()
    names = [ctx.subject.class_name(int(t)) for t in tgt]
    sec = ctx.section("occlusion", "Occlusion sensitivity",
                      f"A {patch}x{patch} gray square slides with stride {stride}; the map shows the {output} of the target class "
                      f"({target}) with the square centred there (blue = low: the square hides evidence).")
    plt = _plt()
    fig, axes = plt.subplots(2, len(imgs), figsize=(2.2 * len(imgs), 4.6), dpi=110, squeeze=False)
    rgb = _display_rgb(ctx, imgs)
    for i in range(len(imgs)):
        axes[0, i].imshow(rgb[i].permute(1, 2, 0).numpy())
        axes[0, i].set_title(f"{target} {names[i]}: {output} {p0[i]:.2f}", fontsize=8)
        im = axes[1, i].imshow(heat[i].numpy(), cmap="jet", vmin=0, vmax=1 if output == "prob" else None)
        axes[1, i].set_title(f"occluded: min {maps[i].min():.2f}", fontsize=8)
        for a in axes[:, i]:
            a.axis("off")
    fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.8, label=f"{output} of the target class")
    ctx.save_figure(sec, "occlusion", fig, f"top: image, target class and its probability; bottom: class {output} with the occluder over each pixel")
    return {"maps": maps, "targets": tgt.cpu()}


# --------------------------------------------------------------------------------------------- attribution
def run_attribution(ctx: AnalysisContext, images: int = 4, methods=attr_mod.METHODS, target: str = "pred",
                    grad_cam_tap: str | None = None, ig_steps: int = 32, ig_baseline: float = 0.0) -> dict:
    model = ctx.subject.classifier("attribution").to(ctx.device)
    methods = list(methods)
    unknown = [m for m in methods if m not in attr_mod.METHODS]
    if unknown:
        raise UserError(f"unknown attribution method(s) {unknown}: choose from {list(attr_mod.METHODS)}")
    pick = ctx.sample_indices(images)
    imgs, labels = ctx.images[pick], ctx.labels[pick]
    x = ctx.preprocess(imgs)
    tgt = _targets(ctx, model, x, labels, target)
    cam_tap = ctx.tap_or_default(grad_cam_tap, where="last")
    rgb = _display_rgb(ctx, imgs)
    rows, results = [rgb], {}
    for m in show_progress(methods, f"attributions of {len(imgs)} images"):
        kw = {"layer": ctx.subject.layer(cam_tap)} if m == "grad_cam" else {"steps": ig_steps, "baseline": ig_baseline}
        a = attr_mod.attribute(model, x, tgt, m, **kw).cpu()
        results[m] = a
        if m in ("guided_backprop", "deconvnet") and a.shape[1] == 3:
            rows.append(attr_mod.to_image(a))
        else:
            rows.append(_overlay(rgb, attr_mod.to_heatmap(a)) if m == "grad_cam" else attr_mod.to_heatmap(a)[:, None].expand(-1, 3, -1, -1))
    names = ", ".join(f"{i}: {ctx.subject.class_name(int(t))}" for i, t in enumerate(tgt))
    sec = ctx.section("attribution", "Attributions (Captum)",
                      f"Rows: image, then {', '.join(methods)} for the target class ({target}: {names}). Saliency and integrated gradients "
                      f"show max |attribution| over channels; deconvnet and guided backprop are drawn around gray; Grad-CAM at {cam_tap}.")
    grid = torch.cat(rows)
    ctx.save_figure(sec, "attribution", enlarge(grid, 64), f"target class ({target}) above each column; Grad-CAM at {cam_tap}", nrow=len(imgs),
                    rows=["image", *methods], cols=[ctx.subject.class_name(int(t)) for t in tgt])
    return {"targets": tgt.cpu(), **results}


# --------------------------------------------------------------------------------------------- colour vs object units
def run_color_units(ctx: AnalysisContext, tap: str | None = None, top_cells: int = 500, colour_threshold: float = 0.5,
                    class_threshold: float = 0.3, show_units: int = 4, k: int = 8) -> dict:
    bb = ctx.subject
    tap = ctx.tap_or_default(tap)
    classes = ctx.classes
    num_classes = max(len(classes), int(ctx.labels.max()) + 1 if len(ctx.labels) else 0)
    stats = cu.unit_color_class_stats(bb, ctx.batches(), tap, num_classes, ctx.preprocess, top_cells=top_cells,
                                      device=ctx.device, progress=f"unit statistics {tap}", total=ctx.num_batches())
    cats = stats.categories(colour_threshold, class_threshold)
    counts = {c: int((cats == c).sum()) for c in ("colour", "object", "both", "neither")}
    sec = ctx.section("color_units", "Colour-specific vs object-specific units",
                      f"{len(cats)} units of {tap} ({ctx.subject.method} trunk, {ctx.subject.color_space} input) over {len(ctx.dataset())} images. "
                      f"Colour: hue consistency of the top {top_cells} cells >= {colour_threshold} with above-average chroma; "
                      f"object: class selectivity index >= {class_threshold}. Counts: {counts}.")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 5), dpi=110)
    sw = cu.unit_swatch_rgb(stats.top_ab)
    ax.scatter(stats.class_selectivity, stats.hue_consistency, c=sw, s=18, edgecolors="k", linewidths=0.3)
    ax.axhline(colour_threshold, color="gray", lw=0.6, ls="--")
    ax.axvline(class_threshold, color="gray", lw=0.6, ls="--")
    ax.set_xlabel("class selectivity index")
    ax.set_ylabel("hue consistency of top-activating cells")
    ax.set_title(f"{tap}: each dot a unit, drawn in its preferred colour", fontsize=9)
    ctx.save_figure(sec, "color_units_scatter", fig, "units by colour specificity (y) and class selectivity (x); dot colour = mean hue of the unit's top cells")
    colour_units = list(np.argsort(-(stats.hue_consistency * np.minimum(stats.chroma_ratio, 2)))[:show_units])
    object_units = list(np.argsort(-stats.class_selectivity)[:show_units])
    picked = [int(u) for u in colour_units + object_units]
    found = pt.mine_top_patches(bb, ctx.batches(), tap, picked, k=k, preprocess=ctx.preprocess, device=ctx.device,
                                progress=f"top patches {tap}", total=ctx.num_batches())
    rf = pt.receptive_field(bb, tap, ctx.images.shape[-1])
    grid = pt.patch_grid_images({u: found[u] for u in picked}, ctx.images, rf.size, ctx.images.shape[-1])
    ctx.save_figure(sec, "color_units_patches", enlarge(grid, 48),
                    f"top patches (in colour, though the trunk saw {ctx.subject.color_space}): first {len(colour_units)} rows the most colour-specific units "
                    f"{[int(u) for u in colour_units]}, then the most class-selective {[int(u) for u in object_units]}", nrow=k,
                    rows=[*(f"colour unit {u}" for u in colour_units), *(f"object unit {u}" for u in object_units)],
                    cols=[f"#{i + 1}" for i in range(k)])
    header = ["unit", "kind", "hue consistency", "chroma ratio", "corr(act, chroma)", "hue (deg)", "class selectivity", "preferred class"]
    rows = [[u, str(cats[u]), float(stats.hue_consistency[u]), float(stats.chroma_ratio[u]), float(stats.chroma_corr[u]),
             float(stats.mean_hue_deg[u]), float(stats.class_selectivity[u]), _class_name(classes, int(stats.preferred_class[u]))] for u in picked]
    sec.tables.append((header, rows))
    per_unit = {"hue_consistency": stats.hue_consistency, "chroma_ratio": stats.chroma_ratio, "chroma_corr": stats.chroma_corr,
                "mean_hue_deg": stats.mean_hue_deg, "class_selectivity": stats.class_selectivity,
                "preferred_class": stats.preferred_class, "category": cats}
    from cnnlab.io.files import write_json

    write_json(ctx.out_dir / f"color_units_{tap}.json", {k: np.asarray(v).tolist() for k, v in per_unit.items()})
    medians = {f"median_{k}": round(float(np.median(per_unit[k])), 3) for k in ("hue_consistency", "chroma_corr", "class_selectivity")}
    return {"tap": tap, "stats": stats, "categories": cats, "counts": counts, **medians}


def _class_name(classes: list[str], k: int) -> str:
    return classes[k] if 0 <= k < len(classes) else str(k)


# --------------------------------------------------------------------------------------------- faithfulness and sanity
def _explainers(ctx: AnalysisContext, model, methods, grad_cam_tap, ig_steps, ig_baseline, occlusion_patch,
                occlusion_stride, blur_sigma: float = 3.0) -> dict[str, faith.Explainer]:
    methods = faith.check_methods(methods)
    cam_tap = ctx.tap_or_default(grad_cam_tap, where="last")
    cam_layer = faith.module_name(model, ctx.subject.layer(cam_tap))
    fill = ctx.gray_fill().to(ctx.device)
    return {m: faith.Explainer(m, cam_layer, ig_steps, ig_baseline, occlusion_patch, occlusion_stride, fill, blur_sigma) for m in methods}


def _baseline_image(ctx: AnalysisContext, how: str, x: torch.Tensor, blur_sigma: float, mean: torch.Tensor | None) -> torch.Tensor:
    """The image pixels are replaced by (deletion) or start from (insertion), broadcastable to ``x``."""
    if how == "blur":
        return faith.blur(x, blur_sigma)
    if how == "zero":
        return torch.zeros(1, x.shape[1], 1, 1, device=x.device)
    if how == "gray":
        return ctx.gray_fill().to(x.device).view(1, -1, 1, 1)
    if how == "mean":
        return mean.to(x.device).view(1, -1, 1, 1)
    raise UserError(f"a baseline must be one of {list(_BASELINES)}, got {how!r}")


_BASELINES = ("zero", "gray", "mean", "blur")


def _dataset_mean(ctx: AnalysisContext) -> torch.Tensor:
    """Per-channel mean of the split ``(3,)`` in RGB, the space the analyses feed the subject in."""
    total, n = 0.0, 0
    for imgs, _ in ctx.batches():
        x = ctx.preprocess(imgs)
        total, n = total + x.sum((0, 2, 3)), n + x.shape[0] * x.shape[2] * x.shape[3]
    return (total / n).cpu()


def _log_metrics(ctx: AnalysisContext, metrics: dict[str, float]) -> None:
    from pytorch_lightning.loggers import WandbLogger

    from cnnlab.tracking import log_metrics

    log_metrics([lg for lg in ctx.loggers if isinstance(lg, WandbLogger)], metrics)


def run_faithfulness(ctx: AnalysisContext, images: int = 256, methods=faith.METHODS, target: str = "pred", steps: int = 32,
                     deletion_fill: str = "gray", insertion_start: str = "blur", blur_sigma: float = 3.0, reduce: str = "auto",
                     batch: int = 16, grad_cam_tap: str | None = None, ig_steps: int = 32, ig_baseline: float | str = "blur",
                     occlusion_patch: int = 8, occlusion_stride: int = 4) -> dict:
    model = ctx.subject.classifier("faithfulness").to(ctx.device)
    explainers = _explainers(ctx, model, methods, grad_cam_tap, ig_steps, ig_baseline, occlusion_patch, occlusion_stride, blur_sigma)
    if reduce not in ("auto", "sum", "abs"):
        raise UserError(f"reduce must be 'auto', 'sum' or 'abs', got {reduce!r}")
    for option, how in (("deletion_fill", deletion_fill), ("insertion_start", insertion_start)):
        if how not in _BASELINES:
            raise UserError(f"{option} must be one of {list(_BASELINES)}, got {how!r}")
    pick = ctx.sample_indices(images)
    mean = _dataset_mean(ctx) if "mean" in (deletion_fill, insertion_start) else None
    gen = torch.Generator().manual_seed(ctx.seed)
    orders = [*explainers, "random"]
    parts: dict[str, list] = {m: [] for m in orders}
    for s in show_progress(range(0, len(pick), batch), "deletion/insertion"):
        idx = pick[s:s + batch]
        x = ctx.preprocess(ctx.images[idx])
        tgt = _targets(ctx, model, x, ctx.labels[idx], target)
        end = _baseline_image(ctx, deletion_fill, x, blur_sigma, mean)
        start = _baseline_image(ctx, insertion_start, x, blur_sigma, mean)
        for m in orders:
            scores = torch.rand(x.shape[0], *x.shape[2:], generator=gen) if m == "random" else explainers[m].pixel_map(model, x, tgt, reduce)
            parts[m].append(faith.deletion_insertion(model, x, tgt, scores, end, start, steps, gen))
    curves = {m: faith.Curves(torch.cat([c.deletion for c in p]), torch.cat([c.insertion for c in p])) for m, p in parts.items()}
    aucs = {m: c.aucs() for m, c in curves.items()}
    n = len(pick)
    sec = ctx.section("faithfulness", "Deletion and insertion (faithfulness)",
                      f"{n} {ctx.split} images, target class: {target}. Pixels are ranked by each map (reduce={reduce}: "
                      f"saliency, deconvnet and guided backprop by max |attribution| over channels, integrated gradients by the "
                      f"signed channel sum, Grad-CAM and occlusion as they are) and moved in {steps} steps. Deletion replaces them "
                      f"by {deletion_fill} (lower area = more faithful); insertion starts from {insertion_start}"
                      f"{f' (sigma {blur_sigma} px)' if insertion_start == 'blur' else ''} and puts them back (higher area = more "
                      f"faithful). Random: a random pixel order. Integrated gradients start from {ig_baseline}"
                      f"{f' (sigma {blur_sigma} px)' if ig_baseline == 'blur' else ''}. ± is a 95% interval over the {n} images.")
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8), dpi=110)
    frac = np.linspace(0, 1, steps + 1)
    for ax, kind in zip(axes, ("deletion", "insertion")):
        for m in orders:
            c = getattr(curves[m], kind).mean(0).numpy()
            ax.plot(frac, c, "k--" if m == "random" else "-", label=f"{m} ({float(aucs[m][kind].mean()):.3f})", lw=1.4)
        ax.set_xlabel("fraction of pixels " + ("removed" if kind == "deletion" else "inserted"))
        ax.set_ylabel("target class probability")
        ax.set_title(f"{kind} ({'lower' if kind == 'deletion' else 'higher'} area is better)", fontsize=9)
        ax.legend(fontsize=7)
    ctx.save_figure(sec, "faithfulness_curves", fig, "mean curves over the images; the legend gives each area under the curve")
    rows, summary = [], {}
    for m in orders:
        d, dh = mean_halfwidth(aucs[m]["deletion"].double().tolist())
        i, ih = mean_halfwidth(aucs[m]["insertion"].double().tolist())
        rows.append([m, f"{d:.3f} ± {dh:.3f}", f"{i:.3f} ± {ih:.3f}"])
        summary[m] = {"deletion_auc": d, "deletion_ci": dh, "insertion_auc": i, "insertion_ci": ih}
    sec.tables.append((["ordering", "deletion AUC (lower is better)", "insertion AUC (higher is better)"], rows))
    _log_metrics(ctx, {f"faithfulness/{m}/{k}": v for m, s in summary.items() for k, v in s.items() if k.endswith("auc")})
    from cnnlab.io.files import write_json

    write_json(ctx.out_dir / "faithfulness.json", {"images": n, "split": ctx.split, "steps": steps, "deletion_fill": deletion_fill,
                                                   "insertion_start": insertion_start, "ig_baseline": ig_baseline, "auc": summary,
                                                   "per_image": {m: {k: v.tolist() for k, v in a.items()} for m, a in aucs.items()},
                                                   "curves": {m: {"deletion": c.deletion.mean(0).tolist(), "insertion": c.insertion.mean(0).tolist()}
                                                              for m, c in curves.items()}})
    return {"images": n, "auc": summary}


def _layer_label(ctx: AnalysisContext, model, name: str) -> str:
    """``0.stages.conv4_2.1`` -> ``conv4_2.1 BatchNorm2d`` (the stage name, and what was randomized)."""
    kind = type(model.get_submodule(name)).__name__
    for part, label in ((getattr(ctx.subject.backbone, "stages", None), ""), (ctx.subject.head, "head")):
        if part is None:
            continue
        prefix = faith.module_name(model, part)
        if name == prefix:
            return f"{label} {kind}"
        if name.startswith(prefix + "."):
            return f"{label}{'.' if label else ''}{name[len(prefix) + 1:]} {kind}"
    return f"{name} {kind}"


def run_sanity(ctx: AnalysisContext, images: int = 32, methods=faith.METHODS, target: str = "pred", seed: int = 0,
               draws: int = 5, max_layers: int | None = None, step: str = "layer", batch: int = 32, grad_cam_tap: str | None = None,
               ig_steps: int = 32, ig_baseline: float | str = 0.0, occlusion_patch: int = 8, occlusion_stride: int = 4) -> dict:
    model = ctx.subject.classifier("the sanity check").to(ctx.device)
    explainers = _explainers(ctx, model, methods, grad_cam_tap, ig_steps, ig_baseline, occlusion_patch, occlusion_stride)
    pick = ctx.sample_indices(images)
    x = ctx.preprocess(ctx.images[pick])
    tgt = _targets(ctx, model, x, ctx.labels[pick], target)  # the trained model's classes, kept for every depth
    groups = san.cascade_steps(model, san.cascade_layers(model, x[:1]), step)[:max_layers]
    layers = [name for g in groups for name in g]  # every module is randomized; maps are compared after each step
    ends = {g[-1] for g in groups}

    def maps(net, ex):
        att = torch.cat([ex.attribution(net, x[s:s + batch], tgt[s:s + batch]).cpu() for s in range(0, len(x), batch)])
        return faith.reduce_channels(att, "sum"), faith.reduce_channels(att, "abs")

    if draws < 1:
        raise UserError(f"draws must be at least 1, got {draws}")
    original = {m: maps(model, ex) for m, ex in explainers.items()}
    acc = {k: {m: torch.zeros(len(groups)) for m in explainers} for k in ("spearman", "spearman_abs", "ssim")}
    shown = {m: [original[m][1][0]] for m in explainers}  # abs maps of the first image at every depth (first draw)
    # one bar over every (draw, depth): its ETA is the section's
    bar = iter(show_progress(range(draws * len(groups)), f"cascading randomization ({draws} draws x {len(groups)} steps)"))
    for r in range(draws):  # independent re-initializations: one draw of a layer's weights can be a lucky one
        randomized = ((name, rand) for name, rand in san.cascading_randomization(model, layers, seed + 1000 * r) if name in ends)
        for j, (_, rand) in enumerate(randomized):
            next(bar, None)
            for m, ex in explainers.items():
                signed, absolute = maps(rand, ex)
                for k, v in san.map_similarity(*original[m], signed, absolute).items():
                    acc[k][m][j] += float(v.mean()) / draws
                if r == 0:
                    shown[m].append(absolute[0])
    next(bar, None)  # ends the bar
    scores = {k: {m: [1.0, *(round(float(v), 6) for v in acc[k][m])] for m in explainers} for k in acc}
    # a step's name: its layer, and the normalization randomized with it
    depth_names = ["(trained)", *(_layer_label(ctx, model, g[-1]) + "".join(f" + {type(model.get_submodule(n)).__name__}" for n in g[:-1])
                                  for g in groups)]
    sec = ctx.section("sanity", "Sanity check: cascading model randomization",
                      f"{len(x)} {ctx.split} images, target class ({target}) fixed from the trained model. The layers with parameters "
                      f"are re-initialized from the top ({layers[0]}) down, cumulatively ({len(layers)} modules in {len(groups)} steps, "
                      f"{'each layer with its normalization' if step == 'layer' else 'one module each'}; seed {seed}, "
                      f"mean of {draws} independent draw(s)); each column compares "
                      f"the maps with the trained model's by Spearman rank correlation (signed channel sum, and max |.| over channels) and SSIM "
                      f"of the |.| maps. Maps that stay similar while the network is destroyed do not explain the network.")
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2), dpi=110)
    for ax, (k, title) in zip(axes, (("spearman", "Spearman (signed)"), ("spearman_abs", "Spearman (absolute)"), ("ssim", "SSIM (absolute)"))):
        for m in explainers:
            ax.plot(range(len(depth_names)), scores[k][m], "o-", ms=3, label=m)
        ax.set_xticks(range(len(depth_names)), depth_names, rotation=90, fontsize=6)
        ax.set_ylim(-0.3 if k != "ssim" else -0.1, 1.05)
        ax.axhline(0, color="gray", lw=0.5)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("randomized down to", fontsize=8)
    axes[0].legend(fontsize=7)
    ctx.save_figure(sec, "sanity_curves", fig, "mean similarity to the trained model's maps after randomizing down to each layer")
    rgb = _display_rgb(ctx, ctx.images[pick[:1]])
    rows = []
    for m in explainers:
        t = torch.stack(shown[m])
        rows += [rgb, (t / t.flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1))[:, None].expand(-1, 3, -1, -1)]
    ctx.save_figure(sec, "sanity_maps", enlarge(torch.cat(rows), 48),
                    f"one row per method ({', '.join(explainers)}): the image, |map| of the trained model, then after randomizing "
                    f"down to each of the {len(groups)} steps (columns as in the curves)", nrow=len(depth_names) + 1,
                    rows=list(explainers), cols=["image", "trained", *(str(j + 1) for j in range(len(groups)))])
    for k in ("spearman_abs", "spearman", "ssim"):
        sec.tables.append(([f"{k}: randomized down to", *explainers],
                           [[d, *(scores[k][m][j] for m in explainers)] for j, d in enumerate(depth_names)]))
    _log_metrics(ctx, {f"sanity/{m}/{k}_fully_randomized": scores[k][m][-1] for k in scores for m in explainers})
    from cnnlab.io.files import write_json

    write_json(ctx.out_dir / "sanity.json", {"images": len(x), "layers": depth_names, "step": step, "seed": seed, "draws": draws,
                                                 "scores": scores})
    return {"images": len(x), "layers": depth_names, **scores}


RUNNERS = {
    "filters": run_filters, "patches": run_patches, "embedding": run_embedding, "occlusion": run_occlusion,
    "attribution": run_attribution, "color_units": run_color_units, "faithfulness": run_faithfulness, "sanity": run_sanity,
}
#: the report's order
ORDER = list(RUNNERS)


def check_analyses(analyses: dict) -> None:
    """Refuse unknown analysis names and an empty selection."""
    unknown = [a for a in analyses if a not in RUNNERS]
    if unknown:
        raise UserError(f"unknown analysis {unknown}: choose from {ORDER} (analysis=[...])")
    if not analyses:
        raise UserError(f"no analysis selected: pass analysis=[{','.join(ORDER)}] or analysis=all")


def run_all(ctx: AnalysisContext, analyses: dict[str, dict | None], report_name: str = "report.html") -> dict:
    """Run ``analyses`` (name -> keyword arguments) in the report's order, saying which runs and how long each took;
    write the report and ``analysis.json`` into the run dir. Returns ``{name: summary}`` (with ``seconds`` of wall
    clock and ``cpu_seconds`` of the process)."""
    import time

    from cnnlab.io.files import write_json

    check_analyses(analyses)
    log = logging.getLogger("cnnlab")
    summary = {}
    todo = [a for a in ORDER if a in analyses]
    for i, name in enumerate(todo, 1):
        t0, cpu0 = time.perf_counter(), time.process_time()
        log.info("analysis %d/%d: %s", i, len(todo), name)
        result = RUNNERS[name](ctx, **(analyses[name] or {}))
        # CPU time beside the wall clock: on a shared machine it is the part that does not depend on the load
        summary[name] = {"seconds": round(time.perf_counter() - t0, 2), "cpu_seconds": round(time.process_time() - cpu0, 2),
                         **{k: v for k, v in result.items() if isinstance(v, (int, float, str, list, dict)) and k != "patches"}}
        log.info("analysis %s done in %.0f s (%.0f s CPU)", name, summary[name]["seconds"], summary[name]["cpu_seconds"])
    path = ctx.report.write(ctx.out_dir / report_name)
    write_json(ctx.out_dir / "analysis.json", {"report": str(path), "figures": [str(p) for p in ctx.figures], "analyses": summary})
    log.info("report: %s", path)
    return summary
