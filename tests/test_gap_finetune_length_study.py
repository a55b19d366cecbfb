"""scripts/gap_finetune_length_study.py: its table from two finished gap runs (made here as files), its refusals."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

from cnnlab.config import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "scripts" / "gap_finetune_length_study.py"


def _module():
    spec = importlib.util.spec_from_file_location("gap_finetune_length_study", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _run(root: Path, steps: int, vals: dict[str, list[float]], chosen: dict[str, list[int]], validation_only: bool) -> Path:
    """A finished gap run's files as the script reads them: one task (cls, 10% labels), seeds 0-2."""
    entry = {i: {"val": {"values": v}, "step_chosen": chosen[i], "lr_chosen": [0.1] * len(v)} for i, v in vals.items()}
    entry["seeds"] = [0, 1, 2]
    res = {"validation_only": validation_only, "protocol": {"seeds": [0, 1, 2]}, "tasks": {"cls": {"finetune": {"0.1": entry}}}}
    root.mkdir(parents=True)
    (root / "gap_results.json").write_text(json.dumps(res))
    arm = root / "arms" / "finetune_cls_random_f0.1_seed0_sub0_lr0.1"
    arm.mkdir(parents=True)
    (arm / "gap_arm.json").write_text(json.dumps({"task": "cls", "fraction": 0.1}))
    (arm / "candidate.json").write_text(json.dumps({"max_steps": steps}))
    return root


def test_the_table_compares_the_runs_on_the_chosen_seeds(tmp_path):
    short = _run(tmp_path / "short", 800, {"random": [0.60, 0.62, 0.9], "colorization": [0.61, 0.63, 0.9], "supervised": [0.64, 0.66, 0.9]},
                 {i: [800, 800, 400] for i in ("random", "colorization", "supervised")}, validation_only=False)
    long = _run(tmp_path / "long", 2400, {"random": [0.700, 0.710, 0.1], "colorization": [0.705, 0.715, 0.1], "supervised": [0.702, 0.712, 0.1]},
                {"random": [2400, 2100, 2400], "colorization": [2100, 2100, 2400], "supervised": [2400, 2400, 2400]}, validation_only=True)
    rows = [r for r in _module().tabulate(short, long, seeds=[0, 1]).splitlines() if r.startswith("| cls")]
    assert len(rows) == 2, "a row per run for the task the new run fine-tuned"
    first, second = (r.split(" | ") for r in rows)
    # seed 2 (values 0.9 / 0.1) is left out: its scores would move every mean
    assert first[2] == "800" and first[4:7] == ["61.0", "62.0", "65.0"] and first[7] == "+4.0" and first[8] == "6 of 6"
    assert first[9] == "25% |", "(62 - 61) / (65 - 61)"
    assert second[2] == "2400" and second[8] == "3 of 6", "best = last counts the runs whose chosen step is the length"
    assert second[9].startswith("n/a"), "supervised - random under a point gives no ratio"


def test_a_run_that_is_not_finished_or_not_validation_only_is_refused(tmp_path):
    proc = subprocess.run([sys.executable, str(SCRIPT), "--from", str(tmp_path / "none"), "--out", str(tmp_path / "out"),
                           "--tabulate-only"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stderr.startswith("error:") and "has no gap_results.json" in proc.stderr
    vals = {i: [0.5, 0.5, 0.5] for i in ("random", "colorization", "supervised")}
    steps = {i: [10, 10, 10] for i in vals}
    a = _run(tmp_path / "a", 10, vals, steps, validation_only=False)
    b = _run(tmp_path / "b", 10, vals, steps, validation_only=False)
    proc = subprocess.run([sys.executable, str(SCRIPT), "--from", str(a), "--out", str(b), "--tabulate-only"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "is not a validation-only run" in proc.stderr
