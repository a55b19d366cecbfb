"""cnnlab's deletion/insertion AUCs and cascading-randomization correlations beside Quantus's on the same inputs.

    PYTHONPATH=src:../peers/faith python scripts/bench_faithfulness.py \\
        --ckpt outputs/reference/supervised_cifar/checkpoints/best_epoch005.ckpt --images 64 --out outputs/bench_faithfulness.json

Quantus (``pip install quantus``, the ``bench`` extra; not a runtime dependency) is given the very maps
cnnlab ranks pixels by (one channel per pixel, ``reduce=auto``), the same model, images, target classes
(the model's predictions) and gray fill:

* deletion: ``quantus.PixelFlipping`` (Bach et al. 2015: pixels in decreasing relevance replaced by a baseline),
  ``features_in_step`` = one cnnlab step; its curve lacks the unperturbed point, so the AUC is computed
  here on ``[p(x), *curve]`` with cnnlab's trapezoid over the fraction 0..1;
* insertion: the same metric started from the blurred image with a perturbation that copies the
  original pixels back (Quantus has no insertion metric);
* randomization: ``quantus.MPRT`` (cascading, top-down, Spearman of the absolute maps) with cnnlab's
  attribution as ``explain_func``, beside cnnlab's ``spearman_abs`` per randomized layer.

Prints one JSON object; ``--out`` saves it.
"""

from __future__ import annotations

import argparse
import copy
import time

import numpy as np
import torch

from cnnlab.data.sources import CIFAR10_ARCHIVE, data_file
from cnnlab.io.files import write_json


def quantus_auc(p0: np.ndarray, curve: np.ndarray) -> np.ndarray:
    """Quantus's curve ``(N, S)`` (after each step) with the unperturbed ``p0`` in front -> cnnlab's AUC ``(N,)``."""
    from cnnlab.analysis.faithfulness import curve_auc

    return curve_auc(torch.from_numpy(np.concatenate([p0[:, None], curve], axis=1))).numpy()


