"""The one entry-point layer: every console script starts here.

- :func:`user_errors` turns a :class:`~cnnlab.errors.UserError` (found anywhere in an exception's
  cause chain, so one raised inside ``hydra.utils.instantiate`` or a resolver counts) into one
  ``error:`` line and exit code 2; ``CNNLAB_TRACEBACK=1`` prints the traceback first. The common
  mistakes that surface as errors from below the project (:func:`error_from_below`: an unknown keyword
  or a bad value for a ``_target_``, Lightning's misconfigurations, a full / read-only / forbidden
  target, a damaged torch file) become such a line too. The ``error:`` line is the last line: an open
  W&B run is closed before it.
- :func:`hydra_main` makes a Hydra command. Before Hydra creates the run directory it composes the
  config once itself and checks it (unknown group options and keys, value types and ranges, resolvers,
  missing values, a writable run directory), so a mistake costs a second and touches nothing. A mistake found
  inside the job (one that needs the network: a class or layer name) removes the run dir again when the run made it
  and produced nothing. Inside a multirun a job's ``UserError`` is re-raised instead, so the sweeper records that
  job as failed.
- :func:`instantiate` / :func:`instantiate_group` build ``_target_`` configs with the same unwrapping.
- :func:`resolve_device` is the one reading of ``device=auto|cpu|cuda``.
- :func:`command_help` is ``--help``: the command's own config groups and config, not every group in conf/.

torch is imported only by :func:`resolve_device`: a config mistake is reported before any heavy import.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from omegaconf import DictConfig, OmegaConf

from cnnlab.config import CONF_DIR, check_complete, in_multirun, quote_plain_values
from cnnlab.errors import UserError, close_wandb, exit_with, os_error, user_error_of
from cnnlab.validation import check_values

log = logging.getLogger("cnnlab")

#: Hydra flags that do not run the task (help, config printing, completion): nothing to check first
_NO_RUN_FLAGS = ("help", "hydra_help", "info", "shell_completion", "cfg", "experimental_rerun")


# --------------------------------------------------------------------------------------------- errors
@contextlib.contextmanager
def user_errors(cfg: DictConfig | None = None) -> Iterator[None]:
    """Run the body; a user mistake ends as one ``error:`` line and exit code 2."""
    try:
        yield
    except Exception as exc:  # noqa: BLE001 - only a UserError in the chain (or one from below) is handled
        err = user_error_of(exc) or error_from_below(exc, cfg)
        if err is None:
            raise
        exit_with(err, exc)


# ------------------------------------------------------------------------------ errors from below the project
#: what torch says about a checkpoint that is cut short or damaged
_TORCH_DAMAGED = ("PytorchStreamReader", "failed finding central directory", "invalid header or archive is corrupted",
                  "file in archive is not in a subdirectory", "Ran out of input", "unexpected EOF")


def _chain(exc: BaseException | None) -> Iterator[BaseException]:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def error_from_below(exc: BaseException, cfg: DictConfig | None = None) -> UserError | None:
    """The common mistakes that surface as errors of Hydra, Lightning, torch or the OS, as one :class:`UserError`
    naming the key or file (``None``: not one of them, a bug to show as a traceback).

    - ``hydra.utils.instantiate`` of a ``_target_`` with an unknown keyword (``+model.lrr=0.1``) or a value it
      refuses (``trainer.devices=abc``, a Lightning misconfiguration such as ``trainer.accelerator=gpu``
      without a GPU);
    - Lightning's ``MisconfigurationException`` raised later;
    - an ``OSError`` for a full disk or quota, the file-size limit, a read-only or forbidden target;
    - torch's errors for a checkpoint that is truncated or damaged.
    """
    from hydra.errors import InstantiationException

    chain = list(_chain(exc))
    for e in chain:
        if isinstance(e, OSError) and (err := os_error(e, next((c.filename for c in chain if isinstance(c, OSError) and c.filename), None))):
            return err
    for e in chain:
        if isinstance(e, InstantiationException):
            return _instantiation_error(e, cfg)
    for e in chain:
        if type(e).__name__ == "MisconfigurationException":
            return _lightning_error(_one_line(e), "trainer", cfg)
    for e in chain:
        text = _one_line(e)
        if isinstance(e, (RuntimeError, EOFError)) and any(m in text for m in _TORCH_DAMAGED) or (
                type(e).__name__ == "UnpicklingError"):
            named = cfg.get("ckpt_path") if isinstance(cfg, DictConfig) and "ckpt_path" in cfg else None
            what = f"ckpt_path={named}" if named else "a checkpoint or torch file"
            return UserError(f"{what} is truncated or damaged ({text[:160]}): pass an intact checkpoint")
    return None


def _instantiation_error(exc: BaseException, cfg: DictConfig | None) -> UserError | None:
    """Hydra's wrapper (``Error in call to target 'T': <inner>`` ... ``full_key: K``) as one line naming the key."""
    text = str(exc)
    target = (re.search(r"target '([^']+)'", text) or [None, "its _target_"])[1]
    key = (re.search(r"full_key: (\S+)", text) or [None, ""])[1]
    inner = exc.__cause__
    if inner is None:
        return None
    message = _one_line(inner)
    unknown = re.search(r"unexpected keyword argument '([^']+)'", message)
    if isinstance(inner, TypeError) and unknown:
        name = f"{key}.{unknown[1]}" if key else unknown[1]
        valid = _parameters(target)
        hint = f"; it takes {', '.join(valid)}" if valid else ""
        return UserError(f"{name} is not an option of {target}{hint}: drop +{name}=..., or check its spelling")
    if isinstance(inner, (TypeError, ValueError)) or type(inner).__name__ == "MisconfigurationException":
        return _lightning_error(message, key, cfg, target)
    return None


