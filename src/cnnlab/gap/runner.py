"""Orchestration of the gap experiment: plan the arms, run what is not done, report."""

from __future__ import annotations

import logging
import platform
import shlex
import sys
import time
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab.backbones import load_trunk, save_trunk
from cnnlab.io.files import write_json
from cnnlab.errors import UserError
from cnnlab.features import state_fingerprint
from cnnlab.gap import arms as A
from cnnlab.gap.report import log_to_wandb, markdown_tables, summarize, write_report
from cnnlab.probes import calibrate_batchnorm, check_trunk_matches, probe_trunk_cached

log = logging.getLogger("cnnlab.gap")

# keys of the data config the gap sets per arm (or that only make sense in this process)
_DATA_SKIP = ("_target_", "data_dir", "label_seed", "shuffle_seed", "label_fraction")


def validate(cfg: DictConfig) -> None:
    """Bad settings fail in one line before any arm runs."""
    inits = list(cfg.inits)
    bad = [i for i in inits if i not in A.INITS]
    if bad or not inits:
        raise UserError(f"unknown init(s) {bad or inits}: inits must be a subset of {list(A.INITS)}")
    if not list(cfg.seeds):
        raise UserError("seeds is empty: give at least one, e.g. seeds=[0,1]")
    for f in cfg.label_fractions:
        if not isinstance(f, (int, float)) or not 0.0 < float(f) <= 1.0:
            raise UserError(f"label fraction {f} is outside (0, 1]: use e.g. label_fractions=[0.01,0.1,1.0]")
    if cfg.data.color_space not in ("L", "gray"):
        raise UserError(f"data.color_space={cfg.data.color_space}: every arm must see one lightness channel "
                        "(a colorization trunk cannot take colour), set data.color_space=L")
    if cfg.probe.mode not in ("cached", "lightning"):
        raise UserError(f"probe.mode={cfg.probe.mode}: choose cached or lightning")
    if cfg.probe.taps:
        hydra.utils.instantiate(cfg.backbone).check_taps(list(cfg.probe.taps))  # unknown tap: one line now, not after pretraining
    conf_dir = Path(cfg.paths.root_dir) / "conf"
    for init in inits:
        if init == "random":
            continue
        for o in cfg.pretrain[init].overrides:
            if str(o).startswith("experiment="):
                name = str(o).split("=", 1)[1]
                if not (conf_dir / "experiment" / f"{name}.yaml").is_file():
                    raise UserError(f"the {init} pretraining needs experiment={name} (conf/experiment/{name}.yaml), which does not exist: "
                                    f"add it, or leave {init} out (inits=[...])")


def shared_overrides(cfg: DictConfig, choices: dict, seed: int, name: str, with_backbone: bool = True) -> list[str]:
    """What every cnnlab-train arm shares: the same data (colour space included) and backbone, a seed, tags."""
    data = OmegaConf.to_container(cfg.data, resolve=True)
    out = [f"data={choices['data']}", *A.flatten_overrides("data", data, skip=_DATA_SKIP),
           f"paths.data_dir={A.format_value(str(cfg.paths.data_dir))}"]
    if with_backbone:
        bb = OmegaConf.to_container(cfg.backbone, resolve=True)
        out += [f"backbone={choices['backbone']}", *A.flatten_overrides("backbone", bb, skip=("_target_", "in_channels"))]
    out += [f"seed={seed}", f"task_name={name}", f"tags={A.format_value(['gap', str(cfg.budget_name)])}"]
    return out + [str(o) for o in cfg.train_overrides]


def arm_command(cfg: DictConfig, choices: dict, arm: A.Arm, trunk: Path | None, arch: str = "") -> list[str]:
    """The cnnlab-train overrides of a subprocess arm (empty for in-process arms)."""
    if arm.kind == "trunk":
        if arm.init == "random":
            return []
        return shared_overrides(cfg, choices, arm.seed, arm.name) + [str(o) for o in cfg.pretrain[arm.init].overrides]
    if arm.kind == "probe":
        if cfg.probe.mode == "cached":
            return []
        return shared_overrides(cfg, choices, arm.seed, arm.name) + [
            "model=linear_probe", f"model.trunk={A.format_value(str(trunk))}", f"model.taps={A.format_value(list(cfg.probe.taps) if cfg.probe.taps else None)}",
            f"model.target_dims={A.format_value(cfg.probe.target_dims)}", f"model.expect_arch={arch}",
            *[str(o) for o in cfg.probe.overrides]]
    return shared_overrides(cfg, choices, arm.seed, arm.name, with_backbone=False) + [
        "backbone=trunk", f"backbone.path={A.format_value(str(trunk))}", f"data.label_fraction={arm.fraction!r}",
        *[str(o) for o in cfg.finetune.overrides]]


