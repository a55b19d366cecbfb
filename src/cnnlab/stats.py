"""The project's statistics, one home: t-intervals, paired differences, Fieller's interval for a ratio of paired
means (the gap closed), Wilson's interval for a proportion, seed-level aggregation, and their formatting.

Every interval here is a 95% confidence interval whose ``n`` counts independent units. In the gap experiment the
unit is the *pretraining seed*: the label subsets of one seed share its trunks, so they are averaged within the
seed first (:func:`seed_means`) and the intervals run over seeds (df = seeds - 1). With per-seed accuracies
``c_i, r_i, s_i`` (colorization, random, supervised) of seed ``i``:

- paired difference ``d_i = c_i - r_i``: mean, 95% t-interval ``mean ± t(0.975, n-1) * sd / sqrt(n)``;
- gap closed ``sum_i (c_i - r_i) / sum_i (s_i - r_i)`` (the ratio of the mean differences), with Fieller's 95%
  interval for a ratio of two correlated means (the same t(0.975, n-1) as the differences). It is the interval
  reported. A paired percentile bootstrap (units resampled with replacement, all three inits together) is kept
  beside it as ``bootstrap_low``/``bootstrap_high``; it is not reported on its own because with few units it
  cannot be wider than the spread of the per-unit ratios (with n = 2 it is the two ratios themselves), which is
  exactly the "spread of two values" a confidence interval must not be.

When supervised pretraining does not beat the random init (a zero or negative denominator) the ratio
means nothing: it is reported as undefined with the reason, never as a division error or a huge number.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Hashable, Iterable, Mapping, Sequence

import numpy as np

ZERO_DENOMINATOR = "undefined: supervised = random (zero denominator)"
NEGATIVE_DENOMINATOR = "undefined: supervised < random (negative denominator)"
MISSING = "undefined: an accuracy is missing"
CONFIDENCE = 0.95


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


def t_critical(n: int, confidence: float = CONFIDENCE) -> float | None:
    """Two-sided Student t critical value with ``n - 1`` degrees of freedom (None for n < 2)."""
    if n < 2:
        return None
    from scipy.stats import t  # scipy comes with scikit-learn

    return float(t.ppf(0.5 + confidence / 2, n - 1))


def mean_ci(values: Iterable[float | None], confidence: float = CONFIDENCE) -> dict:
    """``{"mean", "low", "high", "n", "values"}``: the mean of the finite values and its t-interval.

    ``low``/``high`` are None when n < 2 (one value has no interval); ``mean`` is None when n = 0.
    """
    values = list(values)
    ok = [float(v) for v in values if _finite(v)]
    n = len(ok)
    out = {"mean": None, "low": None, "high": None, "n": n, "values": values}
    if not ok:
        return out
    m = sum(ok) / n
    out["mean"] = m
    t = t_critical(n, confidence)
    if t is not None:
        half = t * math.sqrt(sum((v - m) ** 2 for v in ok) / (n - 1)) / math.sqrt(n)
        out["low"], out["high"] = m - half, m + half
    return out


def mean_halfwidth(values: Iterable[float]) -> tuple[float, float]:
    """``(mean, half-width of its 95% t-interval)`` of independent values (half-width nan for n < 2): the compact form
    per-image analyses report (their n is hundreds of images, where t and normal intervals agree)."""
    s = mean_ci([float(v) for v in values])
    half = float("nan") if s["low"] is None else s["high"] - s["mean"]
    return (float("nan") if s["mean"] is None else s["mean"]), half


def seed_means(by_unit: Mapping[tuple[int, Hashable], float | None]) -> dict[int, float | None]:
    """``{seed: mean over its label subsets}`` from ``{(seed, subset): value}``: the independent unit of the gap.

    Missing (None / non-finite) values drop out of their seed's mean; a seed with none left maps to None.
    """
    per: dict[int, list[float]] = defaultdict(list)
    seeds: list[int] = []
    for (seed, _), v in by_unit.items():
        if seed not in seeds:
            seeds.append(seed)
        if _finite(v):
            per[seed].append(float(v))
    return {s: (sum(per[s]) / len(per[s]) if per[s] else None) for s in sorted(seeds)}


def wilson_interval(successes: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """The 95% Wilson score interval of a binomial proportion ``successes / n`` (nan, nan for n = 0)."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    # at p = 0 or 1 the bound is exactly that p (the formula leaves a rounding error there)
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))


def paired_difference(a: Sequence[float | None], b: Sequence[float | None], confidence: float = CONFIDENCE) -> dict:
    """``a - b`` per paired run (units where either is missing drop out), its mean and t-interval."""
    return mean_ci([x - y if _finite(x) and _finite(y) else None for x, y in zip(a, b)], confidence)