def _lightning_error(message: str, key: str, cfg: DictConfig | None, target: str | None = None) -> UserError:
    """A refused value under ``key``: named as ``key.option=value`` when the message names an option of it."""
    node = OmegaConf.select(cfg, key) if isinstance(cfg, DictConfig) and key else None
    named = [next(g for g in m.groups() if g) for m in re.finditer(r"`(\w+)`|'(\w+)'|\b(\w+)=", message)]
    if isinstance(node, DictConfig):
        if re.search(r"\b(gpu|cuda|GPU|CUDA)\b", message) and "accelerator" in node:
            import torch

            if not torch.cuda.is_available():
                return UserError(f"{key}.accelerator={node.accelerator} but no GPU is visible ({message}): "
                                 "use trainer=cpu, or trainer.accelerator=auto")
        for word in named:
            if word in node:
                return UserError(f"{key}.{word}={node.get(word)} is not valid: {message} (check {key}.{word})")
    built = f" (building {target})" if target else ""
    if key:
        return UserError(f"{key}: {message}{built}: check the {key}.* values")
    return UserError(f"{message}{built}: check the config values")


def _parameters(target: str) -> list[str]:
    """The keyword parameters ``target`` (a dotted class or function) takes, for the message; [] if unknown."""
    import inspect

    from hydra.utils import get_object

    try:
        params = inspect.signature(get_object(target)).parameters.values()
    except Exception:  # noqa: BLE001 - only a hint
        return []
    return [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"]


def exit_on_user_error(fn: Callable) -> Callable:
    """Decorate a plain (argparse) entry point with :func:`user_errors`."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with user_errors():
            return fn(*args, **kwargs)

    return wrapper


def working_size(text: str) -> int:
    """The argparse ``type`` of ``--size`` (``cnnlab-colorize``, ``cnnlab-segment``): a positive number of pixels,
    the shorter side the model sees; anything else is a one-line :class:`UserError` (argparse lets it through)."""
    try:
        size = int(text)
    except ValueError:
        size = 0
    if size <= 0:
        raise UserError(f"--size {text}: pass a positive number of pixels (the shorter side the model sees)")
    return size


def add_working_size(parser, note: str = "") -> None:
    """The ``--size`` option of the commands that run a model at a working size and write full-resolution output."""
    parser.add_argument("--size", type=working_size, default=None,
                        help="working size: the model sees the shorter side at this many pixels (default: the size it "
                             f"was trained at){note}")


# --------------------------------------------------------------------------------------------- building
def instantiate(cfg: Any, *args, **kwargs) -> Any:
    """``hydra.utils.instantiate`` whose failures caused by a :class:`UserError` raise that error itself."""
    import hydra.utils

    try:
        return hydra.utils.instantiate(cfg, *args, **kwargs)
    except Exception as exc:
        err = user_error_of(exc)
        if err is None or err is exc:
            raise
        raise err from None


def instantiate_group(group: DictConfig | None) -> list[Any]:
    """Every ``_target_`` config of a group (callbacks, loggers), built in order; ``None`` entries are skipped."""
    if not group:
        return []
    return [instantiate(c) for c in group.values() if isinstance(c, DictConfig) and "_target_" in c]


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda`` without a GPU is a :class:`UserError`."""
    import torch

    name = str(name)
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} but no GPU is visible: pass device=cpu (or device=auto)")
    return name


