"""cnnlab.stats: t-intervals, paired differences, Fieller's gap interval, Wilson, seed-level aggregation, formatting."""

import numpy as np
import pytest

from cnnlab.stats import (NEGATIVE_DENOMINATOR, ZERO_DENOMINATOR, format_acc, format_gap, format_interval, gap_closed, gap_interval,
                          mean_ci, mean_halfwidth, paired_difference, seed_means, t_critical, wilson_interval)


def test_gap_closed_values_and_undefined_denominators():
    assert gap_closed(0.3, 0.2, 0.4) == pytest.approx((0.5, ""))
    assert gap_closed(0.1, 0.2, 0.4)[0] == pytest.approx(-0.5)  # worse than random: negative, still defined
    assert gap_closed(0.5, 0.2, 0.4)[0] == pytest.approx(1.5)  # better than supervised: above 1
    assert gap_closed(0.3, 0.4, 0.4) == (None, ZERO_DENOMINATOR)
    assert gap_closed(0.3, 0.5, 0.4) == (None, NEGATIVE_DENOMINATOR)
    assert gap_closed(None, 0.2, 0.4)[0] is None
    assert gap_closed(float("nan"), 0.2, 0.4)[0] is None


def test_t_interval_against_a_hand_computed_case():
    # d = [1, 2, 3, 6]: mean 3, sample sd sqrt(14/3) = 2.1602, se = 1.0801; t(0.975, df=3) = 3.182 (t table)
    # half width 3.182 * 1.0801 = 3.437 -> [-0.437, 6.437]
    assert t_critical(4) == pytest.approx(3.182, abs=1e-3)
    assert t_critical(2) == pytest.approx(12.706, abs=1e-3)  # two runs: the interval is 12.7 standard errors wide
    s = paired_difference([1.5, 2.5, 4.0, 6.5], [0.5, 0.5, 1.0, 0.5])
    assert s["n"] == 4 and s["mean"] == pytest.approx(3.0)
    assert s["low"] == pytest.approx(-0.437, abs=2e-3) and s["high"] == pytest.approx(6.437, abs=2e-3)
    one = mean_ci([0.4, None])
    assert one["n"] == 1 and one["mean"] == 0.4 and one["low"] is None, "one value has no interval"
    assert format_acc(one) == "40.0, n = 1 (no interval)"
    assert format_acc(s) == "300.0 [-43.7, 643.7], n = 4"
    assert "±" not in format_acc(s) + format_gap(gap_interval([0.3, 0.4], [0.2, 0.2], [0.4, 0.4]))


def test_bootstrap_gap_against_a_hand_computed_case():
    # two paired runs with the same denominator 0.2 and numerators 0.1, 0.2: a resample of two runs has mean
    # numerator 0.1 (p 1/4), 0.15 (1/2) or 0.2 (1/4), so the ratio is 0.5, 0.75 or 1.0 and the 2.5% / 97.5%
    # percentiles are 0.5 and 1.0; the point estimate is the ratio of the means, 0.15 / 0.2
    g = gap_interval([0.3, 0.4], [0.2, 0.2], [0.4, 0.4])
    assert g["mean"] == pytest.approx(0.75) and g["n"] == 2
    assert g["bootstrap_low"] == pytest.approx(0.5) and g["bootstrap_high"] == pytest.approx(1.0)
    # the reported interval is Fieller's: with a constant denominator it is mean(num) / b ± t * se(num) / b,
    # t(0.975, 1) = 12.706, se = sd([0.1, 0.2]) / sqrt(2) = 0.05: 0.75 ± 12.706 * 0.05 / 0.2 = [-2.4265, 3.9265]
    assert g["low"] == pytest.approx(0.75 - 12.7062 * 0.05 / 0.2, abs=1e-3)
    assert g["high"] == pytest.approx(0.75 + 12.7062 * 0.05 / 0.2, abs=1e-3)
    assert format_gap(g) == "75% [-243%, 393%], n = 2"
    # far wider than the bootstrap's [50%, 100%], which with two runs is only the spread of the two ratios
    bad = gap_interval([0.3], [0.5], [0.4])
    assert bad["mean"] is None and format_gap(bad) == "n/a (supervised < random)"
    # the mean denominator is positive, but (2/3)^3 = 30% of the resamples miss the one run where supervised
    # beats random: no interval rather than a misleading one
    shaky = gap_interval([0.3, 0.3, 0.3], [0.2, 0.2, 0.2], [0.1, 0.1, 0.9])
    assert shaky["mean"] == pytest.approx(0.1 / ((0.1 + 0.1 + 0.9) / 3 - 0.2)) and shaky["low"] is None
    assert "resamples have supervised <= random" in shaky["note"] and "no interval" in format_gap(shaky)
    assert gap_interval([0.3, None], [0.2, 0.2], [0.4, 0.4])["n"] == 1


