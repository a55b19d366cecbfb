"""The gap's validation-only choices, its summary over pretraining seeds, the report files and the arm plan."""

import json
import math

import pytest

from cnnlab.gap.arms import plan_arms
from cnnlab.gap.report import markdown_tables, summarize, task_markdown, write_report
from cnnlab.gap.select import best_candidate, best_tap


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
    """Two pretraining seeds, one label subset each; colorization's best tap on val (conv2) is not its best on test (conv3)."""
    units = [(0, 0), (1, 0)]
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


def test_label_subsets_are_averaged_within_a_seed_before_the_interval():
    """Two subsets of each of two seeds are 4 paired runs but 2 independent units: every n is 2."""
    col = _fake_collected()
    for by_f in col["finetune"].values():
        runs = by_f[0.1]
        by_f[0.1] = {(s, k): {**runs[(s, 0)], "test": runs[(s, 0)]["test"] + (0.04 if k else -0.04)} for s in (0, 1) for k in (0, 1)}
    res = summarize(col, ["random", "colorization", "supervised"], [0.1])
    ft = res["finetune"]["0.1"]
    assert ft["seeds"] == [0, 1] and len(ft["units"]) == 4
    assert ft["random"]["test"]["n"] == 2 and ft["gap"]["colorization - random"]["n"] == 2 and ft["gap"]["gap_closed"]["n"] == 2
    # the +-0.04 of the two subsets cancels within each seed: the seed means are the single-subset values
    assert ft["random"]["test"]["values"] == pytest.approx([0.2, 0.22])


def test_report_files_table_and_plot(tmp_path):
    import matplotlib.image

    task = summarize(_fake_collected(), ["random", "colorization", "supervised"], [0.1])
    task.update(kind="classification", data={"name": "cifar10"}, grids={"finetune_lr": [0.01, 0.05], "knn": {"k": 20, "temperature": 0.1}})
    res = {"tasks": {"cls": task}, "budget": "test", "backbone": {"arch": "vgg_cifar", "width": 16}, "pool": {"name": "tinyimagenet"},
           "protocol": {"seeds": [0, 1], "label_subsets": [0]}}
    paths = write_report(res, tmp_path, "a test setup")
    loaded = json.loads(paths["json"].read_text())
    assert loaded["tasks"]["cls"]["probe"]["linear_gap"]["conv2"]["gap_closed"]["mean"] == pytest.approx(0.5)
    md = paths["markdown"].read_text()
    lines = md.splitlines()
    header = next(ln for ln in lines if ln.startswith("| init | conv1"))
    assert header.split("|")[2:5] == [" conv1 ", " conv2 ", " conv3 "]
    rows = [ln.split("|")[1].strip() for ln in lines if ln.startswith("| ") and not ln.startswith("| init")]
    assert rows[:6] == ["supervised", "random", "colorization", "colorization − random (points)",
                        "supervised − colorization (points)", "gap closed"], "the published tables' row order"
    assert "45.5 [39.1, 51.9], n = 2 (conv2)" in md, "the best tap with its interval and n, chosen on val"
    assert "±" not in md and "test split" in md and "validation" in md and "n = 2 pretraining seed(s)" in md
    assert "lr chosen on val, random | 0.01 ×2" in md and "## Task cls: classification on CIFAR-10" in md
    assert "PLUMBING CHECK" not in md, "only a report on synthetic data carries the banner"
    reading = md[md.index("### Reading"):]
    assert "47% of the gap" in reading and "linear probe at each init's tap chosen on val: 38% [37%, 38%], n = 2" in reading
    assert "excludes 0 (colorization beats random) and excludes the published 47%" in reading
    img = matplotlib.image.imread(paths["plot"])
    assert img.ndim == 3 and img.shape[0] > 200 and img.shape[1] > 600
    assert markdown_tables(res) in md
    res["synthetic"] = True
    assert markdown_tables(res).startswith("**PLUMBING CHECK ON SYNTHETIC DATA")