# --------------------------------------------------------------------------------------------- checks
def check_config(cfg: DictConfig, check: Callable[[DictConfig], None] | None = None) -> None:
    """Everything that can be checked without doing work: value types and ranges, the command's own check,
    resolvers and mandatory values (``???``); cheapest first."""
    try:
        check_values(cfg)
        if check is not None:
            check(cfg)
        check_complete(cfg)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - OmegaConf's resolution errors
        err = user_error_of(exc)
        if err is not None:
            raise err from None
        from omegaconf.errors import MissingMandatoryValue

        if isinstance(exc, MissingMandatoryValue):
            key = getattr(exc, "full_key", "") or "a value"
            raise UserError(f"{key} is not set: pass {key}=<value>") from None
        raise UserError(f"the config does not resolve: {_one_line(exc)}") from None


def check_run_dir(path: str | Path) -> None:
    """The run directory must be a directory we can create and write; tried with a temporary directory
    in its nearest existing ancestor, which is removed again (permissions alone miss read-only mounts)."""
    import tempfile

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise UserError(f"hydra.run.dir={path} is a file: pass a directory for the run (hydra.run.dir=<dir>)")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise UserError(f"cannot create the run directory {path}: {parent} is a file; pass hydra.run.dir=<a directory>")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".cnnlab-write-test-", dir=parent))
    except OSError as err:
        raise UserError(f"cannot write the run directory {path}: {parent} is not writable ({err.strerror}); "
                        "pass hydra.run.dir=<a writable directory>") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _config_system_error(exc: BaseException, loader) -> UserError:
    """A Hydra composition failure as one line that names what the user can choose from."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    if isinstance(exc, MissingConfigException) and getattr(exc, "missing_cfg_file", None):
        group, _, name = str(exc.missing_cfg_file).rpartition("/")
        options = loader.get_group_options(group) if group else []
        if options:
            return UserError(f"{group}={name} is not an option: choose one of {', '.join(options)} (conf/{group}/)")
    cause = exc.__cause__
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and getattr(cause, "full_key", None):
        key = cause.full_key
        parent = key.rpartition(".")[0]
        node = getattr(cause, "parent_node", None)
        keys = sorted(str(k) for k in node.keys() if not str(k).startswith("_")) if isinstance(node, DictConfig) else []
        where = f" of {parent}" if parent else ""
        valid = f": choose from {', '.join(keys)}" if keys else ""
        return UserError(f"{key} is not a key{where}{valid} (prefix + to add a new key: +{key}=...)")
    return UserError(_one_line(exc))


def precheck(config_name: str, argv: Sequence[str], check: Callable[[DictConfig], None] | None = None) -> None:
    """Compose the config of ``argv`` as Hydra will and run :func:`check_config` and :func:`check_run_dir` on it,
    before Hydra creates the run directory. A multirun is only composed (its sweeps unexpanded: unknown options
    and keys are found); each of its jobs checks its values inside the job. Hydra's informational flags
    (``--help``, ``--cfg``) are left to Hydra."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path, get_args_parser
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.config_search_path import SearchPathQuery
    from hydra.types import RunMode

    try:
        args = get_args_parser().parse_args(list(argv))
    except SystemExit:
        return  # argparse already printed its usage error; Hydra will again
    if any(getattr(args, f, None) for f in _NO_RUN_FLAGS):
        return
    try:
        overrides = OverridesParser.create().parse_overrides(args.overrides)
    except Exception as exc:  # noqa: BLE001 - Hydra's override syntax errors
        raise UserError(f"cannot parse the overrides: {_one_line(exc)}") from None
    sweep = args.multirun or any(o.is_sweep_override() for o in overrides)
    search_path = create_automatic_config_search_path(None, None, args.config_path or CONF_DIR)
    if args.config_dir:
        config_dir = Path(args.config_dir).resolve()
        if not config_dir.is_dir():
            raise UserError(f"--config-dir {config_dir} is not a directory")
        search_path.prepend(provider="command-line", path=f"file://{config_dir}", anchor=SearchPathQuery(provider="schema"))
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(task_name=config_name, config_search_path=search_path)
    try:
        try:
            cfg = hydra.compose_config(args.config_name or config_name, list(args.overrides),
                                       run_mode=RunMode.MULTIRUN if sweep else RunMode.RUN, with_log_configuration=False)
        except Exception as exc:  # noqa: BLE001 - every composition failure is the user's config
            raise _config_system_error(exc, hydra.config_loader) from None
        if sweep or str(cfg.hydra.get("mode")) == "MULTIRUN":
            return
        HydraConfig.instance().set_config(cfg)
        run_dir = Path(str(cfg.hydra.run.dir)).expanduser().resolve()
        with _open(cfg.hydra.runtime):
            cfg.hydra.runtime.output_dir = str(run_dir)
        check_run_dir(run_dir)
        with _open(cfg):
            del cfg["hydra"]  # what the task sees
        check_config(cfg, check)
    finally:
        HydraConfig.instance().cfg = None
        GlobalHydra.instance().clear()


