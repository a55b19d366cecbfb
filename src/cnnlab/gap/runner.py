"""Orchestration of the gap experiment in three steps: plan the arms, execute what is not done, report."""

from __future__ import annotations

import contextlib
import json
import logging
import platform
import shlex
import shutil
import sys
import time
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from cnnlab.backbones import load_trunk, save_trunk
from cnnlab.cli import instantiate, resolve_device
from cnnlab.errors import UserError
from cnnlab.features import state_fingerprint
from cnnlab.gap import arms as A
from cnnlab.gap.arms import Plan
from cnnlab.gap.configs import ArmConfigs, active_tasks, init_space, location_free, task_setting, write_config
from cnnlab.gap.report import SMOKE_BANNER, log_to_wandb, markdown_tables, setup_title, summarize, timing, unit_key, write_report
from cnnlab.gap.select import best_candidate
from cnnlab.io.checkpoints import read_cnnlab_file
from cnnlab.io.files import write_json
from cnnlab.probes import calibrate_batchnorm, check_trunk_matches
from cnnlab.probes.linear import at_grid_edge

log = logging.getLogger("cnnlab.gap")


def validate(cfg: DictConfig) -> None:
    """Bad settings fail in one line before any arm runs."""
    inits = list(cfg.inits)
    bad = [i for i in inits if i not in A.INITS]
    if bad or not inits:
        raise UserError(f"unknown init(s) {bad or inits}: inits must be a subset of {list(A.INITS)}")
    for name in ("seeds", "label_subsets"):
        if not list(OmegaConf.select(cfg, name) or []):
            raise UserError(f"{name} is empty: give at least one value, e.g. {name}=[0,1]")
    tasks = active_tasks(cfg)
    if not tasks:
        raise UserError("no downstream task: tasks must name at least one (e.g. tasks.cls, a classification task)")
    for t, spec in tasks.items():
        if spec.get("kind") not in A.TASK_KINDS:
            raise UserError(f"tasks.{t}.kind={spec.get('kind')}: choose one of {list(A.TASK_KINDS)}")
        ft = task_setting(cfg, t, "finetune")
        for name in ("lrs", "variants"):
            if not list(ft.get(name) or []):
                raise UserError(f"finetune.{name} is empty (task {t}): give at least one value, e.g. finetune.{name}=[0.01]")
        known = set(OmegaConf.to_container(ft.recipe, resolve=True))
        for v, over in OmegaConf.to_container(ft.variants, resolve=True).items():
            if not isinstance(over, dict) or set(over) - known:
                raise UserError(f"finetune.variants.{v} = {over}: a variant sets fine-tune recipe options only, "
                                f"a mapping with keys from {sorted(known)} (e.g. {{head_only_steps: 50}})")
        for f in spec.label_fractions:
            if not isinstance(f, (int, float)) or not 0.0 < float(f) <= 1.0:
                raise UserError(f"label fraction {f} of task {t} is outside (0, 1]: use e.g. tasks.{t}.label_fractions=[0.01,0.1]")
        lf = float(task_setting(cfg, t, "probe").label_fraction)
        if not 0.0 < lf <= 1.0:
            raise UserError(f"probe.label_fraction={lf} (task {t}) is outside (0, 1]")
        if spec.kind == "classification" and not float((spec.get("cfg") or {}).get("val_fraction", 0) or 0) > 0:
            raise UserError(f"tasks.{t}.cfg.val_fraction is 0: every choice of the gap is made on the validation split; give it e.g. 0.02")
    if int(cfg.pretrain.steps) < 1:
        raise UserError(f"pretrain.steps={cfg.pretrain.steps}: every pretrained init runs this many optimizer steps; give at least 1")
    taps = task_setting(cfg, next(iter(tasks)), "probe").taps
    if taps:
        instantiate(OmegaConf.merge(cfg.backbone, {"in_channels": 1})).check_taps(list(taps))  # unknown tap: one line now
    from cnnlab.config import CONF_DIR  # the configs this cnnlab composes from (a checkout's or the package's)

    conf_dir = Path(CONF_DIR)
    for init in inits:
        if init == "random":
            continue
        for group, choice in (cfg.pretrain[init].groups or {}).items():
            if not (conf_dir / str(group) / f"{choice}.yaml").is_file():
                raise UserError(f"the {init} pretraining needs {group}={choice} (conf/{group}/{choice}.yaml), which does not exist: "
                                f"add it, or leave {init} out (inits=[...])")
    for t, spec in tasks.items():
        for group, choice in (spec.get("groups") or {}).items():
            if not (conf_dir / str(group) / f"{choice}.yaml").is_file():
                raise UserError(f"task {t} needs {group}={choice} (conf/{group}/{choice}.yaml), which does not exist: "
                                f"add it, or leave the task out (tasks.{t}=null)")


