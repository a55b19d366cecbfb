"""scripts/gap_length_study.py: its table and intervals from finished validation-only gap runs (made here as files)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cnnlab.config import PROJECT_ROOT
from cnnlab.errors import UserError
from cnnlab.stats import gap_interval, mean_ci

SCRIPT = PROJECT_ROOT / "scripts" / "gap_length_study.py"
INITS = ("random", "colorization", "supervised")


def _module():
    spec = importlib.util.spec_from_file_location("gap_length_study", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(root: Path, steps: int, vals: dict[str, list[float]], taps: dict[str, str]) -> None:
    """A finished validation-only gap run as the script reads it: one classification task, a linear probe per init at
    the tap it chose on validation, one value per pretraining seed."""
    linear = {i: {taps[i]: {"val": mean_ci(v)}} for i, v in vals.items()}
    probe = {"families": ["linear"], "best_tap": {i: {"tap": taps[i]} for i in vals}, "linear": linear}
    res = {"validation_only": True, "tasks": {"cls": {"kind": "classification", "probe": probe}}}
    d = root / f"length_{steps}"
    d.mkdir(parents=True)
    (d / "gap_results.json").write_text(json.dumps(res))


def test_the_gap_closed_and_its_interval_run_over_the_paired_seeds(tmp_path):
    vals = {"random": [0.40, 0.42, 0.41, 0.43], "colorization": [0.45, 0.46, 0.47, 0.46], "supervised": [0.55, 0.56, 0.57, 0.58]}
    _run(tmp_path, 2000, vals, {"random": "conv2_2", "colorization": "conv3_2", "supervised": "conv4_2"})
    table, data, seeds = _module().tabulate([1000, 2000], tmp_path)
    rows = [r.split(" | ") for r in table.splitlines() if r.startswith("| ")][1:]
    assert rows[0][1] == "(not run)", "a length without a finished run says so"
    row = rows[1]
    assert seeds == 4 and row[2] == "4"
    assert row[3].startswith("41.5 [") and row[3].endswith("(conv2_2)"), "each init at the tap it chose on validation"
    assert row[6].startswith("4.5 ["), "colorization - random, paired over seeds: (5 + 4 + 6 + 3) / 4 points"
    expected = gap_interval(vals["colorization"], vals["random"], vals["supervised"])
    got = data["cls linear"][2000]
    assert got["mean"] == pytest.approx(4.5 / 15.0) and got["low"] == pytest.approx(expected["low"])
    assert got["low"] < got["mean"] < got["high"], "four seeds give an interval around the ratio of mean differences"


def test_inits_with_different_seeds_are_refused(tmp_path):
    _run(tmp_path, 500, {"random": [0.4, 0.41], "colorization": [0.45], "supervised": [0.5, 0.52]},
         {i: "conv2_2" for i in INITS})
    with pytest.raises(UserError, match="different numbers of seeds"):
        _module().tabulate([500], tmp_path)
