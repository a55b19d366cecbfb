"""Forward hooks registered by layer name, always removed when the run ends (also on error)."""

from __future__ import annotations

from typing import Iterable, Protocol, Sequence

import torch

#: the pseudo-layer holding the network output
LOGITS = "logits"
#: the pseudo-layer holding the image before robustness transforms (for image regularizers)
INPUT = "input"


class _StopForward(Exception):
    """Raised from a hook once every requested activation is recorded: the rest of the net is skipped."""


class NamedLayers(Protocol):
    """What :class:`LayerCapture` needs of a network (a :class:`~cnnlab.subject.Subject` is one)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    def layer(self, name: str) -> torch.nn.Module:
        """The submodule called ``name`` (a one-line error for an unknown name)."""
        ...

    def check_layers(self, names: Iterable[str]) -> list[str]:
        """``names`` as a list, each a layer or a pseudo-layer (``logits``, ``input``)."""
        ...


class LayerCapture:
    """Record the outputs of named layers of a :class:`~cnnlab.subject.Subject` during ``run(x)``.

    A context manager: hooks exist only between ``__enter__`` and ``__exit__`` (``close``), which
    runs even if the body raises. When the output (``logits``) is not needed, the forward pass
    stops once every requested layer has fired (DeepDream, inversion, style and feature analyses never
    pay for the head). A layer that runs more than once per forward pass keeps its last output (ResNet blocks
    call one ``relu`` module twice: pick ``layer1.0`` or ``layer1.0.bn2`` rather than ``layer1.0.relu``).
    """

    def __init__(self, subject: NamedLayers, layers: Sequence[str], stop_early: bool = True):
        names = [n for n in dict.fromkeys(layers) if n != INPUT]
        self.subject = subject
        self.layers = subject.check_layers(names)
        self.hooked = [n for n in self.layers if n != LOGITS]
        self.need_output = LOGITS in self.layers
        self.stop_early = stop_early and not self.need_output
        self.acts: dict[str, torch.Tensor] = {}
        self._handles: list = []

    def _hook(self, name: str):
        def hook(_module, _inputs, output):
            # a copy: torchvision blocks add in place to some outputs (ResNet's ``out += identity`` after bn2)
            self.acts[name] = output.clone() if isinstance(output, torch.Tensor) else output
            if self.stop_early and len(self.acts) == len(self.hooked):
                raise _StopForward

        return hook

    def open(self) -> "LayerCapture":
        if not self._handles:
            self._handles = [self.subject.layer(n).register_forward_hook(self._hook(n)) for n in self.hooked]
        return self

    def close(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.acts = {}

    def __enter__(self) -> "LayerCapture":
        return self.open()

    def __exit__(self, *exc) -> None:
        self.close()

    def run(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward ``x`` (RGB in [0, 1]); ``{layer: activation}`` for every requested layer that ran."""
        if self.hooked and not self._handles:
            raise RuntimeError("LayerCapture.run outside its context: use `with LayerCapture(...) as cap:`")
        self.acts = {}
        try:
            out = self.subject(x)
        except _StopForward:
            out = None
        acts = dict(self.acts)
        self.acts = {}
        if self.need_output:
            acts[LOGITS] = out
        return acts


def hook_count(module: torch.nn.Module) -> int:
    """Forward (pre-)hooks and backward hooks left on ``module`` and its children (0 after a clean run)."""
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in module.modules())
