"""Gap arithmetic: gap closed = (colorization - random) / (supervised - random), with spreads over seeds.

When supervised pretraining does not beat the random init (a zero or negative denominator) the ratio
means nothing: it is reported as undefined with the reason, never as a division error or a huge number.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

ZERO_DENOMINATOR = "undefined: supervised = random (zero denominator)"
NEGATIVE_DENOMINATOR = "undefined: supervised < random (negative denominator)"
MISSING = "undefined: an accuracy is missing"


def _finite(x) -> bool:
    return x is not None and isinstance(x, (int, float)) and math.isfinite(x)


def gap_closed(colorization: float | None, random: float | None, supervised: float | None, eps: float = 1e-9) -> tuple[float | None, str]:
    """``(fraction of the gap closed, note)``; the fraction is None (and the note says why) when undefined.

    A fraction may be below 0 (colorization worse than random) or above 1 (better than supervised).
    """
    if not (_finite(colorization) and _finite(random) and _finite(supervised)):
        return None, MISSING
    den = supervised - random
    if abs(den) <= eps:
        return None, ZERO_DENOMINATOR
    if den < 0:
        return None, NEGATIVE_DENOMINATOR
    return (colorization - random) / den, ""


def mean_std(values: Iterable[float | None]) -> dict:
    """``{"mean", "std", "n", "values"}`` over the finite values (std: sample std, 0 for one value; None if none)."""
    values = list(values)
    ok = [v for v in values if _finite(v)]
    if not ok:
        return {"mean": None, "std": None, "n": 0, "values": values}
    m = sum(ok) / len(ok)
    sd = math.sqrt(sum((v - m) ** 2 for v in ok) / (len(ok) - 1)) if len(ok) > 1 else 0.0
    return {"mean": m, "std": sd, "n": len(ok), "values": values}


def gap_summary(colorization: Sequence[float | None], random: Sequence[float | None], supervised: Sequence[float | None]) -> dict:
    """Gap closed per seed (the i-th seed of each init together), their mean and spread, and the gap of the means.

    Returns ``{"mean", "std", "n", "values", "notes", "of_means", "of_means_note"}``; ``notes`` holds one
    note per seed ("" where defined).
    """
    per_seed = [gap_closed(c, r, s) for c, r, s in zip(colorization, random, supervised)]
    summary = mean_std(v for v, _ in per_seed)
    summary["notes"] = [n for _, n in per_seed]
    m = {k: mean_std(v)["mean"] for k, v in (("c", colorization), ("r", random), ("s", supervised))}
    summary["of_means"], summary["of_means_note"] = gap_closed(m["c"], m["r"], m["s"])
    return summary


def format_gap(summary: dict) -> str:
    """``"48% ± 5"`` / ``"48%"`` / ``"n/a (supervised < random)"`` for tables."""
    if summary.get("mean") is None:
        note = next((n for n in summary.get("notes", []) if n), summary.get("of_means_note") or MISSING)
        return "n/a (" + note.split(": ", 1)[-1].split(" (")[0] + ")"
    text = f"{100 * summary['mean']:.0f}%"
    if summary.get("n", 0) > 1:
        text += f" ± {100 * summary['std']:.0f}"
    undefined = sum(1 for n in summary.get("notes", []) if n)
    if undefined:
        text += f" ({undefined} seed(s) undefined)"
    return text


def format_acc(stats: dict) -> str:
    """``"45.1 ± 0.3"`` (percent) or ``"–"`` when missing."""
    if stats.get("mean") is None:
        return "–"
    text = f"{100 * stats['mean']:.1f}"
    if stats.get("n", 0) > 1:
        text += f" ± {100 * stats['std']:.1f}"
    return text
