"""``cnnlab-analyze``: understanding tools on any cnnlab checkpoint, with one self-contained HTML report.

    cnnlab-analyze                                                                   # every analysis of the reference classifier
    cnnlab-analyze limit=100                                                         # the same on 100 test images (minutes)
    cnnlab-analyze ckpt=<colorization run>/trunk.pt analysis=[filters,patches,color_units]
    cnnlab-analyze ckpt=... analysis=occlusion analyses.occlusion.patch=6 limit=2000
    cnnlab-analyze network.arch=resnet50 network.weights=<resnet50.pth> network.image_size=96 analysis=[attribution]
    cnnlab-analyze network.arch=resnet50 list_layers=true                               # the layer names to pick from

Writes ``analysis_*.png`` figures, ``report.html`` and ``analysis.json`` into the run dir, and the
figures to W&B (offline without credentials).
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cnnlab.cli import hydra_main, instantiate, instantiate_group, resolve_device
from cnnlab.errors import UserError
from cnnlab.reference import CLASSIFIER, is_reference, require_file

log = logging.getLogger("cnnlab")


#: the options that name a network, for the errors that ask for one
NETWORK_OPTIONS = ("analyse another network: ckpt=<run dir>/checkpoints/best.ckpt, ckpt=<run dir>/trunk.pt "
                   "or network.arch=<torchvision model> (e.g. network.arch=resnet18)")


def _network(cfg: DictConfig) -> tuple[str | None, dict]:
    """``(checkpoint path or None, network options)``: the network to inspect; ``network.arch`` replaces the
    default checkpoint (the reference classifier)."""
    network = OmegaConf.to_container(cfg.get("network") or {}, resolve=True)
    ckpt = None if OmegaConf.is_missing(cfg, "ckpt") else cfg.ckpt
    if network.get("arch") and is_reference(ckpt, CLASSIFIER):
        ckpt = None
    return ckpt or None, network


def check(cfg: DictConfig) -> None:
    """What ``cnnlab-analyze`` can refuse before any work (before the run dir exists); ``list_layers=true``
    lists them here and exits, so a listing leaves no run dir behind."""
    ckpt, network = _network(cfg)
    if not ckpt and not network.get("arch"):
        raise UserError(f"no checkpoint given: {NETWORK_OPTIONS}")
    if ckpt and network.get("arch"):
        raise UserError(f"both ckpt={ckpt} and network.arch={network['arch']} given: pass one network")
    require_file("ckpt", ckpt, CLASSIFIER, NETWORK_OPTIONS)
    resolve_device(cfg.device)
    if cfg.get("split", "test") not in SPLITS:
        raise UserError(f"split must be one of {list(SPLITS)}, got {cfg.split!r} (val to choose settings, test to report)")
    if cfg.get("list_layers"):
        from cnnlab.subject import load_subject

        print(load_subject(path=ckpt, **network).describe_layers())
        raise SystemExit(0)


#: the splits an analysis can read; ``val`` is the training run's held-out split (see ``build_datamodule``)
SPLITS = ("test", "val", "train")


def build_datamodule(cfg: DictConfig, subject):
    """The configured data module at the network's image size unless told otherwise.

    With ``split=val`` on a checkpoint that records its data split (same dataset), the validation split is the
    one that run held out (its ``val_fraction`` and ``split_seed``), so choices made on it never saw training images.
    Analyses read its uint8 RGB images; the subject converts them to the colour space its model takes.
    """
    data_cfg = OmegaConf.to_container(cfg.data, resolve=True)
    follow = cfg.get("follow_checkpoint_data", True)
    if follow and subject.image_size:
        data_cfg["image_size"] = int(subject.image_size)
    trained = subject.data_split
    if cfg.get("split") == "val" and follow and trained and trained["name"] == data_cfg.get("name"):
        for key in ("val_fraction", "split_seed"):
            if data_cfg.get(key) != trained[key]:
                log.info("split=val: data.%s=%s as the checkpoint's run held out (not %s)", key, trained[key], data_cfg.get(key))
                data_cfg[key] = trained[key]
    elif cfg.get("split") == "val" and subject.data_split is None:
        log.warning("split=val: %s does not record its data split; the val images are data.val_fraction=%s, "
                    "data.split_seed=%s of %s", subject.source, data_cfg.get("val_fraction"), data_cfg.get("split_seed"),
                    data_cfg.get("name"))
    if cfg.get("split") == "val" and not data_cfg.get("val_fraction"):
        raise UserError("split=val but data.val_fraction is 0: there is no validation split; set data.val_fraction "
                        "(the training run's value) or analyse split=test")
    data_cfg["augment"] = []
    return instantiate(data_cfg)


def run(cfg: DictConfig) -> dict:
    """Run every analysis under ``cfg.analyses`` on the configured network; returns ``{name: summary}``."""
    import torch

    from cnnlab.analysis.context import AnalysisContext
    from cnnlab.analysis.report import Report
    from cnnlab.analysis.runners import ORDER, check_analyses, run_all
    from cnnlab.subject import load_subject
    from cnnlab.tracking import ensure_wandb_started, finish_wandb

    check(cfg)
    analyses = OmegaConf.to_container(cfg.get("analyses") or {}, resolve=True)
    check_analyses(analyses)
    device = resolve_device(cfg.device)
    torch.manual_seed(int(cfg.seed or 0))
    out_dir = Path(cfg.paths.output_dir)
    ckpt, network = _network(cfg)
    subject = load_subject(path=ckpt, **network)
    if cfg.get("list_layers"):
        print(subject.describe_layers())
        return {}
    subject.single_label("cnnlab-analyze")
    dm = build_datamodule(cfg, subject)
    if dm.multilabel:
        raise UserError(f"cnnlab-analyze reads single-label data, but data={dm.hparams.name} has several labels per "
                        "image: choose single-label data (data=cifar10, data=imagefolder data.source=<folder>)")
    loggers = ensure_wandb_started(instantiate_group(cfg.get("logger")))
    report = Report(f"cnnlab analyses: {Path(str(ckpt)).name if ckpt else subject.name}",
                    meta={"checkpoint": ckpt or subject.source, "kind": f"{subject.method} ({'classifier' if subject.has_logits else 'trunk only'})",
                          "backbone": subject.arch, "input": subject.color_space, "data": f"{dm.hparams.name} / {cfg.split}",
                          "analyses": ", ".join(a for a in ORDER if a in analyses)})
    ctx = AnalysisContext(subject, dm, out_dir, split=cfg.split, limit=cfg.get("limit"), batch_size=int(cfg.batch_size),
                          device=device, feature_cache_dir=cfg.get("feature_cache_dir"), loggers=loggers,
                          seed=int(cfg.seed or 0), report=report)
    summary = run_all(ctx, analyses, cfg.get("report_name", "report.html"))
    print(f"report: {out_dir / cfg.get('report_name', 'report.html')}")
    finish_wandb()
    return summary


@hydra_main("analyze", check=check)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
