"""Gap arithmetic (paired t-intervals, the bootstrap gap), the validation-only choices, the report files."""

import json
import math

import numpy as np
import pytest

from cnnlab.gap.arithmetic import (NEGATIVE_DENOMINATOR, ZERO_DENOMINATOR, format_acc, format_gap, gap_closed, gap_interval,
                                   mean_ci, paired_difference, t_critical)
from cnnlab.gap.arms import plan_arms
from cnnlab.gap.report import markdown_tables, summarize, write_report
from cnnlab.gap.select import best_candidate, best_tap


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


def test_choices_read_only_validation_numbers():
    assert best_candidate({0.01: 0.40, 0.05: 0.45, 0.1: 0.45}) == 0.05, "ties go to the earlier (smaller) rate"
    assert best_candidate({"lr0.1": 0.45, "lr0.05": 0.45}, order=["lr0.05", "lr0.1"]) == "lr0.05", "ties follow the given order"
    assert best_candidate({"a": None, "b": 0.1}) == "b"
    assert best_tap({"a": [0.3, 0.5], "b": [0.4, 0.4], "c": [None, 0.2]}, ["a", "b", "c"]) == "a"
    with pytest.raises(ValueError):
        best_candidate({0.01: None})


def _probe(val: dict, test: dict, wd=1e-4) -> dict:
    return {"taps": list(val), "linear": {t: {"val": val[t], "test": test[t], "weight_decay": wd, "grid": {}} for t in val},
            "knn": {t: {"val": val[t] - 0.05, "test": test[t] - 0.05, "k": 20, "temperature": 0.1} for t in val}}


def _fake_collected(test_shift: float = 0.0) -> dict:
    """Two paired runs; colorization's best tap on val (conv2) is not its best on test (conv3)."""
    units = [(0, 0), (0, 1)]
    val = {"supervised": {"conv1": 0.40, "conv2": 0.60, "conv3": 0.70}, "random": {"conv1": 0.32, "conv2": 0.30, "conv3": 0.20},
           "colorization": {"conv1": 0.35, "conv2": 0.50, "conv3": 0.45}}
    test = {"supervised": {"conv1": 0.40, "conv2": 0.60, "conv3": 0.70}, "random": {"conv1": 0.30, "conv2": 0.30, "conv3": 0.20},
            "colorization": {"conv1": 0.35, "conv2": 0.45, "conv3": 0.55}}
    probe = {i: {u: _probe(val[i], {t: a + test_shift + 0.01 * k for t, a in test[i].items()}) for k, u in enumerate(units)}
             for i in val}
    ft = {i: {0.1: {u: {"lr": 0.01, "step": 10, "val": 0.3 + 0.1 * j, "test": 0.2 + 0.1 * j + 0.02 * k + test_shift,
                        "grid": {"0.01": 0.3, "0.05": 0.2}} for k, u in enumerate(units)}}
          for j, i in enumerate(["random", "colorization", "supervised"])}
    return {"probe": probe, "finetune": ft}


def test_summarize_pairs_runs_and_picks_the_best_tap_on_val():
    res = summarize(_fake_collected(), ["random", "colorization", "supervised"], [0.1])
    assert res["probe"]["best_tap"]["colorization"]["tap"] == "conv2", "chosen on val, not on test (conv3)"
    assert res["probe"]["best_tap"]["colorization"]["test"]["mean"] == pytest.approx(0.455)
    conv2 = res["probe"]["linear_gap"]["conv2"]
    assert conv2["colorization - random"]["mean"] == pytest.approx(0.15) and conv2["colorization - random"]["n"] == 2
    assert conv2["gap_closed"]["mean"] == pytest.approx(0.5)
    best = res["probe"]["linear_gap"]["best"]["gap_closed"]["mean"]
    assert best == pytest.approx((0.455 - 0.305) / (0.705 - 0.305)), "each init at its own val-chosen tap"
    ft = res["finetune"]["0.1"]
    assert ft["gap"]["gap_closed"]["mean"] == pytest.approx(0.5) and ft["random"]["lr_chosen"] == [0.01, 0.01]
    # the test numbers move, no choice does
    shifted = summarize(_fake_collected(test_shift=-0.1), ["random", "colorization", "supervised"], [0.1])
    assert {i: b["tap"] for i, b in shifted["probe"]["best_tap"].items()} == {i: b["tap"] for i, b in res["probe"]["best_tap"].items()}


def test_report_files_table_and_plot(tmp_path):
    import matplotlib.image

    res = summarize(_fake_collected(), ["random", "colorization", "supervised"], [0.1])
    res.update(budget="test", backbone={"arch": "vgg_cifar", "width": 16}, data={"name": "cifar10"},
               protocol={"seeds": [0], "label_subsets": [0, 1]}, grids={"finetune_lr": [0.01, 0.05], "knn": {"k": 20, "temperature": 0.1}})
    paths = write_report(res, tmp_path, "a test setup")
    loaded = json.loads(paths["json"].read_text())
    assert loaded["probe"]["linear_gap"]["conv2"]["gap_closed"]["mean"] == pytest.approx(0.5)
    md = paths["markdown"].read_text()
    lines = md.splitlines()
    header = next(ln for ln in lines if ln.startswith("| init | conv1"))
    assert header.split("|")[2:5] == [" conv1 ", " conv2 ", " conv3 "]
    rows = [ln.split("|")[1].strip() for ln in lines if ln.startswith("| ") and not ln.startswith("| init")]
    assert rows[:6] == ["supervised", "random", "colorization", "colorization − random (points)",
                        "supervised − colorization (points)", "gap closed"], "the published tables' row order"
    assert "45.5 [39.1, 51.9], n = 2 (conv2)" in md, "the best tap with its interval and n, chosen on val"
    assert "±" not in md and "test split" in md and "validation" in md
    assert "lr chosen on val, random | 0.01 ×2" in md
    img = matplotlib.image.imread(paths["plot"])
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 600
    assert markdown_tables(res) in md


def test_plan_orders_trunks_probes_then_candidates_before_their_test():
    arms = plan_arms(["random", "colorization", "supervised"], [0, 1], [0.01, 0.1], [0, 1], [0.01, 0.05], [0, 1])
    assert len(arms) == 3 * 2 + 3 * 2 * 2 + 2 * 2 * 2 * 3 * 3
    names = [a.name for a in arms]
    assert len(set(names)) == len(names)
    assert names.index("supervised_seed1") < names.index("probe_random_seed0_sub0") < names.index("finetune_random_f0.01_seed0_sub0_lr0.01")
    for a in arms:
        if a.kind == "finetune_test":
            assert all(names.index(n) < names.index(a.name) for n in a.needs) and len(a.needs) == 2
    assert math.isclose(arms[-1].fraction, 0.1)