@contextlib.contextmanager
def _arm_output(log_path: Path):
    """An in-process arm's console output goes to its arm.log: prints (the config tree), warnings, and log records
    (the console keeps only warnings and errors while the arm runs)."""
    root = logging.getLogger()
    consoles = [h for h in root.handlers if isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)]
    levels = [h.level for h in consoles]
    with open(log_path, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        to_file = logging.StreamHandler(fh)
        to_file.setFormatter(logging.Formatter("[%(asctime)s][%(name)s][%(levelname)s] - %(message)s"))
        root.addHandler(to_file)
        for h in consoles:
            h.setLevel(max(h.level, logging.WARNING))
        try:
            yield
        finally:
            root.removeHandler(to_file)
            for h, lv in zip(consoles, levels):
                h.setLevel(lv)


def last_gain(history: list) -> float | None:
    """The monitored score of the last validation minus the one before (``history``: ``[[step, score], ...]``); None
    with fewer than two validations."""
    return float(history[-1][1] - history[-2][1]) if len(history) >= 2 else None


def best_checkpoint(run_dir: Path) -> dict:
    """``{"path", "val", "step"}`` of the best-on-val checkpoint a candidate fine-tune kept."""
    found = sorted((run_dir / "checkpoints").glob("best_*.ckpt"))
    if not found:
        raise UserError(f"{run_dir} kept no checkpoint: its fine-tune never validated (finetune.evals, trainer settings)")
    _, ckpt = read_cnnlab_file(found[-1], expect="checkpoint")
    score = next((s["best_model_score"] for k, s in ckpt.get("callbacks", {}).items()
                  if k.startswith("ModelCheckpoint") and s.get("best_model_score") is not None), None)
    return {"path": str(found[-1]), "val": None if score is None else float(score), "step": int(ckpt.get("global_step", 0))}


#: the Runner of each gap run a worker process serves, built and planned once per process
_WORKER_RUNNERS: dict[tuple, "Runner"] = {}


class Runner:
    @classmethod
    def for_worker(cls, cfg_yaml: str, root: str, choices: dict) -> "Runner":
        """The Runner of this gap run in a worker process (built from the run's portable config and planned once
        per process, so every arm name resolves); launchers get it as a factory, so they never import this module."""
        k = (cfg_yaml, root)
        if k not in _WORKER_RUNNERS:
            r = cls(OmegaConf.create(cfg_yaml), Path(root), dict(choices))
            r.plan()
            _WORKER_RUNNERS[k] = r
        return _WORKER_RUNNERS[k]

    def __init__(self, cfg: DictConfig, out_dir: Path, choices: dict):
        self.cfg, self.root, self.choices = cfg, Path(out_dir), choices
        backbone = instantiate(OmegaConf.merge(cfg.backbone, {"in_channels": 1}))
        # the architecture every trunk must have (its input channels follow the init's colour space)
        self.arch = backbone.arch
        self.arch_kwargs = {k: v for k, v in dict(backbone.arch_kwargs).items() if k != "in_channels"}
        self.configs = ArmConfigs(cfg, choices)
        self.tasks = self.configs.tasks
        self._check_task_data()
        #: what the in-process arms' results depend on in a data config (not where the data lives)
        self.pool_key = {k: v for k, v in self.configs.pool.items() if k != "data_dir"}
        self.data_key = {t: {k: v for k, v in d.items() if k != "data_dir"} for t, d in self.configs.task_data.items()}
        #: a run on synthetic data is a plumbing check, and every output says so
        self.synthetic = any(d.get("name") == "synthetic" for d in (self.configs.pool, *self.configs.task_data.values()))
        self.timings: dict[str, float] = {}
        self.started = time.time()
        self.by_name: dict[str, A.Arm] = {}
        self._fp: dict[str, str] = {}
        self._dms: dict[tuple, object] = {}

    def _check_task_data(self) -> None:
        """A multilabel task reads multi-label data and no other task does (else its probes would score the wrong thing
        before its fine-tunes fail): one line before any arm runs."""
        from hydra.utils import get_class

        from cnnlab.data.multilabel import MultiLabelDataModule

        for t, spec in self.tasks.items():
            target = self.configs.task_data[t].get("_target_")
            multi = bool(target) and issubclass(get_class(str(target)), MultiLabelDataModule)
            if multi != (spec.kind == "multilabel"):
                raise UserError(f"task {t} is kind={spec.kind} but its data ({target}) is {'multi' if multi else 'single'}-label: "
                                f"set tasks.{t}.kind={'multilabel' if multi else 'classification'}, or give it "
                                f"{'single' if multi else 'multi'}-label data (tasks.{t}.data)")

    # --------------------------------------------------------------------------- plan
    def task_plan(self) -> dict[str, dict]:
        """Per task: label fractions, probe label subsets, fine-tune lrs and recipe variants (see :func:`A.plan_arms`)."""
        c, out = self.cfg, {}
        for t, spec in self.tasks.items():
            probe, ft = task_setting(c, t, "probe"), task_setting(c, t, "finetune")
            out[t] = {"fractions": [float(f) for f in spec.label_fractions],
                      "probe_subsets": [int(k) for k in c.label_subsets] if float(probe.label_fraction) < 1.0 else [None],
                      "lrs": [float(lr) for lr in ft.lrs], "variants": [str(v) for v in ft.variants]}
        return out

    def plan(self) -> Plan:
        c = self.cfg
        arms = A.plan_arms(list(c.inits), [int(s) for s in c.seeds], self.task_plan(), [int(k) for k in c.label_subsets])
        self.by_name = {a.name: a for a in arms}
        status = {}
        for arm in arms:
            key = self.key(arm)
            if key is not None and A.is_done(arm, self.root, key):
                status[arm.name] = "done"
            else:  # a finished arm whose inputs are being remade is reused if they come back identical
                status[arm.name] = "check" if key is None and A.is_done(arm, self.root, None) else "to run"
        return Plan(arms, status)

    # --------------------------------------------------------------------------- keys
    def trunk_path(self, arm: A.Arm) -> Path:
        return self.root / "arms" / arm.trunk_arm / "trunk.pt"

    def fingerprint(self, path: Path) -> str:
        """The trunk's weight hash: recorded by its trunk arm, computed (once per file version) only if it is not."""
        stamp = f"{path}:{path.stat().st_mtime_ns}"
        if stamp not in self._fp:
            arm = self.by_name.get(path.parent.name)
            marker = A.read_marker(arm, self.root) if arm else None
            if marker and marker.get("trunk_stamp") == path.stat().st_mtime_ns and marker.get("trunk_fingerprint"):
                self._fp[stamp] = marker["trunk_fingerprint"]
            else:
                backbone, meta = load_trunk(path)
                check_trunk_matches(meta, path, arch=self.arch, arch_kwargs=self.arch_kwargs,
                                    color_space=init_space(arm.init) if arm else None)
                self._fp[stamp] = state_fingerprint(backbone)
        return self._fp[stamp]

    def arm_config(self, arm: A.Arm):
        """The composed config of a cnnlab-train arm (None for in-process arms)."""
        d = arm.dir(self.root)
        if arm.kind == "trunk" and arm.init != "random":
            return self.configs.pretrain(arm.init, arm.seed, arm.name, d)
        if arm.kind == "finetune":
            return self.configs.finetune(arm.task, arm.init, arm.seed, arm.subset, arm.fraction, arm.lr, self.trunk_path(arm),
                                         self.n_labelled(arm.task, arm.fraction), arm.name, d, arm.variant)
        return None

    def key(self, arm: A.Arm) -> str | None:
        """What the arm's result depends on; None while an input (its trunk, a candidate) does not exist yet."""
        c = self.cfg
        what: dict = {"kind": arm.kind}
        if arm.kind != "trunk":
            trunk = self.trunk_path(arm)
            if not trunk.is_file():
                return None
            what["trunk"] = self.fingerprint(trunk)
        if arm.kind == "trunk" and arm.init == "random":
            what.update(backbone=OmegaConf.to_container(c.backbone, resolve=False), seed=arm.seed,
                        calibrate=c.random_init.calibrate_batches, data=self.pool_key)
        elif arm.kind == "probe":
            probe = {k: v for k, v in OmegaConf.to_container(task_setting(c, arm.task, "probe"), resolve=True).items()
                     if k not in ("keep_cache", "device")}
            what.update(probe=probe, task=self.tasks[arm.task].kind, data=self.data_key[arm.task], subset=arm.subset, seed=arm.seed,
                        space=init_space(arm.init), test=not c.validation_only)
        elif arm.kind == "finetune_test":
            keys = [(A.read_marker(self.by_name[n], self.root) or {}).get("key") for n in arm.needs]
            if None in keys:
                return None
            what.update(candidates=keys, test=not c.validation_only)
        else:
            what["config"] = location_free(self.arm_config(arm))
        return A.arm_key(what)

    # --------------------------------------------------------------------------- data
    def datamodule(self, task: str | None, label_fraction: float = 1.0, label_seed: int = 0, space: str = "L"):
        """The data of a task (None: the pool) with a label subset; the whole split's is kept, a subset's only until
        the next one."""
        k = (task, space, float(label_fraction), int(label_seed) if label_fraction < 1.0 else 0)
        if k not in self._dms:
            if k[2] < 1.0:
                self._dms = {key: dm for key, dm in self._dms.items() if key[2] == 1.0}  # one subset copy in memory at a time
            node = self.configs.pool if task is None else self.configs.task_data[task]
            self._dms[k] = instantiate({**node, "color_space": space, "label_fraction": k[2], "label_seed": k[3],
                                        "shuffle_seed": 0, "progress": False})
        return self._dms[k]

    def n_labelled(self, task: str, fraction: float) -> int:
        """About how many labelled images a subset of ``fraction`` holds (it sizes the fine-tune's steps)."""
        dm = self.datamodule(task)
        dm.setup()
        return max(dm.num_classes, round(fraction * len(dm.splits["train"])))

    # --------------------------------------------------------------------------- execute
    def execute(self, plan: Plan, console=None) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

        todo = plan.todo if self.cfg.run_arms else []
        columns = (SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=console, transient=False) as progress:
            task = progress.add_task("arms", total=len(plan.arms), completed=len(plan.arms) - len(todo))
            from cnnlab.gap.launch import Local, execute, launcher_of

            launcher, n_started = launcher_of(self.cfg), [0]

            def started(arm: A.Arm, running: list[str]) -> None:
                n_started[0] += 1
                if n_started[0] == 1 and not isinstance(launcher, Local):
                    progress.console.print(f"arms run by: {launcher.describe()}")
                now = arm.label if len(running) == 1 else f"{arm.label}; {len(running)} running"
                progress.update(task, description=f"[{n_started[0]}/{len(todo)}] {now} ({arm.name})")

            def finished(arm: A.Arm, seconds: float | None) -> None:
                if seconds is not None:  # None: a remade input came back identical, the arm was kept
                    self.timings[arm.name] = seconds
                    progress.console.print(f"  done {arm.name} in {seconds:.0f} s")
                progress.advance(task)

            execute(self, plan, todo, launcher, started, finished)
        if not self.cfg.probe.keep_cache:
            for d in (self.root / "arms").glob("*/features*"):
                shutil.rmtree(d, ignore_errors=True)

    def run_arm(self, arm: A.Arm, key: str) -> None:
        d = A.fresh_dir(arm, self.root)
        t0 = time.time()
        extra = {"run": getattr(self, f"_run_{arm.kind}")(arm, d)}
        if (d / "clock.json").is_file():  # where a cnnlab-train arm's time went (cnnlab.callbacks.StageClock)
            extra["clock"] = json.loads((d / "clock.json").read_text())
        if arm.kind == "trunk":
            trunk = d / "trunk.pt"
            extra.update(trunk_stamp=trunk.stat().st_mtime_ns, trunk_fingerprint=extra["run"].pop("fingerprint"))
        A.mark_done(arm, self.root, key, time.time() - t0, extra)

    def _train_in_process(self, arm_cfg: DictConfig, d: Path) -> None:
        from cnnlab.train import run

        write_config(arm_cfg, d)
        with _arm_output(d / "arm.log"):
            try:
                run(arm_cfg)
            except UserError as err:
                raise UserError(f"arm {d.name} failed: {err} -- full log: {d / 'arm.log'}; rerun cnnlab-gap to resume") from None
            except Exception as err:
                print(f"\n{type(err).__name__}: {err}", file=sys.stderr)
                raise UserError(f"arm {d.name} failed ({type(err).__name__}: {str(err)[:200]}) -- full log: {d / 'arm.log'}; "
                                "rerun cnnlab-gap to resume") from err

    def _run_trunk(self, arm: A.Arm, d: Path) -> dict:
        if arm.init == "random":
            torch.manual_seed(int(arm.seed))
            backbone = instantiate(OmegaConf.merge(self.cfg.backbone, {"in_channels": 1}))
            n_cal = 0
            if self.cfg.random_init.calibrate_batches:  # on unlabelled pool images, like the pretrained inits' data
                dm = self.datamodule(None)
                dm.setup()
                n_cal = calibrate_batchnorm(backbone, dm.loader("train", batch_size=256), lambda u: dm.preprocess(u, train=False),
                                            max_batches=int(self.cfg.random_init.calibrate_batches))
            save_trunk(d / "trunk.pt", backbone, "L", "random", {"seed": int(arm.seed), "bn_calibration_images": n_cal})
            return {"bn_calibration_images": n_cal, "fingerprint": state_fingerprint(backbone)}
        self._train_in_process(self.arm_config(arm), d)
        backbone, meta = load_trunk(d / "trunk.pt")  # read once: checked and hashed here, dependants read the hash
        check_trunk_matches(meta, d / "trunk.pt", arch=self.arch, arch_kwargs=self.arch_kwargs, color_space=init_space(arm.init))
        return {"fingerprint": state_fingerprint(backbone), "steps": int((meta.get("info") or {}).get("global_step", -1))}

    def _run_probe(self, arm: A.Arm, d: Path) -> dict:
        p = task_setting(self.cfg, arm.task, "probe")
        dm = self.datamodule(arm.task, float(p.label_fraction), arm.subset or 0, init_space(arm.init))
        evaluate_test = not self.cfg.validation_only
        if self.tasks[arm.task].kind == "segmentation":
            from cnnlab.probes.dense import probe_trunk_dense

            dense = probe_trunk_dense(self.trunk_path(arm), dm, weight_decays=tuple(p.weight_decays), evaluate_test=evaluate_test,
                                      pixels_per_image=int(p.get("pixels_per_image", 128)), seed=int(arm.subset or 0),
                                      max_iter=int(p.max_iter), device=resolve_device(p.device),
                                      cache_dir=self.root / "arms" / arm.trunk_arm / f"features_{arm.task}_{init_space(arm.init)}")
            # one "tap" (the hypercolumn of every tap), scored by mIoU: the shape the report reads for every task
            res = {"taps": ["hypercolumn"], "n_train": dense["n_train_pixels"], "n_val": dense["n_val_pixels"], "dense": dense,
                   "linear": {"hypercolumn": {"val": dense["val_miou"], "test": dense["test_miou"], "grid": dense["grid"],
                                              "weight_decay": dense["weight_decay"], "at_grid_edge": dense["at_grid_edge"]}}}
        else:
            from cnnlab.probes.cached import probe_trunk_cached

            res = probe_trunk_cached(self.trunk_path(arm), dm, taps=list(p.taps) if p.taps else None, target_dims=p.target_dims,
                                     cache_dir=self.root / "arms" / arm.trunk_arm / f"features_{arm.task}_{init_space(arm.init)}",
                                     weight_decays=tuple(p.weight_decays), max_iter=int(p.max_iter), knn_k=int(p.knn.k),
                                     knn_temperature=float(p.knn.temperature), device=resolve_device(p.device), expect_arch=self.arch,
                                     expect_arch_kwargs=self.arch_kwargs, evaluate_test=evaluate_test, progress=sys.stdout.isatty())
        write_json(d / "probe.json", res)
        return {"n_train": res.get("n_train")}

    def _run_finetune(self, arm: A.Arm, d: Path) -> dict:
        arm_cfg = self.arm_config(arm)
        self._train_in_process(arm_cfg, d)
        best = best_checkpoint(d)
        hist = d / "val_history.json"  # cnnlab.callbacks.ValidationHistory: the monitored score at every validation
        history = [[e["step"], e[arm_cfg.monitor]] for e in json.loads(hist.read_text()) if arm_cfg.monitor in e] if hist.is_file() else []
        write_json(d / "candidate.json", {"lr": arm.lr, "variant": arm.variant, "max_steps": int(arm_cfg.trainer.max_steps),
                                          "history": history, **best})
        return {"val": best["val"], "step": best["step"]}

    def _run_finetune_test(self, arm: A.Arm, d: Path) -> dict:
        cands = [self.by_name[n] for n in arm.needs]
        cands.sort(key=lambda a: (a.lr, arm.needs.index(a.name)))  # ties keep the smaller rate, then the earlier variant
        found = {a.name: json.loads((a.dir(self.root) / "candidate.json").read_text()) for a in cands}
        chosen = self.by_name[best_candidate({a.name: found[a.name]["val"] for a in cands})]
        best = found[chosen.name]
        test = None
        if not self.cfg.validation_only:
            arm_cfg = ArmConfigs.test_of(OmegaConf.load(chosen.dir(self.root) / "config.yaml"), Path(best["path"]), arm.name, d)
            self._train_in_process(arm_cfg, d)
            m = json.loads((d / "metrics.json").read_text())
            test = m.get(f"test/{A.TASK_METRICS[self.tasks[arm.task].kind][0]}")
        else:
            write_json(d / "metrics.json", {})
        several = len({a.variant for a in cands}) > 1
        choice = {"lr": chosen.lr, "variant": chosen.variant, "step": best["step"], "val": best["val"], "test": test,
                  "grid": {f"{a.lr:g}" + (f" {a.variant}" if several else ""): found[a.name]["val"] for a in cands},
                  "candidate": chosen.name, "lr_at_grid_edge": at_grid_edge(chosen.lr, [a.lr for a in cands]),
                  # the best checkpoint was the last validation: a longer fine-tune might have gone further
                  "step_is_last": best["step"] >= best.get("max_steps", best["step"] + 1),
                  # what the chosen candidate's last validation added over the one before: still rising, or flat
                  "last_gain": last_gain(best.get("history", []))}
        write_json(d / "choice.json", choice)
        return choice

    # --------------------------------------------------------------------------- report
    def collect(self, arms: list[A.Arm]) -> dict:
        """Per task and arm kind, the finished arms' numbers keyed by init and paired run."""
        out: dict = {t: {"probe": {}, "finetune": {}} for t in self.tasks}
        for arm in arms:
            if arm.kind not in ("probe", "finetune_test") or not A.is_done(arm, self.root, None):
                continue
            d, got = arm.dir(self.root), out[arm.task]
            if arm.kind == "probe":
                got["probe"].setdefault(arm.init, {})[arm.unit] = json.loads((d / "probe.json").read_text())
            else:
                got["finetune"].setdefault(arm.init, {}).setdefault(arm.fraction, {})[arm.unit] = json.loads((d / "choice.json").read_text())
        return out

    def report(self, plan: Plan, console) -> dict:
        c = self.cfg
        collected = self.collect(plan.arms)
        res: dict = {"tasks": {}}
        for t, spec in self.tasks.items():
            probe_cfg, ft_cfg = task_setting(c, t, "probe"), task_setting(c, t, "finetune")
            fractions = [float(f) for f in spec.label_fractions]
            r = summarize(collected[t], list(c.inits), fractions, list(probe_cfg.taps) if probe_cfg.taps and spec.kind != "segmentation" else [],
                          score="val" if c.validation_only else "test")
            # every paired run's own numbers: each choice with the validation grid it was made from, and its test score
            r["runs"] = {"probe": {i: {unit_key(u): {k: v for k, v in pr.items() if k in ("linear", "knn", "dense", "n_train", "n_val", "n_test")}
                                       for u, pr in runs.items()} for i, runs in collected[t]["probe"].items()},
                         "finetune": {str(f): {i: {unit_key(u): ch for u, ch in by_f.get(f, {}).items()}
                                               for i, by_f in collected[t]["finetune"].items()} for f in fractions}}
            r["kind"] = str(spec.kind)
            r["metric"] = A.TASK_METRICS[str(spec.kind)][1]
            data = self.configs.task_data[t]
            r["data"] = {"name": data.get("name"), "source": data.get("source"), "val_fraction": data.get("val_fraction"),
                         "image_size": data.get("image_size")}
            r["grids"] = {"finetune_lr": [float(x) for x in ft_cfg.lrs],
                          "finetune_variants": OmegaConf.to_container(ft_cfg.variants, resolve=True),
                          "probe_weight_decay": [float(x) for x in probe_cfg.weight_decays],
                          "knn": {"k": int(probe_cfg.knn.k), "temperature": float(probe_cfg.knn.temperature)}}
            r["finetune_recipe"] = OmegaConf.to_container(ft_cfg, resolve=True)
            r["probe_label_fraction"] = float(probe_cfg.label_fraction)
            res["tasks"][t] = r
        res["budget"] = str(c.budget_name)
        res["protocol_name"] = str(c.get("protocol_name", "custom"))
        res["synthetic"] = self.synthetic
        res["validation_only"] = bool(c.validation_only)
        res["inits"] = list(c.inits)
        res["arm_numerics"] = {"precision": str(OmegaConf.select(c, "arm.groups.precision") or "32-true"),
                               "channels_last": OmegaConf.select(c, "arm.cfg.callbacks.channels_last") is not None}
        pre = OmegaConf.to_container(c.pretrain, resolve=True)
        res["recipe"] = {"pretrain": pre}
        pool_dm = self.datamodule(None)
        res["pool"] = {"name": self.configs.pool.get("name"), "source": self.configs.pool.get("source"), "train_limit": self.configs.pool.get("train_limit"),
                       "val_fraction": self.configs.pool.get("val_fraction"), "batch_size": self.configs.pool.get("batch_size"),
                       "images": len(pool_dm.splits["train"]) if pool_dm.splits else None,
                       "pretrain_steps": int(c.pretrain.steps)}
        res["protocol"] = {
            "pretraining": f"every init pretrained {int(c.pretrain.steps)} optimizer steps of {self.configs.pool.get('batch_size')} pool images "
                           f"(warm-up {100 * float(c.pretrain.warmup_fraction):g}%, then cosine to lr/{float(c.pretrain.final_div):g} per step); "
                           "colorization reads the pool's images only, supervised its own labels; no downstream image or label",
            "label_subsets": [int(k) for k in c.label_subsets], "seeds": [int(s) for s in c.seeds],
            "unit": "pretraining seed: label subsets averaged within a seed, intervals over seeds (df = seeds - 1)",
            "chosen_on_validation": ["best tap per init", "probe weight decay per tap", "fine-tune learning rate and recipe variant",
                                     "fine-tune checkpoint (step)"],
            "read_on_test": "nothing (validation only)" if c.validation_only else
                            "each final arm once: the probes with their chosen weight decay, kNN, each fine-tune's chosen checkpoint"}
        res["arms"] = {a.name: {"kind": a.kind, "task": a.task, "init": a.init, "seed": a.seed, "subset": a.subset, "fraction": a.fraction,
                                "lr": a.lr, "reused": a.name not in self.timings, "seconds": self.timings.get(a.name), "dir": str(a.dir(self.root))}
                       for a in plan.arms}
        res["timing"] = timing([m for m in (A.read_marker(a, self.root) for a in plan.arms) if m], time.time() - self.started)
        res["backbone"] = {"arch": self.arch, **self.arch_kwargs}
        res["machine"] = f"{platform.node()} · {platform.processor() or platform.machine()} · torch {torch.__version__} · " + (
            torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"CPU, {torch.get_num_threads()} threads")
        res["date"] = time.strftime("%Y-%m-%d %H:%M")
        res["command"] = " ".join(["cnnlab-gap", *[shlex.quote(a) for a in sys.argv[1:]]])
        title = setup_title(res)
        paths = write_report(res, self.root, title)
        wandb_dir = None
        if c.report.wandb:
            from cnnlab.gap.launch import wandb_group

            wandb_dir = log_to_wandb(res, paths, self.root, name=f"gap_{c.budget_name}", mode=c.report.wandb_mode,
                                     config=OmegaConf.to_container(c, resolve=True), tags=["gap", str(c.budget_name)],
                                     group=wandb_group(self.root))
        console.print(markdown_tables(res), soft_wrap=True, markup=False)
        console.print(f"results: {paths['json']}\ntable:   {paths['markdown']}\nplot:    {paths['plot']}" +
                      (f"\nW&B:     {wandb_dir}" if wandb_dir else ""))
        return res

    # --------------------------------------------------------------------------- all three
    def show_plan(self, plan: Plan, console) -> None:
        from rich.table import Table

        todo = plan.todo if self.cfg.run_arms else []
        table = Table(title=f"cnnlab-gap · budget {self.cfg.budget_name} · {len(plan.arms)} arms, "
                            f"{len(plan.arms) - len(plan.todo)} already done (reused)")
        for col in ("arm", "what", "status"):
            table.add_column(col)
        for arm in plan.arms:
            table.add_row(arm.name, arm.label, {"done": "[green]reused[/]", "check": "[cyan]reused if its inputs are unchanged[/]",
                                                "to run": "[yellow]to run[/]"}[plan.status[arm.name]])
        if self.synthetic:
            console.print(f"[bold red]{SMOKE_BANNER}[/]")
        console.print(table)
        console.print(f"run dir: {self.root}")
        if not todo:
            console.print("nothing to run" if self.cfg.run_arms else "run_arms=false: reporting the finished arms only")

    def run(self) -> dict:
        from rich.console import Console

        if self.cfg.get("threads"):
            torch.set_num_threads(int(self.cfg.threads))
        console = Console()
        plan = self.plan()
        self.show_plan(plan, console)
        self.execute(plan, console)
        console.print(f"arms: ran {len(self.timings)}, reused {len(plan.arms) - len(self.timings)}")
        return self.report(plan, console)
