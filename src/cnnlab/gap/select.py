"""Every choice of the gap protocol, made on validation numbers only.

Each function takes validation accuracies and nothing else, so no test number can reach a choice; the
test split is read afterwards, once per final arm, with what was chosen here.
"""

from __future__ import annotations

from typing import Hashable, Mapping, Sequence


def best_candidate(val_by_candidate: Mapping[Hashable, float | None], order: Sequence[Hashable] | None = None) -> Hashable:
    """The candidate whose run reached the highest validation accuracy; ties go to the one earliest in ``order``
    (default: the mapping's order). The gap lists candidates by learning rate, smallest first, so a tie keeps the
    smaller rate."""
    order = list(val_by_candidate) if order is None else list(order)
    scored = [(acc, -order.index(c), c) for c, acc in val_by_candidate.items() if acc is not None]
    if not scored:
        raise ValueError("no candidate has a validation accuracy")
    return max(scored)[2]


def best_tap(val_by_tap: Mapping[str, Sequence[float | None]], taps: Sequence[str]) -> str | None:
    """The tap with the highest mean validation accuracy over paired runs (ties: the earlier tap).

    ``val_by_tap[tap]`` lists one validation accuracy per paired run; missing runs are left out.
    """
    best = None
    for i, tap in enumerate(taps):
        vals = [v for v in val_by_tap.get(tap, []) if v is not None]
        if vals:
            score = (sum(vals) / len(vals), -i)
            if best is None or score > best[0]:
                best = (score, tap)
    return None if best is None else best[1]