def test_fieller_interval_is_unbounded_when_the_denominator_is_not_distinguishable_from_zero():
    # supervised - random = 0.01 and 0.31: mean 0.16, se 0.15, t(0.975, 1) * se = 1.9 > 0.16
    g = gap_interval([0.25, 0.35], [0.2, 0.2], [0.21, 0.51])
    assert g["mean"] == pytest.approx(0.1 / 0.16) and g["low"] is None and g["high"] is None
    assert "not distinguishable from 0" in g["note"] and "no interval" in format_gap(g)
    # six tight paired runs: a finite interval that contains the point estimate and tightens with n
    rng = np.random.default_rng(0)
    r = 0.4 + 0.01 * rng.standard_normal(6)
    c, s_ = r + 0.1 + 0.01 * rng.standard_normal(6), r + 0.2 + 0.01 * rng.standard_normal(6)
    g6 = gap_interval(list(c), list(r), list(s_))
    assert g6["low"] < g6["mean"] < g6["high"] and g6["high"] - g6["low"] < 0.5


def test_wilson_interval():
    lo, hi = wilson_interval(0, 100)
    assert lo == 0.0 and 0.03 < hi < 0.04
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(1 - hi) and 0.09 < hi - 0.5 < 0.1


def test_seed_level_intervals_against_a_hand_computed_case():
    # 3 pretraining seeds x 2 label subsets; (random, colorization, supervised) per (seed, subset):
    units = {(0, 0): (0.30, 0.40, 0.50), (0, 1): (0.32, 0.44, 0.52),
             (1, 0): (0.28, 0.36, 0.48), (1, 1): (0.30, 0.40, 0.50),
             (2, 0): (0.33, 0.45, 0.53), (2, 1): (0.31, 0.47, 0.51)}
    r, c, s = ({u: v[k] for u, v in units.items()} for k in range(3))
    # subsets averaged within a seed: random 0.31, 0.29, 0.32; colorization 0.42, 0.38, 0.46; supervised 0.51, 0.49, 0.52
    assert seed_means(c) == pytest.approx({0: 0.42, 1: 0.38, 2: 0.46})
    rs, cs, ss = (list(seed_means(x).values()) for x in (r, c, s))
    # colorization - random per seed: 0.11, 0.09, 0.14; mean 0.11333, sd 0.025166, se 0.014530; t(0.975, df = 2) = 4.3027
    # half width 0.062517 -> [0.05082, 0.17585], n = 3 (seeds, not the 6 paired runs)
    d = paired_difference(cs, rs)
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.113333, abs=1e-5)
    assert d["low"] == pytest.approx(0.050816, abs=1e-4) and d["high"] == pytest.approx(0.175851, abs=1e-4)
    # supervised - random is 0.20 in every seed: Fieller reduces to mean(num) / 0.2 +- t * se(num) / 0.2
    # = 0.56667 +- 0.31258 -> [0.25408, 0.87925]
    g = gap_interval(cs, rs, ss)
    assert g["n"] == 3 and g["mean"] == pytest.approx(0.566667, abs=1e-5)
    assert g["low"] == pytest.approx(0.25408, abs=1e-4) and g["high"] == pytest.approx(0.87925, abs=1e-4)
    assert seed_means({(0, 0): None, (0, 1): 0.5, (1, 0): None}) == {0: 0.5, 1: None}, "a missing score drops out of its seed"


def test_compact_forms_for_analyses_and_tables():
    m, half = mean_halfwidth([1.0, 2.0, 3.0, 6.0])
    assert m == pytest.approx(3.0) and half == pytest.approx(3.437, abs=2e-3), "the same t-interval as mean_ci"
    assert format_interval(paired_difference([1.5, 2.5, 4.0, 6.5], [0.5, 0.5, 1.0, 0.5]), with_n=False) == "300.0 [-43.7, 643.7]"
    assert format_interval({"mean": None}, with_n=False) == "n/a"
