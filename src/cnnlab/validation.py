"""Value checks on the composed config, run before any work (no torch import).

Hydra overrides arrive untyped (``seed=abc`` is the string ``"abc"``): without these checks a wrong
type surfaces minutes later as a traceback from deep inside Lightning or torch. Each rule applies to a
key only where the composed config has it, so one table serves every command.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

from omegaconf import DictConfig, ListConfig, OmegaConf

from cnnlab.errors import UserError


@dataclass(frozen=True)
class Rule:
    """A number kind (``int`` or ``float``) with optional bounds; ``low_open``/``high_open`` exclude the bound;
    ``each``: the value is a list whose every item follows the rule; ``pair``: a value or a list of two (an image size
    ``[height, width]``)."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    nullable: bool = False
    each: bool = False
    pair: bool = False

    def accepts(self, value) -> bool:
        if self.pair and isinstance(value, (list, tuple, ListConfig)):
            return len(value) == 2 and all(self._accepts(v) for v in value)
        if self.each:
            return isinstance(value, (list, tuple, ListConfig)) and all(self._accepts(v) for v in value)
        return self._accepts(value)

    def _accepts(self, value) -> bool:
        if value is None:
            return self.nullable
        if isinstance(value, bool) or not isinstance(value, Real) or (self.kind is int and not isinstance(value, int)):
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return not (self.high is not None and (value > self.high or (self.high_open and value == self.high)))

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a number"
        if self.low is not None and self.high is not None:
            what += f" in {'(' if self.low_open else '['}{self.low:g}, {self.high:g}{')' if self.high_open else ']'}"
        elif self.low is not None:
            what += f" {'>' if self.low_open else '>='} {self.low:g}"
        what += " or null" if self.nullable else ""
        what += " or a [height, width] pair of them" if self.pair else ""
        return f"a list of {what.replace('an integer', 'integers').replace('a number', 'numbers')}" if self.each else what


POSITIVE_INT = Rule(int, low=1)
FRACTION = Rule(float, 0, 1, low_open=True)  # (0, 1]

#: dotted key -> rule; keys a command's config does not have are skipped
RULES: dict[str, Rule] = {
    "seed": Rule(int, nullable=True),
    "trainer.max_epochs": Rule(int, low=-1, nullable=True),
    "trainer.min_epochs": Rule(int, low=0, nullable=True),
    "trainer.max_steps": Rule(int, low=-1),
    "trainer.accumulate_grad_batches": POSITIVE_INT,
    "trainer.check_val_every_n_epoch": Rule(int, low=1, nullable=True),
    "trainer.log_every_n_steps": Rule(int, low=1, nullable=True),
    "trainer.gradient_clip_val": Rule(float, low=0, nullable=True),
    "model.optimizer.lr": Rule(float, low=0, low_open=True),
    "model.optimizer.weight_decay": Rule(float, low=0),
    "model.optimizer.momentum": Rule(float, low=0),
    "data.batch_size": POSITIVE_INT,
    "data.eval_batch_size": POSITIVE_INT,
    "data.image_size": Rule(int, low=1, pair=True),
    "data.num_workers": Rule(int, low=0),
    "data.train_limit": Rule(int, low=1, nullable=True),
    "data.test_limit": Rule(int, low=1, nullable=True),
    "data.val_limit": Rule(int, low=1, nullable=True),
    "data.label_fraction": FRACTION,
    "data.synthetic.n_train": POSITIVE_INT,
    "data.synthetic.n_test": POSITIVE_INT,
    "data.synthetic.num_classes": POSITIVE_INT,
    "data.synthetic.seed": Rule(int),
    "backbone.width": POSITIVE_INT,
    "model.dropout": Rule(float, 0, 1, high_open=True),  # [0, 1)
    "model.label_smoothing": Rule(float, 0, 1),
    "data.val_fraction": Rule(float, 0, 1, high_open=True),  # [0, 1)
    "batch_size": POSITIVE_INT,
    "limit": Rule(int, low=1, nullable=True),
    "threads": Rule(int, low=1, nullable=True),
    "seeds": Rule(int, low=0, each=True),  # cnnlab-gap
}


def check_values(cfg: DictConfig, rules: dict[str, Rule] = RULES) -> None:
    """Raise a :class:`UserError` naming the first key whose value breaks its rule, then check the rules
    that join several keys (:func:`check_selection`, :func:`check_classes`)."""
    for key, rule in rules.items():
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig) or leaf not in node or OmegaConf.is_missing(node, leaf):
            continue
        value = OmegaConf.select(cfg, key)
        if not rule.accepts(value):
            raise UserError(f"{key}={value} is not valid: {key} must be {rule.describe()}")
    check_selection(cfg)
    data = cfg.get("data") if isinstance(cfg.get("data", None), DictConfig) else None
    if _is_classifier_training(cfg) and data is not None and data.get("name") == "synthetic" and data.get("synthetic"):
        n = data.synthetic.get("num_classes")
        check_classes([None] * n if isinstance(n, int) else None, data)


def _is_classifier_training(cfg: DictConfig) -> bool:
    """A cnnlab-train run of a model that learns class labels (its config has ``model.num_classes``)."""
    model = cfg.get("model", None)
    return "monitor" in cfg and isinstance(model, DictConfig) and "num_classes" in model and bool(cfg.get("train", True))


def check_selection(cfg: DictConfig) -> None:
    """A training run chooses its best checkpoint on ``monitor``; with ``data.val_fraction=0`` the val split is the
    test split, so that choice (and anything else read from val) would be made on test: refused."""
    data = cfg.get("data", None)
    if not ("monitor" in cfg and isinstance(data, DictConfig) and "val_fraction" in data and cfg.get("train", True)):
        return
    monitor = str(cfg.get("monitor") or "")
    if data.get("val_fraction") == 0 and monitor.startswith("val/"):
        raise UserError(f"data.val_fraction=0 leaves no validation split, so the best checkpoint (monitor={monitor}) "
                        "would be chosen on the test split: set data.val_fraction > 0 (e.g. 0.1), or monitor a "
                        "training metric (monitor=train/loss monitor_mode=min)")


def check_classes(classes: list | None, data: DictConfig) -> None:
    """A classifier needs two classes or more (one class has nothing to tell apart: no accuracy to monitor)."""
    if classes is None or len(classes) >= 2:
        return
    if data.get("name") == "synthetic" and not data.get("source"):
        raise UserError(f"data.synthetic.num_classes={len(classes)}: a classifier needs at least 2 classes; "
                        "set data.synthetic.num_classes >= 2")
    raise UserError(f"{data.get('source')} has {len(classes)} class ({', '.join(map(str, classes))}): a classifier needs "
                    "at least 2 class directories (<class>/<image>); add another class, or train a colorizer "
                    "(experiment=colorize_imagefolder), which needs no labels")
