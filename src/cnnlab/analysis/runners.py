"""One function per analysis: compute, draw, and add a captioned section to the report.

Each takes the :class:`~cnnlab.analysis.context.AnalysisContext` and the keyword arguments of its
``conf/analysis/<name>.yaml``.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from cnnlab.analysis import attribution as attr_mod
from cnnlab.analysis import color_units as cu
from cnnlab.analysis import embedding as emb
from cnnlab.analysis import filters as flt
from cnnlab.analysis import occlusion as occ
from cnnlab.analysis import patches as pt
from cnnlab.analysis.context import AnalysisContext
from cnnlab.errors import UserError
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
    sec = ctx.section("filters", "Filters", f"Weights of {name}, shape {tuple(conv.weight.shape)}: 0.5 gray is a zero weight; each filter is scaled on its own.")
    w = conv.weight
    if w.shape[1] in (1, 3):
        imgs = upscale(flt.first_layer_images(w), scale)
        ctx.save_figure(sec, "filters_first", imgs, f"{name}: all {w.shape[0]} filters ({'RGB' if w.shape[1] == 3 else 'lightness'} input, {w.shape[2]}x{w.shape[3]} px)",
                        nrow=int(np.ceil(np.sqrt(w.shape[0]))))
    else:
        higher_layers = [layer, *higher_layers]
    for lay in higher_layers:
        lname, lconv = flt.find_conv(bb, lay)
        k = upscale(flt.kernel_images(lconv.weight, max_out, max_in), scale)
        n_in = min(max_in, lconv.weight.shape[1])
        ctx.save_figure(sec, f"filters_{lname.replace('.', '_')}", k,
                        f"{lname}: first {min(max_out, lconv.weight.shape[0])} output filters (rows) x first {n_in} input channels (columns)", nrow=n_in)
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
    ctx.save_figure(sec, f"patches_{tap}", enlarge(grid, 48), f"{tap}: one row per unit ({unit_list}), strongest first", nrow=k)
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
    purity = emb.neighbour_purity(coords, lab_e, k=10)
    what = "penultimate (last tap, globally pooled)" if target_dims is None and tap == ctx.tap_or_default(None, "last") else f"{tap} pooled to ~{target_dims or 'C'} dims"
    sec = ctx.section("embedding", "Feature embedding (t-SNE)",
                      f"{n} {ctx.split} images, {what} features ({x.shape[1]} dims), PCA to {pca_dims} then t-SNE (perplexity {perplexity}). "
                      f"10-NN label agreement in the embedding: {purity:.3f}.")
    classes = ctx.classes or [str(i) for i in range(int(lab_e.max()) + 1)]
    ctx.save_figure(sec, "embedding_scatter", emb.scatter_figure(coords, lab_e, classes, f"t-SNE of {tap} features"),
                    "t-SNE scatter coloured by true class")
    ctx.save_figure(sec, "embedding_mosaic", emb.mosaic(coords, ctx.images[:n], grid=grid),
                    f"the same embedding as an image mosaic: each of {grid}x{grid} cells shows the image nearest its centre")
    q_idx = ctx.sample_indices(queries)
    q_idx = q_idx[q_idx < n]
    idx, sims = emb.nearest_neighbours(x_e, x_e[q_idx], k=neighbours + 1)
    tiles = torch.cat([ctx.images[idx[r]] for r in range(len(q_idx))]).float() / 255
    ctx.save_figure(sec, "embedding_neighbours", enlarge(tiles, 48),
                    f"nearest neighbours by cosine similarity of {tap} features: first column is the query, then its {neighbours} nearest", nrow=neighbours + 1)
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
    maps = occ.occlusion_map(model, x, tgt, patch=patch, stride=stride, fill=0.5, output=output)
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
        axes[0, i].set_title(f"{names[i]} p={p0[i]:.2f}", fontsize=8)
        im = axes[1, i].imshow(heat[i].numpy(), cmap="jet", vmin=0, vmax=1 if output == "prob" else None)
        axes[1, i].set_title(f"min {maps[i].min():.2f}", fontsize=8)
        for a in axes[:, i]:
            a.axis("off")
    fig.colorbar(im, ax=axes[1, :].tolist(), shrink=0.8)
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
    for m in methods:
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
    ctx.save_figure(sec, "attribution", enlarge(grid, 64), f"rows: image, {', '.join(methods)}", nrow=len(imgs))
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
                    f"{[int(u) for u in colour_units]}, then the most class-selective {[int(u) for u in object_units]}", nrow=k)
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


RUNNERS = {
    "filters": run_filters, "patches": run_patches, "embedding": run_embedding, "occlusion": run_occlusion,
    "attribution": run_attribution, "color_units": run_color_units,
}
#: the report's order
ORDER = list(RUNNERS)
