"""A fresh clone's default commands: a missing reference model is one line naming the command that builds it and the
options that name another network; a run that fails that check, a check that needs the network (an unknown class or
layer name), or only lists layers, writes nothing."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _main(monkeypatch, module: str, *argv: str):
    import importlib

    monkeypatch.setattr("sys.argv", [module, *argv])
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main()
    return exit_info.value.code


@pytest.mark.parametrize("module,options", [
    ("cnnlab.visualize.cli", ("network.checkpoint=", "network.trunk=", "network.arch=")),
    ("cnnlab.analyze", ("ckpt=", "network.arch=")),
])
def test_missing_reference_names_the_command_and_writes_nothing(module, options, tmp_path, monkeypatch, capsys):
    code = _main(monkeypatch, module, f"paths.log_dir={tmp_path}")
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, errors
    assert "reference CIFAR-10 classifier is not built yet" in errors[0]
    assert "`cnnlab-train experiment=reference_cifar`" in errors[0] and all(o in errors[0] for o in options), errors[0]
    assert list(tmp_path.iterdir()) == [], "a refused run leaves no run dir"


def test_colorize_without_the_reference_colorizer_names_its_command(tmp_path, capsys):
    from PIL import Image

    from cnnlab.colorize import main

    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")
    ckpt = tmp_path / "outputs" / "reference" / "colorize_cifar" / "checkpoints" / "best.ckpt"
    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "photo.png"), "--ckpt", str(ckpt), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "`cnnlab-train experiment=reference_colorizer`" in err and "--ckpt" in err
    assert not (tmp_path / "out").exists()


#: a random torchvision network at CIFAR size: no checkpoint to build, its class and layer names are known
RESNET = ("network.arch=resnet18", "network.image_size=32")


@pytest.mark.parametrize("module,overrides,message", [
    ("cnnlab.visualize", ("viz.classes=[notaclass]",), "unknown class 'notaclass'"),
    ("cnnlab.visualize", ("viz=inversion", "viz.layers=[layer9.0.conv1]"), "unknown layer 'layer9.0.conv1'"),
    ("cnnlab.analyze", ("data=synthetic", "analysis=patches", "analyses.patches.tap=layer9.0.conv1"), "unknown layer 'layer9.0.conv1'"),
])
def test_a_name_unknown_to_the_network_is_one_line_and_leaves_no_run_dir(module, overrides, message, tmp_path, data_dir):
    """Found only once the network is loaded, inside the job (its run dir, log and offline W&B run exist by then):
    the real command still ends with one `error:` line, exit 2, and nothing new under the output root."""
    root = tmp_path / "outputs"
    root.mkdir()
    proc = run_cli(module, *RESNET, *overrides, f"paths.log_dir={root}", f"paths.data_dir={data_dir}", "progress=false"
                   if module == "cnnlab.visualize" else "limit=8", check=False, timeout=300)
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert list(root.iterdir()) == [], f"left behind: {sorted(map(str, root.rglob('*')))[:10]}"


@pytest.mark.parametrize("module", ["cnnlab.visualize", "cnnlab.analyze"])
def test_list_layers_on_the_command_line_prints_them_and_leaves_no_run_dir(module, tmp_path):
    proc = run_cli(module, *RESNET, "list_layers=true", f"paths.log_dir={tmp_path}", timeout=300)
    assert "layer3.1.conv2" in proc.stdout and "logits" in proc.stdout, proc.stdout[-2000:]
    assert list(tmp_path.iterdir()) == []