def _arch(cfg: DictConfig) -> tuple[str, dict]:
    backbone = hydra.utils.instantiate(cfg.backbone)
    return backbone.arch, dict(backbone.arch_kwargs)


def _device(name: str) -> str:
    return ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name


class Runner:
    def __init__(self, cfg: DictConfig, out_dir: Path, choices: dict):
        self.cfg, self.root, self.choices = cfg, Path(out_dir), choices
        self.arch, self.arch_kwargs = _arch(cfg)
        self._fp: dict[str, str] = {}
        self._dm = None
        self.timings: dict[str, dict] = {}

    # --------------------------------------------------------------------------- helpers
    def trunk_path(self, arm: A.Arm) -> Path:
        return self.root / "arms" / arm.trunk_arm / "trunk.pt"

    def fingerprint(self, path: Path) -> str:
        key = f"{path}:{path.stat().st_mtime_ns}"
        if key not in self._fp:
            backbone, meta = load_trunk(path)
            check_trunk_matches(meta, path, arch=self.arch, arch_kwargs=self.arch_kwargs, color_space=self.cfg.data.color_space)
            self._fp[key] = state_fingerprint(backbone)
        return self._fp[key]

    def key(self, arm: A.Arm) -> tuple[str | None, list[str], str | None]:
        """``(key, command, trunk fingerprint)``; the key is None while the arm's trunk does not exist yet."""
        trunk = self.trunk_path(arm) if arm.kind != "trunk" else None
        if trunk is not None and not trunk.is_file():
            return None, [], None
        fp = self.fingerprint(trunk) if trunk is not None else None
        cmd = arm_command(self.cfg, self.choices, arm, trunk, self.arch)
        extra = {"random": OmegaConf.to_container(self.cfg.backbone, resolve=True),
                 "calibrate": self.cfg.random_init.calibrate_batches} if arm.kind == "trunk" and arm.init == "random" else {}
        if arm.kind == "probe" and self.cfg.probe.mode == "cached":
            extra = {"probe": OmegaConf.to_container(self.cfg.probe, resolve=True),
                     "data": OmegaConf.to_container(self.cfg.data, resolve=True)}
        return A.arm_key(arm, cmd, fp, extra), cmd, fp

    def datamodule(self):
        if self._dm is None:
            self._dm = hydra.utils.instantiate(self.cfg.data, label_fraction=1.0, progress=False)
        return self._dm

    # --------------------------------------------------------------------------- running one arm
    def run_arm(self, arm: A.Arm, key: str, cmd: list[str], fp: str | None) -> None:
        d = A.fresh_dir(arm, self.root)
        t0 = time.time()
        extra = {}
        if arm.kind == "trunk" and arm.init == "random":
            torch.manual_seed(int(arm.seed))
            backbone = hydra.utils.instantiate(self.cfg.backbone)
            n_cal = 0
            if self.cfg.random_init.calibrate_batches:
                dm = self.datamodule()
                dm.setup()
                n_cal = calibrate_batchnorm(backbone, dm.loader("train", batch_size=256), lambda u: dm.preprocess(u, train=False),
                                            max_batches=int(self.cfg.random_init.calibrate_batches))
            save_trunk(d / "trunk.pt", backbone, self.cfg.data.color_space, "random",
                       {"seed": int(arm.seed), "bn_calibration_images": n_cal})
        elif arm.kind == "probe" and self.cfg.probe.mode == "cached":
            p = self.cfg.probe
            res = probe_trunk_cached(self.trunk_path(arm), self.datamodule(), taps=list(p.taps) if p.taps else None,
                                     target_dims=p.target_dims, cache_dir=d, keep_cache=p.keep_cache, expect_arch=self.arch,
                                     expect_arch_kwargs=self.arch_kwargs, device=_device(p.device), progress=sys.stdout.isatty(),
                                     epochs=p.epochs, batch_size=p.batch_size, lr=p.lr, weight_decay=p.weight_decay, seed=int(arm.seed))
            metrics = {f"test/acc/{t}": a for t, a in res["test"].items()} | {f"train/acc/{t}": a for t, a in res["train"].items()}
            metrics["test/acc"] = max(res["test"].values())
            write_json(d / "metrics.json", metrics)
            write_json(d / "probe.json", res)
        else:
            A.run_train(arm, A.train_command(cmd, d), d, self.cfg.get("threads"))
            if arm.kind == "trunk":
                self.fingerprint(d / "trunk.pt")  # wrong architecture or input type: a clear error now
        mark_extra = {"trunk_fingerprint": fp, **extra}
        A.mark_done(arm, self.root, key, time.time() - t0, mark_extra)

    # --------------------------------------------------------------------------- results
    def collect(self, arms: list[A.Arm]) -> tuple[dict, dict, list[str]]:
        import json

        probe: dict = {}
        finetune: dict = {}
        taps: list[str] = []
        for arm in arms:
            if arm.kind == "trunk" or not A.is_done(arm, self.root, None):
                continue
            m = json.loads((arm.dir(self.root) / "metrics.json").read_text())
            if arm.kind == "probe":
                accs = {k[len("test/acc/"):]: v for k, v in m.items() if k.startswith("test/acc/")}
                probe.setdefault(arm.init, {})[arm.seed] = accs
                taps = taps or list(accs)
            else:
                finetune.setdefault(arm.init, {}).setdefault(arm.seed, {})[arm.fraction] = m.get("test/acc")
        return probe, finetune, taps

    def run(self) -> dict:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
        from rich.table import Table

        cfg = self.cfg
        if cfg.get("threads"):
            torch.set_num_threads(int(cfg.threads))
        arms = A.plan_arms(list(cfg.inits), [int(s) for s in cfg.seeds], [float(f) for f in cfg.label_fractions])
        console = Console()
        status = {}
        for arm in arms:
            key = self.key(arm)[0]
            if key is not None and A.is_done(arm, self.root, key):
                status[arm.name] = "done"
            else:  # a finished arm whose trunk is being remade is reused if the trunk comes back identical
                status[arm.name] = "check" if key is None and A.is_done(arm, self.root, None) else "to run"
        todo = [a for a in arms if status[a.name] != "done"] if cfg.run_arms else []
        table = Table(title=f"cnnlab-gap · budget {cfg.budget_name} · {len(arms)} arms, {len(arms) - len(todo)} already done (reused)",
                      show_lines=False)
        for col in ("arm", "what", "status"):
            table.add_column(col)
        for arm in arms:
            table.add_row(arm.name, arm.label, {"done": "[green]reused[/]", "check": "[cyan]reused if its trunk is unchanged[/]",
                                                "to run": "[yellow]to run[/]"}[status[arm.name]])
        console.print(table)
        console.print(f"run dir: {self.root}")
        if not cfg.run_arms:
            console.print("run_arms=false: reporting the finished arms only")
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("arms", total=len(arms), completed=len(arms) - len(todo))
            for n, arm in enumerate(todo, start=1):
                left = len(todo) - n
                progress.update(task, description=f"[{n}/{len(todo)}] {arm.label} ({arm.name}); {left} more after this")
                key, cmd, fp = self.key(arm)
                if key is None:
                    raise UserError(f"arm {arm.name} needs {self.trunk_path(arm)}, which its trunk arm did not write")
                if A.is_done(arm, self.root, key):  # a trunk rerun with identical weights keeps its dependants
                    progress.advance(task)
                    continue
                t0 = time.time()
                self.run_arm(arm, key, cmd, fp)
                progress.console.print(f"  done {arm.name} in {time.time() - t0:.0f} s")
                self.timings[arm.name] = {"seconds": round(time.time() - t0, 1)}
                progress.advance(task)
        console.print(f"arms: ran {len(self.timings)}, reused {len(arms) - len(self.timings)}")
        probe, finetune, taps = self.collect(arms)
        taps = taps or (list(cfg.probe.taps) if cfg.probe.taps else [])
        res = summarize(probe, finetune, list(cfg.inits), [int(s) for s in cfg.seeds], taps, [float(f) for f in cfg.label_fractions])
        res["budget"] = str(cfg.budget_name)
        res["arms"] = {a.name: {"kind": a.kind, "init": a.init, "seed": a.seed, "fraction": a.fraction,
                                "reused": a.name not in self.timings, "seconds": self.timings.get(a.name, {}).get("seconds"), "dir": str(a.dir(self.root))} for a in arms}
        res["data"] = {"name": cfg.data.name, "color_space": cfg.data.color_space, "train_limit": cfg.data.get("train_limit")}
        res["backbone"] = {"arch": self.arch, **self.arch_kwargs}
        res["machine"] = f"{platform.node()} · {platform.processor() or platform.machine()} · torch {torch.__version__} · " + (
            torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads")
        res["date"] = time.strftime("%Y-%m-%d %H:%M")
        res["command"] = " ".join(["cnnlab-gap", *[shlex.quote(a) for a in sys.argv[1:]]])
        title = f"Pretraining gap · {cfg.data.name} · {self.arch} {self.arch_kwargs} · budget {cfg.budget_name}"
        paths = write_report(res, self.root, title)
        wandb_dir = None
        if cfg.report.wandb:
            wandb_dir = log_to_wandb(res, paths, self.root, name=f"gap_{cfg.budget_name}", mode=cfg.report.wandb_mode,
                                     config=OmegaConf.to_container(cfg, resolve=True), tags=["gap", str(cfg.budget_name)])
        console.print(markdown_tables(res), soft_wrap=True, markup=False)
        console.print(f"results: {paths['json']}\ntable:   {paths['markdown']}\nplot:    {paths['plot']}" +
                      (f"\nW&B:     {wandb_dir}" if wandb_dir else ""))
        return res