def insert_from(original: np.ndarray):
    """A Quantus perturbation that puts the ``original`` (N, F) features back at ``indices`` (insertion)."""

    def perturb(arr: np.ndarray, indices: np.ndarray, **_) -> np.ndarray:
        out = arr.copy()
        rows = np.arange(arr.shape[0])[:, None]
        out[rows, indices] = original[rows, indices]
        return out

    return perturb


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ckpt", default="outputs/reference/supervised_cifar/checkpoints/last.ckpt")
    ap.add_argument("--source", default=str(data_file(CIFAR10_ARCHIVE)))
    ap.add_argument("--data-dir", default="data")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--steps", type=int, default=48,
                    help="cnnlab steps; Quantus moves C*H*W/steps features a step, which must divide H*W (48: 64 of 3,072)")
    ap.add_argument("--sanity-images", type=int, default=16)
    ap.add_argument("--blur-sigma", type=float, default=3.0)
    ap.add_argument("--methods", default="saliency,deconvnet,guided_backprop,integrated_gradients,grad_cam,occlusion")
    ap.add_argument("--sanity-methods", default="saliency,guided_backprop,grad_cam")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import quantus

    from cnnlab.analysis import faithfulness as F
    from cnnlab.analysis import sanity as S
    from cnnlab.analysis.context import AnalysisContext
    from cnnlab.data import ImageDataModule
    from cnnlab.subject import load_subject

    torch.manual_seed(0)
    subject = load_subject(path=args.ckpt)
    dm = ImageDataModule(name="cifar10", source=args.source, data_dir=args.data_dir, augment=[], progress=False,
                         color_space=subject.color_space)
    ctx = AnalysisContext(subject, dm, "outputs/bench_faithfulness")
    model = subject.classifier("the benchmark")
    methods = args.methods.split(",")
    cam_layer = F.module_name(model, subject.layer(ctx.tap_or_default(None, where="last")))
    # as conf/analysis/faithfulness.yaml: integrated gradients from gray, 8-px occluder with stride 4
    explainers = {m: F.Explainer(m, cam_layer, ig_steps=32, ig_baseline=0.5, occlusion_stride=4, occlusion_fill=ctx.gray_fill())
                  for m in F.check_methods(methods)}
    pick = ctx.sample_indices(args.images)
    x = ctx.preprocess(ctx.images[pick])
    with torch.no_grad():
        probs = model(x).softmax(1)
    target = probs.argmax(1)
    p0 = probs.gather(1, target[:, None]).squeeze(1).numpy()
    gray = ctx.gray_fill().view(1, -1, 1, 1)
    assert torch.allclose(gray, torch.full_like(gray, 0.5)), "the scalar Quantus baseline below assumes RGB gray 0.5"
    blurred = F.blur(x, args.blur_sigma)
    c, h, w = x.shape[1:]
    per_step = c * h * w // args.steps
    xn, bn, yn = x.numpy(), blurred.numpy(), target.numpy()
    results: dict = {"images": len(x), "steps": args.steps, "fill": "gray 0.5", "blur_sigma": args.blur_sigma,
                     "ckpt": args.ckpt, "quantus": quantus.__version__, "faithfulness": {}, "sanity": {}}
    gen = torch.Generator().manual_seed(0)
    maps = {m: ex.pixel_map(model, x, target) for m, ex in explainers.items()}
    maps["random"] = torch.rand(len(x), h, w, generator=gen)
    for m, scores in maps.items():
        t0 = time.perf_counter()
        ours = F.deletion_insertion(model, x, target, scores, gray, blurred, args.steps, gen).aucs()
        t_ours = time.perf_counter() - t0
        a = scores[:, None].numpy()
        t0 = time.perf_counter()
        deletion = quantus.PixelFlipping(features_in_step=per_step, perturb_baseline=0.5, abs=False, normalise=False,
                                         disable_warnings=True)
        q_del = np.asarray(deletion(model=model, x_batch=xn, y_batch=yn, a_batch=a, softmax=True, device="cpu", batch_size=len(xn)))
        insertion = quantus.PixelFlipping(features_in_step=per_step, abs=False, normalise=False, disable_warnings=True,
                                          perturb_func=insert_from(xn.reshape(len(xn), -1)))
        q_ins = np.asarray(insertion(model=model, x_batch=bn, y_batch=yn, a_batch=a, softmax=True, device="cpu", batch_size=len(bn)))
        t_q = time.perf_counter() - t0
        with torch.no_grad():
            p_blur = model(blurred).softmax(1).gather(1, target[:, None]).squeeze(1).numpy()
        row = {"cnnlab_deletion": float(ours["deletion"].mean()), "quantus_deletion": float(quantus_auc(p0, q_del).mean()),
               "cnnlab_insertion": float(ours["insertion"].mean()), "quantus_insertion": float(quantus_auc(p_blur, q_ins).mean()),
               "cnnlab_s": round(t_ours, 2), "quantus_s": round(t_q, 2)}
        results["faithfulness"][m] = row
        print(m, row, flush=True)

    # cascading randomization: the same layers, Spearman of the absolute maps
    xs, ys = x[: args.sanity_images], target[: args.sanity_images]
    layers = S.cascade_layers(model, xs[:1])
    for m in args.sanity_methods.split(","):
        ex = explainers[m]

        def explain(model, inputs, targets, **_):
            att = ex.attribution(model, torch.as_tensor(inputs), torch.as_tensor(targets).long())
            return F.reduce_channels(att, "abs")[:, None].detach().cpu().numpy()

        a0 = explain(model, xs.numpy(), ys.numpy())
        t0 = time.perf_counter()
        ours = [float(S.spearman(torch.from_numpy(a0[:, 0]), torch.from_numpy(explain(r, xs.numpy(), ys.numpy())[:, 0])).mean())
                for _, r in S.cascading_randomization(model, layers, seed=0)]
        t_ours = time.perf_counter() - t0
        # Quantus draws every layer after torch.manual_seed(seed + 1): the same draws through cnnlab's randomize_module
        same_draws, rand = [], copy.deepcopy(model)
        for name in layers:
            S.randomize_module(rand.get_submodule(name), 43)
            same_draws.append(float(S.spearman(torch.from_numpy(a0[:, 0]), torch.from_numpy(explain(rand, xs.numpy(), ys.numpy())[:, 0])).mean()))
        t0 = time.perf_counter()
        mprt = quantus.MPRT(layer_order="top_down", seed=42, abs=True, normalise=True, disable_warnings=True)
        q = mprt(model=model, x_batch=xs.numpy(), y_batch=ys.numpy(), a_batch=a0, explain_func=explain, device="cpu",
                 batch_size=len(xs))
        t_q = time.perf_counter() - t0
        q_layers = [k for k in q if k != "original"]
        results["sanity"][m] = {"layers": layers, "quantus_layers": q_layers, "cnnlab_spearman_abs": ours, "cnnlab_quantus_draws": same_draws,
                                "quantus_mprt": [float(np.mean(q[k])) for k in q_layers],
                                # scipy's Spearman of a constant map (Grad-CAM's all-zero ReLU) is NaN; cnnlab counts it as 0
                                "quantus_mprt_nanmean": [float(np.nanmean(q[k])) for k in q_layers],
                                "quantus_nan_images": [int(np.isnan(q[k]).sum()) for k in q_layers],
                                "quantus_original": float(np.mean(q["original"])), "cnnlab_s": round(t_ours, 2), "quantus_s": round(t_q, 2)}
        print(m, {k: v for k, v in results["sanity"][m].items() if "layers" not in k}, flush=True)
    import json

    print(json.dumps(results))
    if args.out:
        write_json(args.out, results)


if __name__ == "__main__":
    main()