def test_title_names_the_arms_precision_unless_float32():
    from cnnlab.gap.report import setup_title

    res = {"tasks": {}, "budget": "standard", "backbone": {"arch": "vgg_cifar", "plan": "vgg8", "width": 16}, "pool": {"name": "tinyimagenet"},
           "protocol": {"seeds": [0, 1, 2, 3], "label_subsets": [0]}}
    plain = setup_title(res)
    assert "precision" not in plain and "bf16" not in plain and "VGG-8 width 16" in plain
    assert setup_title({**res, "arm_numerics": {"precision": "32-true", "channels_last": False}}) == plain
    mixed = setup_title({**res, "arm_numerics": {"precision": "bf16-mixed", "channels_last": True}})
    assert mixed.startswith(plain) and mixed.endswith("; every training arm in bf16-mixed with channels-last weights")


def test_plan_orders_trunks_probes_then_candidates_before_their_test():
    tasks = {"cls": {"fractions": [0.01, 0.1], "probe_subsets": [0, 1]}, "seg": {"fractions": [1.0], "probe_subsets": [None], "lrs": [0.1]}}
    arms = plan_arms(["random", "colorization", "supervised"], [0, 1], tasks, [0, 1], [0.01, 0.05])
    assert len(arms) == 3 * 2 + 3 * 2 * 2 + 2 * 2 * 2 * 3 * 3 + 3 * 2 + 2 * 2 * 3 * 2
    names = [a.name for a in arms]
    assert len(set(names)) == len(names)
    assert names.index("supervised_seed1") < names.index("probe_cls_random_seed0_sub0") < names.index("finetune_cls_random_f0.01_seed0_sub0_lr0.01")
    assert "probe_seg_random_seed0" in names and "finetune_seg_random_f1_seed1_sub1_lr0.1" in names
    assert {a.task for a in arms if a.kind != "trunk"} == {"cls", "seg"} and {a.task for a in arms if a.kind == "trunk"} == {None}
    for a in arms:
        if a.kind == "finetune_test":
            assert all(names.index(n) < names.index(a.name) for n in a.needs) and len(a.needs) == (2 if a.task == "cls" else 1)
    assert math.isclose(arms[-1].fraction, 1.0)


def test_rgb_ceiling_gets_its_own_gap_row():
    col = _fake_collected()
    col["probe"]["supervised_rgb"] = {u: _probe({"conv1": 0.5, "conv2": 0.7, "conv3": 0.75}, {"conv1": 0.5, "conv2": 0.75, "conv3": 0.8})
                                      for u in col["probe"]["supervised"]}
    col["finetune"]["supervised_rgb"] = {0.1: {u: {**r, "test": r["test"] + 0.1} for u, r in col["finetune"]["supervised"][0.1].items()}}
    res = summarize(col, ["random", "colorization", "supervised", "supervised_rgb"], [0.1])
    ft = res["finetune"]["0.1"]["gap"]
    assert ft["gap_closed"]["mean"] == pytest.approx(0.5) and ft["gap_closed_rgb"]["mean"] == pytest.approx(0.1 / 0.3)
    md = task_markdown({**res, "grids": {}})
    assert "| gap closed, RGB supervised ceiling |" in md and md.index("| supervised_rgb |") < md.index("| supervised |")


def test_edge_flag_only_where_a_grid_has_an_inside():
    """A fine-tune's rate at the grid's edge is flagged on a grid of 3 or more rates; with 2, every choice is an edge,
    so the table says that once instead of flagging every row."""
    col = _fake_collected()
    for runs in col["finetune"].values():
        for r in runs[0.1].values():
            r["lr_at_grid_edge"] = True
    res = summarize(col, ["random", "colorization", "supervised"], [0.1])
    three = task_markdown({**res, "grids": {"finetune_lr": [0.01, 0.03, 0.05]}})
    assert "lr chosen on val, random | 0.01 ×2 (at the grid's edge ×2) |" in three and "none is flagged" not in three
    two = task_markdown({**res, "grids": {"finetune_lr": [0.01, 0.05]}})
    assert "lr chosen on val, random | 0.01 ×2 |" in two and "grid's edge" not in two
    assert "with two rates every choice is an edge, so none is flagged" in two


