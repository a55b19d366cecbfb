"""``cnnlab-analyze``: understanding tools on any cnnlab checkpoint, with one self-contained HTML report.

    cnnlab-analyze ckpt=outputs/reference/supervised_cifar/checkpoints/last.ckpt       # every analysis
    cnnlab-analyze ckpt=<colorization run>/trunk.pt analysis=[filters,patches,color_units]
    cnnlab-analyze ckpt=... analysis=occlusion analyses.occlusion.patch=6 limit=2000

Writes ``analysis_*.png`` figures, ``report.html`` and ``analysis.json`` into the run dir, and the
figures to W&B (offline without credentials).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cnnlab.cli import hydra_main, instantiate, instantiate_group, resolve_device
from cnnlab.errors import UserError

log = logging.getLogger("cnnlab")


def check(cfg: DictConfig) -> None:
    """What ``cnnlab-analyze`` can refuse before any work."""
    if OmegaConf.is_missing(cfg, "ckpt") or not cfg.ckpt:
        raise UserError("no checkpoint given: pass ckpt=<run dir>/checkpoints/last.ckpt or ckpt=<run dir>/trunk.pt")
    resolve_device(cfg.device)


def build_datamodule(cfg: DictConfig, subject):
    """The configured data module, set to the checkpoint's colour space (and image size) unless told otherwise."""
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    if cfg.get("follow_checkpoint_data", True):
        data_cfg["color_space"] = subject.color_space
        if subject.image_size:
            data_cfg["image_size"] = int(subject.image_size)
    data_cfg["augment"] = []
    return instantiate(data_cfg)


def run(cfg: DictConfig) -> dict:
    """Run every analysis under ``cfg.analyses`` on ``cfg.ckpt``; returns ``{name: summary}``."""
    import torch

    from cnnlab.analysis.context import AnalysisContext
    from cnnlab.analysis.report import Report
    from cnnlab.analysis.runners import ORDER, RUNNERS
    from cnnlab.analysis.subject import load_subject
    from cnnlab.io.files import write_json
    from cnnlab.tracking import ensure_wandb_started, finish_wandb

    check(cfg)
    analyses = OmegaConf.to_container(cfg.get("analyses") or {}, resolve=True)
    unknown = [a for a in analyses if a not in RUNNERS]
    if unknown:
        raise UserError(f"unknown analysis {unknown}: choose from {ORDER} (analysis=[...])")
    if not analyses:
        raise UserError(f"no analysis selected: pass analysis=[{','.join(ORDER)}] or analysis=all")
    device = resolve_device(cfg.device)
    torch.manual_seed(int(cfg.seed or 0))
    out_dir = Path(cfg.paths.output_dir)
    subject = load_subject(cfg.ckpt)
    dm = build_datamodule(cfg, subject)
    loggers = ensure_wandb_started(instantiate_group(cfg.get("logger")))
    report = Report(f"cnnlab analyses: {Path(str(cfg.ckpt)).name}",
                    meta={"checkpoint": cfg.ckpt, "kind": f"{subject.method} ({'classifier' if subject.has_head else 'trunk only'})",
                          "backbone": subject.backbone.arch, "input": subject.color_space, "data": f"{dm.hparams.name} / {cfg.split}",
                          "analyses": ", ".join(a for a in ORDER if a in analyses)})
    ctx = AnalysisContext(subject, dm, out_dir, split=cfg.split, limit=cfg.get("limit"), batch_size=int(cfg.batch_size),
                          device=device, feature_cache_dir=cfg.get("feature_cache_dir"), loggers=loggers,
                          seed=int(cfg.seed or 0), report=report)
    summary = {}
    for name in ORDER:
        if name not in analyses:
            continue
        t0 = time.perf_counter()
        log.info("analysis %s", name)
        result = RUNNERS[name](ctx, **(analyses[name] or {}))
        summary[name] = {"seconds": round(time.perf_counter() - t0, 2),
                         **{k: v for k, v in result.items() if isinstance(v, (int, float, str, list, dict)) and k != "patches"}}
    path = report.write(out_dir / cfg.get("report_name", "report.html"))
    write_json(out_dir / "analysis.json", {"report": str(path), "figures": [str(p) for p in ctx.figures], "analyses": summary})
    log.info("report: %s", path)
    print(f"report: {path}")
    finish_wandb()
    return summary


@hydra_main("analyze", check=check)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
