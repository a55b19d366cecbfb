"""The pretext-recipe search (scripts/pretext_search.py) scores trunks on validation only: the smoke budget end to
end as a real process, and the gap's ``probe.evaluate_test`` option it runs on."""

import json
import subprocess
import sys

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from cnnlab.config import CONF_DIR, PROJECT_ROOT
from cnnlab.gap.runner import Runner


def _test_numbers(node, path=""):
    """Every non-null value under a key named ``test`` (or ``n_test`` > 0) anywhere in a JSON tree."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if (k == "test" and v is not None) or (k == "n_test" and v):
                found.append(f"{path}/{k}")
            found += _test_numbers(v, f"{path}/{k}")
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found += _test_numbers(v, f"{path}[{i}]")
    return found


@pytest.mark.slow  # two real processes (the second only resumes): ~25 s idle, more on a loaded machine
def test_search_on_the_smoke_budget_reads_validation_only_and_resumes(tmp_path, data_dir):
    out = tmp_path / "search"
    cmd = [sys.executable, str(PROJECT_ROOT / "scripts" / "pretext_search.py"), "--budget", "smoke", "--out", str(out),
           "--recipes", "random", "lab_bins_2ep", "--override", f"paths.data_dir={data_dir}", "probe.keep_cache=true"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("random", "lab_bins_2ep"):
        res = json.loads((out / f"{name}_seed0.json").read_text())
        assert res["n_val"] == 30 and res["per_tap"], "30 validation images of the smoke data, every tap scored"
        for e in res["per_tap"].values():
            assert 0.0 <= e["linear_val"] <= 1.0 and 0.0 <= e["knn_val"] <= 1.0
            assert e["linear_val_ci95"][0] <= e["linear_val"] <= e["linear_val_ci95"][1]
        assert not _test_numbers(res)
        arms = out / name / "arms"
        for probe in arms.glob("probe_*/probe.json"):
            assert not _test_numbers(json.loads(probe.read_text())), f"{probe} holds a test number"
        # the kept feature store has the train and val splits and nothing extracted from test
        stored = {p.name for p in arms.glob("*/features/*")}
        assert any("val" in s for s in stored) and not any("test" in s for s in stored), stored
    assert "lab_bins" in (out / "lab_bins_2ep" / "arms" / "colorization_seed0" / "config.yaml").read_text()
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("reused") >= 2, "a finished recipe's result is reused"


def test_evaluate_test_false_changes_the_probe_key_and_the_default_keeps_old_keys(tmp_path, data_dir):
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose("gap", overrides=["budget=smoke", "inits=[random]", f"paths.output_dir={tmp_path}", f"paths.data_dir={data_dir}"])
    runner = Runner(cfg, tmp_path, {"data": "synthetic", "backbone": "vgg_cifar"})
    plan = runner.plan()
    trunk = runner.by_name["random_seed0"]
    runner.run_arm(trunk, runner.key(trunk))
    probe = next(a for a in plan.arms if a.kind == "probe")
    default = runner.key(probe)
    OmegaConf.set_struct(runner.cfg, False)
    del runner.cfg.probe["evaluate_test"]
    assert runner.key(probe) == default, "a run made before the option keeps its probe keys"
    runner.cfg.probe.evaluate_test = False
    assert runner.key(probe) != default, "a validation-only probe is not taken for one that read test"
