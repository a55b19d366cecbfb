"""Gap arithmetic, aggregation over seeds, the report files, and the override plumbing."""

import json
import math

import pytest

from cnnlab.gap.arithmetic import NEGATIVE_DENOMINATOR, ZERO_DENOMINATOR, format_gap, gap_closed, gap_summary, mean_std
from cnnlab.gap.arms import dedupe, flatten_overrides, format_value, plan_arms
from cnnlab.gap.report import markdown_tables, summarize, write_report


def test_gap_closed_values_and_undefined_denominators():
    assert gap_closed(0.3, 0.2, 0.4) == pytest.approx((0.5, ""))
    assert gap_closed(0.1, 0.2, 0.4)[0] == pytest.approx(-0.5)  # worse than random: negative, still defined
    assert gap_closed(0.5, 0.2, 0.4)[0] == pytest.approx(1.5)  # better than supervised: above 1
    assert gap_closed(0.3, 0.4, 0.4) == (None, ZERO_DENOMINATOR)
    assert gap_closed(0.3, 0.5, 0.4) == (None, NEGATIVE_DENOMINATOR)
    assert gap_closed(None, 0.2, 0.4)[0] is None
    assert gap_closed(float("nan"), 0.2, 0.4)[0] is None


def test_gap_summary_over_seeds_reports_undefined_seeds():
    s = gap_summary([0.3, 0.35, 0.3], [0.2, 0.2, 0.4], [0.4, 0.5, 0.4])
    assert s["values"][:2] == pytest.approx([0.5, 0.5]) and s["values"][2] is None
    assert s["n"] == 2 and s["mean"] == pytest.approx(0.5) and s["std"] == pytest.approx(0.0)
    assert s["notes"][2] == ZERO_DENOMINATOR
    assert "1 seed(s) undefined" in format_gap(s)
    bad = gap_summary([0.3], [0.5], [0.4])
    assert bad["mean"] is None and format_gap(bad) == "n/a (supervised < random)"
    m = mean_std([1.0, 3.0, None])
    assert m["mean"] == 2.0 and m["std"] == pytest.approx(math.sqrt(2)) and m["n"] == 2


def _fake_results():
    taps = ["conv1", "conv2", "conv3"]
    probe = {
        "supervised": {0: {"conv1": 0.40, "conv2": 0.60, "conv3": 0.70}, 1: {"conv1": 0.42, "conv2": 0.62, "conv3": 0.72}},
        "random": {0: {"conv1": 0.30, "conv2": 0.30, "conv3": 0.20}, 1: {"conv1": 0.32, "conv2": 0.30, "conv3": 0.22}},
        "colorization": {0: {"conv1": 0.35, "conv2": 0.45, "conv3": 0.45}, 1: {"conv1": 0.32, "conv2": 0.48, "conv3": 0.45}},
    }
    finetune = {i: {s: {0.1: 0.2 + 0.1 * k + 0.01 * s, 1.0: 0.5 + 0.1 * k} for s in (0, 1)}
                for k, i in enumerate(["random", "colorization", "supervised"])}
    return summarize(probe, finetune, ["random", "colorization", "supervised"], [0, 1], taps, [0.1, 1.0])


def test_summarize_per_tap_best_tap_and_fractions():
    res = _fake_results()
    assert res["probe"]["supervised"]["conv3"]["mean"] == pytest.approx(0.71)
    assert res["probe_best"]["random"]["tap"] == "conv1" and res["probe_best"]["supervised"]["tap"] == "conv3"
    assert res["probe_gap"]["conv2"]["values"] == pytest.approx([0.5, 0.5625])
    assert res["probe_gap"]["conv1"]["values"] == pytest.approx([0.5, 0.0])
    # best tap: each init at its own best layer (colorization conv3, random conv1, supervised conv3)
    assert res["probe_gap"]["best"]["values"][0] == pytest.approx((0.45 - 0.30) / (0.70 - 0.30))
    assert res["finetune_gap"]["0.1"]["mean"] == pytest.approx(0.5)


def test_report_files_table_and_plot(tmp_path):
    import matplotlib.image

    res = _fake_results()
    paths = write_report(res, tmp_path, "test")
    loaded = json.loads(paths["json"].read_text())
    assert loaded["probe_gap"]["conv2"]["mean"] == pytest.approx(res["probe_gap"]["conv2"]["mean"])
    md = paths["markdown"].read_text()
    lines = md.splitlines()
    header = next(ln for ln in lines if ln.startswith("| init | conv1"))
    assert header.split("|")[2:5] == [" conv1 ", " conv2 ", " conv3 "]
    rows = [ln.split("|")[1].strip() for ln in lines if ln.startswith("| ") and not ln.startswith("| init")]
    assert rows[:4] == ["supervised", "random", "colorization", "gap closed"], "the published tables' row order"
    assert "53% ± 4" in md  # conv2 gap: mean of 50% and 56%
    assert "| gap closed | 50% ± 0 | 50% ± 0 |" in md
    img = matplotlib.image.imread(paths["plot"])
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 400
    assert markdown_tables(res) in md


def test_override_formatting_and_plan():
    assert format_value("/a/b-c.tar.gz") == "/a/b-c.tar.gz"
    assert format_value("has space") == "'has space'"
    assert format_value("0.5") == "'0.5'" and format_value("null") == "'null'"
    assert format_value([1, "x", None, True]) == "[1,x,null,true]"
    assert flatten_overrides("data", {"a": 1, "s": {"n": 2}, "z": None, "skip": 3}, skip=("skip",)) == ["data.a=1", "data.s.n=2", "data.z=null"]
    assert dedupe(["a=1", "b=2", "++a=3", "c=[1,2]"]) == ["b=2", "++a=3", "c=[1,2]"]
    arms = plan_arms(["random", "colorization", "supervised"], [0, 1], [0.1, 1.0])
    assert len(arms) == 2 * (3 + 3 + 6)
    names = [a.name for a in arms]
    assert names.index("supervised_seed1") < names.index("probe_random_seed0") < names.index("finetune_supervised_f0.1_seed0")
    assert names.index("finetune_supervised_f0.1_seed1") < names.index("finetune_random_f1_seed0")
    assert len(set(names)) == len(names)