def gap_interval(colorization: Sequence[float | None], random: Sequence[float | None], supervised: Sequence[float | None],
                 resamples: int = 10_000, seed: int = 0, confidence: float = CONFIDENCE) -> dict:
    """The gap closed over paired runs, with Fieller's interval (and the paired bootstrap beside it).

    Returns ``{"mean", "low", "high", "method", "n", "note", "bootstrap_low", "bootstrap_high",
    "undefined_resamples"}``: ``mean`` is the ratio of the mean differences (None with ``note`` when undefined);
    the interval is None for n < 2, when more than ``1 - confidence`` of the bootstrap resamples have a
    denominator <= 0, and when Fieller's set is unbounded (the denominator is not distinguishable from 0).
    """
    units = [(c, r, s) for c, r, s in zip(colorization, random, supervised) if _finite(c) and _finite(r) and _finite(s)]
    n = len(units)
    out = {"mean": None, "low": None, "high": None, "method": "Fieller, t(0.975, n-1)", "n": n, "note": "",
           "bootstrap_low": None, "bootstrap_high": None, "undefined_resamples": 0, "resamples": 0}
    if not units:
        out["note"] = MISSING
        return out
    arr = np.asarray(units, dtype=np.float64)
    num, den = arr[:, 0] - arr[:, 1], arr[:, 2] - arr[:, 1]
    out["mean"], out["note"] = gap_closed(*(float(v) for v in arr.mean(0)))
    if out["mean"] is None or n < 2:
        return out
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    nums, dens = num[idx].mean(1), den[idx].mean(1)
    defined = dens > 1e-9
    out["resamples"] = resamples
    out["undefined_resamples"] = int((~defined).sum())
    if out["undefined_resamples"] > (1 - confidence) * resamples:
        out["note"] = f"no interval: {out['undefined_resamples']} of {resamples} resamples have supervised <= random"
        return out
    ratios = nums[defined] / dens[defined]
    tail = 100 * (1 - confidence) / 2
    out["bootstrap_low"], out["bootstrap_high"] = (float(v) for v in np.percentile(ratios, [tail, 100 - tail]))
    out["low"], out["high"], why = fieller_interval(num, den, confidence)
    if out["low"] is None:
        out["note"] = why
    return out


def fieller_interval(num: np.ndarray, den: np.ndarray, confidence: float = CONFIDENCE) -> tuple[float | None, float | None, str]:
    """Fieller's interval for ``mean(num) / mean(den)`` over ``n`` paired units: ``(low, high, "")``.

    The set of ratios ``rho`` with ``|mean(num) - rho * mean(den)| <= t * se(num - rho * den)``, t with n - 1
    degrees of freedom. ``(None, None, reason)`` when the denominator is not distinguishable from zero at this n
    (the set is then unbounded: no finite interval exists).
    """
    n = len(num)
    t = t_critical(n, confidence)
    a, b = float(num.mean()), float(den.mean())
    cov = np.cov(np.stack([num, den]), ddof=1) / n
    v11, v12, v22 = float(cov[0, 0]), float(cov[0, 1]), float(cov[1, 1])
    qa, qb, qc = b * b - t * t * v22, a * b - t * t * v12, a * a - t * t * v11
    if qa <= 0:
        return None, None, f"no interval: supervised - random is not distinguishable from 0 at n = {n} (Fieller)"
    half = math.sqrt(max(0.0, qb * qb - qa * qc))
    return (qb - half) / qa, (qb + half) / qa, ""


def _short(note: str) -> str:
    return note.split(": ", 1)[-1].split(" (")[0]


def format_interval(stats: dict, scale: float = 100.0, digits: int = 1, unit: str = "", with_n: bool = True) -> str:
    """``"45.1 [43.0, 47.2], n = 6"``; ``"45.1, n = 1 (no interval)"``; ``"n/a (reason)"``; ``"–"`` when missing.
    ``with_n=False``: ``"45.1 [43.0, 47.2]"`` (a table whose caption gives n)."""
    if stats.get("mean") is None:
        note = stats.get("note")
        return f"n/a ({_short(note)})" if note else ("n/a" if not with_n else "–")
    fmt = f"{{:.{digits}f}}{unit}"
    text = fmt.format(scale * stats["mean"])
    if stats.get("low") is not None:
        text += f" [{fmt.format(scale * stats['low'])}, {fmt.format(scale * stats['high'])}]"
    if not with_n:
        return text
    text += f", n = {stats['n']}"
    if stats.get("low") is None:
        reason = stats["note"] if str(stats.get("note", "")).startswith("no interval") else "no interval"
        text += f" ({reason})"
    return text


def format_gap(stats: dict) -> str:
    """The gap closed in percent: ``"48% [30%, 61%], n = 6"`` or ``"n/a (supervised < random)"``."""
    return format_interval(stats, digits=0, unit="%")


def format_acc(stats: dict) -> str:
    """An accuracy or a difference in percentage points: ``"45.1 [43.0, 47.2], n = 6"``."""
    return format_interval(stats)