def test_best_is_last_rows_carry_what_the_last_validation_added():
    """How far from converged: each row's count of runs whose best checkpoint was the last validation comes with the
    mean gain of that last validation over the one before (points), and the reading repeats it when most runs are."""
    col = _fake_collected()
    for j, runs in enumerate(col["finetune"].values()):
        for k, r in enumerate(runs[0.1].values()):
            r.update(step_is_last=True, last_gain=0.004 * (j + 1) + 0.002 * k)
    res = summarize(col, ["random", "colorization", "supervised"], [0.1])
    assert res["finetune"]["0.1"]["colorization"]["last_gain"] == pytest.approx(0.009)
    md = task_markdown({**res, "grids": {}})
    assert "mean gain of the last validation), colorization | 2 of 2 (+0.9) |" in md
    assert "the last validation added +0.9 points over the one before" in md
    for runs in col["finetune"].values():
        for r in runs[0.1].values():
            r.pop("last_gain")
    md = task_markdown({**summarize(col, ["random", "colorization", "supervised"], [0.1]), "grids": {}})
    assert "colorization | 2 of 2 |" in md and "added" not in md, "runs from before the history was kept: no gain shown"


def test_a_validation_only_summary_reads_validation_numbers_everywhere():
    """A validation-only run reads no test split: its tables and gaps are the validation scores, said so, not dashes."""
    col = _fake_collected()
    for runs in col["probe"].values():  # what a validation-only probe writes: no test score
        for r in runs.values():
            for family in ("linear", "knn"):
                for t in r[family].values():
                    t["test"] = None
    for by_f in col["finetune"].values():
        for r in by_f[0.1].values():
            r["test"] = None
    res = summarize(col, ["random", "colorization", "supervised"], [0.1], score="val")
    conv2 = res["probe"]["linear_gap"]["conv2"]
    assert conv2["gap_closed"]["mean"] == pytest.approx((0.50 - 0.30) / (0.60 - 0.30)), "on val, where test is absent"
    assert res["probe"]["linear_gap"]["best"]["gap_closed"]["n"] == 2
    assert res["finetune"]["0.1"]["gap"]["gap_closed"]["mean"] == pytest.approx(0.5), "fine-tune val 0.3 / 0.4 / 0.5"
    text = task_markdown(res)
    assert "validation split, the one every choice below was made on" in text and "test split" not in text
    probe_row = next(r for r in text.splitlines() if r.startswith("| colorization | "))
    assert "–" not in probe_row and probe_row.count("[") == 4, "three taps and the best tap, each with its interval"
    with pytest.raises(ValueError, match="score"):
        summarize(col, ["random", "colorization", "supervised"], [0.1], score="train")


def test_a_validation_only_run_has_its_own_wandb_summary_keys():
    """W&B summaries of a validation-only run never share a key with a result's (a dashboard would compare them)."""
    from cnnlab.gap.report import wandb_summary

    keys = {score: set(wandb_summary({"tasks": {"cls": summarize(_fake_collected(), ["random", "colorization", "supervised"], [0.1],
                                                                  score=score)}}))
            for score in ("val", "test")}
    assert {"gap_closed_val/cls/linear/conv2", "gap_closed_val/cls/finetune/0.1"} <= keys["val"]
    assert keys["test"] == {k.replace("gap_closed_val/", "gap_closed/") for k in keys["val"]}


def test_a_gap_without_interval_is_read_once_as_no_conclusion():
    from cnnlab.gap.report import _read_gap

    shaky = {"mean": -0.25, "low": None, "high": None, "n": 4, "note": "no interval: 1227 of 10000 resamples have supervised <= random"}
    line = _read_gap("fine-tuned on 10% of the labels", shaky, 0.47)
    assert line == ("- fine-tuned on 10% of the labels: -25%, n = 4 (no interval: 1227 of 10000 resamples have supervised <= random), "
                    "so it supports no conclusion.")
    one = _read_gap("one seed", {"mean": 0.3, "low": None, "high": None, "n": 1}, 0.47)
    assert one == "- one seed: 30%, n = 1 (no interval), so it supports no conclusion."