@contextlib.contextmanager
def _open(cfg: DictConfig) -> Iterator[None]:
    """Writable, and open to new keys (Hydra's config is read-only and struct)."""
    from omegaconf import open_dict, read_write

    with read_write(cfg), open_dict(cfg):
        yield


def _log_to_files(message: str) -> None:
    """``message`` as an error record in the run's log files only: the console gets the one ``error:`` line."""
    record = log.makeRecord(log.name, logging.ERROR, __file__, 0, message, None, None)
    for handler in logging.getLogger().handlers + log.handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handle(record)


def _discard_unused_run_dir() -> None:
    """A run stopped by a user mistake before it produced anything leaves no run dir (:func:`cnnlab.rundir.discard_if_unused`);
    the tracker is closed first, quietly, its files being in that directory."""
    from hydra.core.hydra_config import HydraConfig

    from cnnlab.rundir import discard_if_unused, unused

    if not HydraConfig.initialized():
        return
    run_dir = Path(str(HydraConfig.get().run.dir)).expanduser().absolute()
    if unused(run_dir):
        close_wandb(quiet=True)
        discard_if_unused(run_dir)


def _module_name(fn: Callable) -> str:
    """``fn``'s module; for ``python -m cnnlab.train`` the module name rather than ``__main__``."""
    if fn.__module__ != "__main__":
        return fn.__module__
    spec = getattr(sys.modules["__main__"], "__spec__", None)
    return spec.name if spec is not None else fn.__module__


