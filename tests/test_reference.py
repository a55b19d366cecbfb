"""A fresh clone's default commands: a missing reference model is one line naming the command that builds it and the
options that name another network; a run that fails that check, or only lists layers, writes nothing."""

from __future__ import annotations

import pytest

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


@pytest.mark.parametrize("module", ["cnnlab.visualize.cli", "cnnlab.analyze"])
def test_list_layers_prints_and_leaves_no_run_dir(module, tmp_path, monkeypatch, capsys):
    code = _main(monkeypatch, module, "network.arch=resnet18", "network.image_size=32", "list_layers=true",
                 f"paths.log_dir={tmp_path}", "logger=none")
    assert code == 0
    out = capsys.readouterr().out
    assert "layer3.1.conv2" in out and "logits" in out
    assert list(tmp_path.iterdir()) == []


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
