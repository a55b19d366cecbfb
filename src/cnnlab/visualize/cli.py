"""``cnnlab-visualize``: run one configured visualization or attack (``python -m cnnlab.visualize``).

    cnnlab-visualize                                       # class models of the reference CIFAR-10 classifier
    cnnlab-visualize viz=style viz.style_image=<painting>  # neural style
    cnnlab-visualize viz=inversion network.trunk=<trunk.pt> viz.layers=[conv2_1,conv3_1]
    cnnlab-visualize viz=deepdream network.arch=vgg16 network.weights=<vgg16.pth> viz.layer=conv4_3
    cnnlab-visualize network.arch=resnet50 list_layers=true    # any torchvision classifier: its layer names
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from cnnlab.cli import hydra_main, instantiate, instantiate_group, resolve_device
from cnnlab.config import print_config_tree
from cnnlab.errors import UserError
from cnnlab.reference import CLASSIFIER, require_file

# torch, Lightning and W&B are imported inside run(): a config mistake is reported in a second

log = logging.getLogger("cnnlab")


#: the options that name a network, for the errors that ask for one
NETWORK_OPTIONS = ("inspect another network: network.checkpoint=<run>/checkpoints/best.ckpt, network.trunk=<run>/trunk.pt "
                   "or network.arch=<torchvision model> (e.g. network.arch=resnet18)")


def check(cfg: DictConfig) -> None:
    """What ``cnnlab-visualize`` refuses before the run dir exists; ``list_layers=true`` lists them here and exits,
    so a listing leaves no run dir behind."""
    resolve_device(cfg.get("device", "auto"))
    net = cfg.network
    if net.get("trunk"):
        require_file("network.trunk", net.trunk, CLASSIFIER, NETWORK_OPTIONS)
    elif not net.get("arch"):
        if not net.get("checkpoint"):
            raise UserError(f"no network given: {NETWORK_OPTIONS}")
        require_file("network.checkpoint", net.checkpoint, CLASSIFIER, NETWORK_OPTIONS)
    if cfg.get("list_layers"):
        print(build_network(net).describe_layers())
        raise SystemExit(0)


def build_network(cfg: DictConfig):
    """The :class:`~cnnlab.subject.Subject` of ``cfg.network``; an explicit trunk or torchvision arch replaces the default checkpoint."""
    from cnnlab.subject import load_subject

    net = dict(OmegaConf.to_container(cfg, resolve=True))
    if net.get("trunk") or net.get("arch"):
        net["checkpoint"] = None
    return load_subject(**net)


def run(cfg: DictConfig) -> dict:
    """Build the network and loggers, run ``cfg.viz``, write ``metrics.json``; returns the metrics."""
    import pytorch_lightning as pl
    import torch

    from cnnlab.io.files import write_json
    from cnnlab.tracking import ensure_wandb_started, finish_wandb
    from cnnlab.visualize.experiments import Context

    warnings.filterwarnings("ignore", message=".*module\\(s\\) in eval mode.*")
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    out_dir = Path(cfg.paths.output_dir)
    if cfg.get("threads"):
        torch.set_num_threads(int(cfg.threads))
    if cfg.get("seed") is not None:
        pl.seed_everything(int(cfg.seed), workers=True, verbose=False)
    print_config_tree(cfg, order=("viz", "network", "logger", "paths"), save_to=out_dir / "config_tree.log")
    network = build_network(cfg.network)
    if cfg.get("list_layers"):
        print(network.describe_layers())
        return {}
    loggers = ensure_wandb_started(instantiate_group(cfg.get("logger")))
    experiment = instantiate(cfg.viz, _convert_="all")
    ctx = Context(network=network, out_dir=out_dir, loggers=loggers, data_dir=str(cfg.paths.data_dir),
                  seed=int(cfg.get("seed") or 0), progress=bool(cfg.get("progress", True)), device=resolve_device(cfg.get("device", "auto")))
    metrics = experiment(ctx)
    metrics = {"network": network.name, **metrics}
    write_json(out_dir / "metrics.json", metrics)
    ctx.log_metrics(metrics)
    for k, v in metrics.items():
        log.info("%s: %s", k, f"{v:.4g}" if isinstance(v, float) else v)
    finish_wandb()
    return metrics


@hydra_main("visualize", check=check)
def main(cfg: DictConfig) -> None:
    run(cfg)


if __name__ == "__main__":
    main()
