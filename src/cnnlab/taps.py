"""The tapped-network protocol: what feature extraction, probes and analyses need of a network.

A tapped network names some of its intermediate outputs (*taps*) and runs just far enough to
return the ones asked for. :class:`~cnnlab.backbones.Backbone` (a trunk's named stages) and
:class:`~cnnlab.subject.Subject` (any network seen from RGB images, its layers by module name) are both
one, so ``features.iter_features`` or ``analysis.color_units`` take either.
"""

from __future__ import annotations

from typing import Callable, Iterable, Protocol, Sequence, runtime_checkable

import torch


@runtime_checkable
class TappedNetwork(Protocol):
    """``forward_taps(x, taps) -> {tap: (B, C, h, w)}`` with taps by name."""

    #: every tap, in execution order
    tap_names: list[str]
    #: the taps worth probing or analysing, in order
    default_taps: list[str]

    def check_taps(self, taps: Iterable[str]) -> list[str]:
        """``taps`` as a list, or a one-line :class:`~cnnlab.errors.UserError` naming an unknown one."""
        ...

    def forward_taps(self, x: torch.Tensor, taps: Sequence[str]) -> dict[str, torch.Tensor]:
        """``(B, C_in, H, W)`` -> ``{tap: activation}``; the forward pass stops after the last tap needed."""
        ...

    def tap_shapes(self, image_size: int) -> dict[str, tuple[int, ...]]:
        """``{tap: output shape without the batch}`` for a square ``image_size`` input."""
        ...


@torch.no_grad()
def dry_run_shapes(run: Callable[[torch.Tensor], dict[str, torch.Tensor]], channels: int, image_size: int,
                   like: torch.Tensor) -> dict[str, tuple[int, ...]]:
    """``{name: shape without the batch}`` of what ``run`` returns for one black ``(1, channels, s, s)`` image.

    The one dry run behind ``Backbone.tap_shapes`` and ``Subject.layer_shapes``; ``like`` gives the device
    and dtype (a parameter of the network). Entries that are not tensors (layers that did not run) are left out.
    """
    x = torch.zeros(1, channels, image_size, image_size, device=like.device, dtype=like.dtype)
    return {name: tuple(a.shape[1:]) for name, a in run(x).items() if isinstance(a, torch.Tensor)}