def hydra_main(config_name: str, argv: Callable[[list[str]], list[str]] | None = None,
               check: Callable[[DictConfig], None] | None = None) -> Callable[[Callable[[DictConfig], Any]], Callable[[], Any]]:
    """Make ``task(cfg)`` a console script on ``conf/<config_name>.yaml``.

    ``argv`` rewrites the command line first (``resume=`` expansion); ``check(cfg)`` is the command's own
    cheap check, run before any work (before the run dir exists, and again inside each multirun job).
    """
    import hydra

    def decorate(task: Callable[[DictConfig], Any]) -> Callable[[], Any]:
        @functools.wraps(task)
        def job(cfg: DictConfig) -> Any:
            quiet_third_party()  # again: Hydra has configured logging for the job
            try:
                check_config(cfg, check)
                return task(cfg)
            except Exception as exc:  # noqa: BLE001 - only a UserError in the chain (or one from below) is handled
                err = user_error_of(exc) or error_from_below(exc, cfg)
                if err is None:
                    raise
                _log_to_files(f"error: {err}")
                if in_multirun():
                    raise err from exc  # the sweeper records this job as failed and goes on
                _discard_unused_run_dir()
                exit_with(err, exc)  # before Hydra's own reporting turns it into a traceback and exit 1

        # Hydra names the job (and its log file) after the task's module, not after this one
        job.__module__ = _module_name(task)
        hydra_job = hydra.main(version_base="1.3", config_path=CONF_DIR, config_name=config_name)(job)

        @functools.wraps(task)
        def main() -> Any:
            quiet_third_party()
            with user_errors():
                args = quote_plain_values(sys.argv[1:])
                if argv is not None:
                    args = argv(args)
                if any(a in ("--help", "-h") for a in args):
                    print(command_help(config_name, args, Path(sys.argv[0]).name))
                    return None
                precheck(config_name, args, check)
                sys.argv = [sys.argv[0], *args]
                return hydra_job()

        main.task = task  # type: ignore[attr-defined]
        return main

    return decorate


# --------------------------------------------------------------------------------------------- help and noise
def command_help(config_name: str, argv: Sequence[str], prog: str = "") -> str:
    """``--help`` of a Hydra command: the config groups its config uses (with their options) and its config.
    Hydra's own help lists every group in conf/, most of them other commands'."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_automatic_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.types import RunMode

    overrides = [a for a in argv if not a.startswith("-")]
    GlobalHydra.instance().clear()
    hydra = Hydra.create_main_hydra2(task_name=config_name,
                                     config_search_path=create_automatic_config_search_path(None, None, CONF_DIR))
    try:
        cfg = hydra.compose_config(config_name, overrides, run_mode=RunMode.RUN, with_log_configuration=False)
        loader = hydra.config_loader
        groups = sorted(g for g in cfg.hydra.runtime.choices if not str(g).startswith("hydra"))
        options = {g: loader.get_group_options(g) for g in groups}
    except Exception as exc:  # noqa: BLE001 - a mistake in the overrides given with --help
        raise _config_system_error(exc, hydra.config_loader) from None
    finally:
        GlobalHydra.instance().clear()
    with _open(cfg):
        del cfg["hydra"]
    name = prog if prog.startswith("cnnlab") else f"cnnlab-{config_name}"
    lines = [f"{name}: conf/{config_name}.yaml, changed by overrides (key=value, group=option)", "",
             "== Configuration groups ==", "Compose your configuration from these groups (group=option)", ""]
    lines += [f"{g}: {', '.join(o)}" for g, o in options.items() if o]
    lines += ["", "== Config ==", "Override anything in the config (foo.bar=value)", "",
              OmegaConf.to_yaml(cfg).rstrip(), "", "Hydra's own options: --hydra-help"]
    return "\n".join(lines)


class _DropTips(logging.Filter):
    """Lightning's advertisement for another logger says nothing about this run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "litlogger" not in str(record.msg)


_TIPS = _DropTips()


def quiet_third_party() -> None:
    """Silence third-party output that tells the user nothing about their run: Lightning's "litlogger" tip and
    deprecation warnings raised inside Lightning and torch about their own internals, Captum's notes on its own hooks."""
    import warnings

    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_TIPS)
    logging.getLogger("lightning.pytorch.utilities.rank_zero").addFilter(_TIPS)
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")
    # Captum's guided backprop / deconvnet announce the ReLU hooks they add and remove again within each call
    warnings.filterwarnings("ignore", message=r"Setting backward hooks on ReLU activations")
