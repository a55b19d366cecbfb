"""Nothing lost, second step: faults that corrupted or stranded a run, and errors from below the project as one line.

One test (or a few) per case of docs/reliability.md "Faults, second step"; real ``cnnlab-*`` processes where the
behaviour is the command's, small archives and images made in tmp dirs where it is the data layer's. Where data
is at stake the SHA-256 of every file that must stay untouched is compared before and after.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.errors import UserError
from tests.conftest import mounted_tmpfs, run_cli

#: a small synthetic run
B = ["data=synthetic", "backbone.width=8", "trainer.max_epochs=1", "logger=csv", "data.synthetic.n_train=300",
     "data.synthetic.n_test=100", "callbacks.progress_bar=null", "callbacks.model_summary=null"]


def checksums(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def error_lines(proc) -> list[str]:
    return [ln for ln in (proc.stdout + proc.stderr).splitlines() if ln.startswith("error:")]


def one_error(proc, starts: str = "error:") -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = error_lines(proc)
    assert len(lines) == 1 and lines[0].startswith(starts), lines
    assert (proc.stdout + proc.stderr).rstrip().splitlines()[-1] == lines[0], "the error: line is the last line"
    return lines[0]


@pytest.fixture(scope="module")
def finished(tmp_path_factory, data_dir) -> Path:
    """A finished cnnlab-train run, logged to W&B offline; its console output is kept beside it (console.txt)."""
    run_dir = tmp_path_factory.mktemp("faults") / "a_run_dir_whose_path_is_longer_than_a_log_line" / "run"
    proc = run_cli("cnnlab.train", *B, "logger=wandb", f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}")
    (run_dir.parent / "console.txt").write_text(proc.stdout + proc.stderr)
    assert (run_dir / "metrics.json").is_file()
    return run_dir


# ----------------------------------------------------------------------------- 1. a run dir is one command's
def test_the_gap_refuses_a_train_run_dir_and_changes_nothing(finished):
    before = checksums(finished)
    proc = run_cli("cnnlab.gap", "budget=smoke", f"hydra.run.dir={finished}", check=False)
    line = one_error(proc, f"error: {finished} holds a run of cnnlab's train command")
    assert "belongs to one kind of command" in line
    assert checksums(finished) == before and not (finished / "arms").exists()


# ----------------------------------------------------------------------------- 2. and 8. damaged archives
def _image_folder(root: Path, classes=("a", "b", "c"), per_class: int = 15, size: int = 16) -> Path:
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(root / c / f"{i:02d}.png")
    return root


def _damage_middle(path: Path, n: int = 200) -> None:
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid:mid + n] = bytes(255 - b for b in data[mid:mid + n])
    path.write_bytes(bytes(data))


def test_a_tar_gz_damaged_in_the_middle_is_an_error_and_no_cache_is_written(tmp_path):
    from cnnlab.data.cache import build_imagefolder_cache

    folder = _image_folder(tmp_path / "src")
    archive = tmp_path / "set.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folder, arcname="set")
    whole = build_imagefolder_cache(archive, tmp_path / "cache_whole", 16, progress=False)
    assert len(whole.splits["train"].labels) == 45 and whole.num_classes == 3
    _damage_middle(archive)
    with pytest.raises(UserError, match=rf"^archive {archive} is damaged .*copy or download it again; no dataset cache was written"):
        build_imagefolder_cache(archive, tmp_path / "cache", 16, progress=False)
    assert not (tmp_path / "cache").exists() or not any((tmp_path / "cache").iterdir())


def test_a_tar_whose_middle_header_is_damaged_is_an_error(tmp_path):
    """Uncompressed: no checksum covers the data, but a header that does not read must not end the archive quietly."""
    from cnnlab.data.cache import build_imagefolder_cache

    folder = _image_folder(tmp_path / "src")
    archive = tmp_path / "set.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(folder, arcname="set")
    with tarfile.open(archive) as tar:
        middle = tar.getmembers()[len(tar.getmembers()) // 2]
    data = bytearray(archive.read_bytes())
    data[middle.offset:middle.offset + 100] = b"\x7f" * 100  # its name field: the header checksum fails
    archive.write_bytes(bytes(data))
    with pytest.raises(UserError, match=rf"^archive {archive} is damaged after member "):
        build_imagefolder_cache(archive, tmp_path / "cache", 16, progress=False)


def test_a_zip_with_a_damaged_member_names_it(tmp_path):
    from cnnlab.data.cache import build_imagefolder_cache

    folder = _image_folder(tmp_path / "src", per_class=4)
    archive = tmp_path / "set.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for p in sorted(folder.rglob("*.png")):
            zf.write(p, f"set/{p.relative_to(folder)}")
    with zipfile.ZipFile(archive) as zf:
        info = zf.infolist()[5]
    data = bytearray(archive.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + 8
    data[start:start + 40] = bytes(255 - b for b in data[start:start + 40])
    archive.write_bytes(bytes(data))
    with pytest.raises(UserError, match=rf"^archive {archive} is damaged: member {info.filename} does not read"):
        build_imagefolder_cache(archive, tmp_path / "cache", 16, progress=False)


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims ``width`` x ``height`` pixels (what Pillow's decompression-bomb check reads)."""
    buf = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buf, "PNG")
    data = bytearray(buf.getvalue())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4:ihdr + 12] = width.to_bytes(4, "big") + height.to_bytes(4, "big")
    import zlib

    data[ihdr + 17:ihdr + 21] = zlib.crc32(bytes(data[ihdr:ihdr + 17])).to_bytes(4, "big")
    return bytes(data)


def test_an_image_over_pillows_pixel_limit_is_named(tmp_path):
    from cnnlab.data.cache import build_imagefolder_cache

    folder = _image_folder(tmp_path / "src", per_class=2)
    (folder / "b" / "huge.png").write_bytes(_png_claiming(20000, 20000))
    with pytest.raises(UserError, match=r"^image b/huge.png in .* is too large to decode safely .*: shrink or remove it"):
        build_imagefolder_cache(folder, tmp_path / "cache", 16, progress=False)


# ----------------------------------------------------------------------------- 3. every checkpoint read is CRC-checked
def _flip_member(src: Path, dst: Path, suffix: str = "data/0") -> None:
    """Copy ``src`` with the sign bits of the first floats of one stored tensor flipped (a zip CRC now fails)."""
    with zipfile.ZipFile(src) as zf:
        info = next(i for i in zf.infolist() if i.filename.endswith(suffix))
    data = bytearray(src.read_bytes())
    name_len, extra_len = (int.from_bytes(data[info.header_offset + k:info.header_offset + k + 2], "little") for k in (26, 28))
    start = info.header_offset + 30 + name_len + extra_len
    for i in range(start + 3, start + min(info.file_size, 256), 4):
        data[i] ^= 0x80
    dst.write_bytes(bytes(data))


def test_a_damaged_checkpoint_is_refused_by_eval_and_never_used(finished, tmp_path, data_dir):
    bad = tmp_path / "bad.ckpt"
    _flip_member(finished / "checkpoints" / "last.ckpt", bad)
    proc = run_cli("cnnlab.evaluate", f"ckpt_path={bad}", f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path / 'eval'}", check=False)
    one_error(proc, f"error: {bad} is damaged (member ")
    assert not (tmp_path / "eval" / "metrics.json").exists()


def test_every_reader_of_cnnlab_files_checks_them_whole(finished, tmp_path):
    """The trunk behind fine-tunes, probes, analyze and visualize; the checkpoint behind eval, colorize and resume."""
    from cnnlab.backbones.trunk import load_trunk
    from cnnlab.models import load_module
    from cnnlab.rundir import epochs_done
    from cnnlab.subject import load_subject

    bad_trunk, bad_ckpt = tmp_path / "trunk.pt", tmp_path / "last.ckpt"
    _flip_member(finished / "trunk.pt", bad_trunk)
    _flip_member(finished / "checkpoints" / "last.ckpt", bad_ckpt)
    for call in (lambda: load_trunk(bad_trunk), lambda: load_subject(trunk=str(bad_trunk)),
                 lambda: load_module(bad_ckpt), lambda: epochs_done(bad_ckpt)):
        with pytest.raises(UserError, match=r" is damaged \(member .* fails its checksum\)"):
            call()
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((finished / "checkpoints" / "last.ckpt").read_bytes()[:50_000])
    with pytest.raises(UserError, match=rf"^{truncated} is damaged"):
        load_module(truncated)


# ----------------------------------------------------------------------------- 4. never choose on test
def test_no_validation_split_is_refused_before_the_run(tmp_path):
    proc = run_cli("cnnlab.train", *B, "data.val_fraction=0", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    one_error(proc, "error: data.val_fraction=0 leaves no validation split, so the best checkpoint (monitor=val/acc) "
                    "would be chosen on the test split")
    assert not (tmp_path / "run").exists()


def test_a_folder_without_test_stops_a_run_that_would_test_before_it_trains(tmp_path):
    """Without test/ the run refuses at the start (not after training, and never testing on the validation split
    under the test split's name); test=false trains."""
    src = tmp_path / "train_only.tar.gz"
    with tarfile.open(src, "w:gz") as tar:
        for k, cls in enumerate(("cat", "dog")):
            for i in range(12):
                buf = io.BytesIO()
                Image.new("RGB", (12, 12), (100 * k, 50 + 5 * i, 200)).save(buf, format="JPEG")
                info = tarfile.TarInfo(f"train/{cls}/{i}.jpg")
                info.size = buf.tell()
                buf.seek(0)
                tar.addfile(info, buf)
    args = ["data=imagefolder", *(a for a in B if not a.startswith("data")), f"data.source={src}", "data.image_size=8", "data.val_fraction=0.25",
            "data.batch_size=8", f"paths.data_dir={tmp_path / 'data'}"]
    # a crop padding as large as the image is a clear error too (kornia's reflection pad would raise from below)
    proc = run_cli("cnnlab.train", *args, "data.crop_padding=8", f"hydra.run.dir={tmp_path / 'run_pad'}", check=False)
    one_error(proc, "error: data.crop_padding=8 does not fit data.image_size=8")
    args.append("data.crop_padding=1")
    proc = run_cli("cnnlab.train", *args, f"hydra.run.dir={tmp_path / 'run'}", check=False)
    one_error(proc, f"error: {src} has no test split: add one to the data")
    assert not list((tmp_path / "run").rglob("*.ckpt")) and not (tmp_path / "run" / "metrics.json").exists()
    proc = run_cli("cnnlab.train", *args, "test=false", f"hydra.run.dir={tmp_path / 'run2'}")
    metrics = (tmp_path / "run2" / "metrics.json").read_text()
    assert "val/acc" in metrics and "test/" not in metrics


# ----------------------------------------------------------------------------- 5. no dead end before the first checkpoint
@pytest.fixture
def small_filesystem(tmp_path):
    """A 600 KB tmpfs, smaller than the first checkpoint (needs mount permission; skipped cleanly elsewhere)."""
    yield from mounted_tmpfs(tmp_path / "mnt", "600k")


@pytest.mark.slow
def test_a_full_disk_on_the_first_checkpoint_leaves_a_dir_the_same_command_takes(small_filesystem, data_dir):
    run_dir = small_filesystem / "run"
    command = [*B, f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}"]
    line = one_error(run_cli("cnnlab.train", *command, check=False), "error: no space left on the device writing ")
    assert "no checkpoint was written yet" in line and "run the same command again" in line and "resume=" not in line
    proc = run_cli("cnnlab.train", f"resume={run_dir}", check=False)
    assert "stopped before its first checkpoint" in one_error(proc)
    subprocess.run(["mount", "-o", "remount,size=16m", str(small_filesystem)], check=True)  # the user frees space
    run_cli("cnnlab.train", *command)
    assert (run_dir / "metrics.json").is_file()


def test_the_file_size_limit_and_an_early_sigterm_say_to_rerun_the_command(tmp_path, capsys):
    """``ulimit -f`` on the first checkpoint (a traceback before) and SIGTERM before it: the way on is the same command."""
    import resource

    from cnnlab.io.checkpoints import AtomicCheckpointIO
    from cnnlab.train import _resume_hint

    target = tmp_path / "run" / "checkpoints" / "last.ckpt"
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (20_000, hard))  # Python ignores SIGXFSZ: the write fails with EFBIG
    try:
        with pytest.raises(UserError, match=r"^the file-size limit was reached \(ulimit -f\) writing .*no checkpoint was "
                                             r"written yet, so there is nothing to resume"):
            AtomicCheckpointIO().save_checkpoint({"w": torch.zeros(50_000)}, target)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert list(target.parent.iterdir()) == [], "no partial or temp file is left"
    _resume_hint(tmp_path / "run")
    assert "interrupted before the first checkpoint: run the same command again" in capsys.readouterr().err


# ----------------------------------------------------------------------------- 6. non-ASCII run dirs resume
@pytest.fixture(scope="module")
def moved_to_non_ascii(finished, tmp_path_factory) -> Path:
    """The finished run, moved under a directory with a non-ASCII name (a clone under josé/)."""
    import shutil

    run_dir = tmp_path_factory.mktemp("clone") / "josé" / "run"
    shutil.copytree(finished, run_dir)
    return run_dir


def test_a_run_dir_with_a_non_ascii_path_resumes(moved_to_non_ascii):
    run_dir = moved_to_non_ascii
    before = checksums(run_dir)
    proc = run_cli("cnnlab.train", f"resume={run_dir}")
    assert f"run {run_dir} is already finished" in proc.stdout + proc.stderr
    def kept(sums):
        return {k: v for k, v in sums.items() if k.startswith("checkpoints/") or k in ("metrics.json", "trunk.pt")}

    assert kept(checksums(run_dir)) == kept(before)


def test_a_non_ascii_value_reaches_hydra_quoted():
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from cnnlab.config import quote_plain_values

    args = quote_plain_values(["hydra.run.dir=/runs/josé/r", "data.source=/data/çà va", "seeds=[0,1]", "seed=3"])
    assert args[2:] == ["seeds=[0,1]", "seed=3"]
    parsed = OverridesParser.create().parse_overrides(args)
    assert [o.value() for o in parsed[:2]] == ["/runs/josé/r", "/data/çà va"]


def test_resume_takes_a_quoted_non_ascii_path_too(moved_to_non_ascii):
    """As a shell passes ``resume="'...'"`` on: the quotes kept."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    from cnnlab.config import resume_argv

    args = resume_argv([f"resume='{moved_to_non_ascii}'"])
    values = {o.key_or_group: o.value() for o in OverridesParser.create().parse_overrides(args)}
    assert values["resume"] == values["hydra.run.dir"] == str(moved_to_non_ascii.resolve())


# ----------------------------------------------------------------------------- 7. one class
def test_one_class_is_refused_up_front(tmp_path, data_dir):
    proc = run_cli("cnnlab.train", *B, "data.synthetic.num_classes=1", f"hydra.run.dir={tmp_path / 'syn'}", check=False)
    one_error(proc, "error: data.synthetic.num_classes=1: a classifier needs at least 2 classes")
    assert not (tmp_path / "syn").exists()
    folder = _image_folder(tmp_path / "one", classes=("cat",), per_class=6)
    proc = run_cli("cnnlab.train", *B[:4], "data=imagefolder", "callbacks.progress_bar=null", f"data.source={folder}", f"paths.data_dir={tmp_path / 'data'}",
                   f"hydra.run.dir={tmp_path / 'run'}", check=False)
    one_error(proc, f"error: {folder} has 1 class (cat): a classifier needs at least 2 class directories")
    assert not (tmp_path / "run" / "checkpoints").exists()


# ----------------------------------------------------------------------------- 9. and 10. errors from below, one line
UP_FRONT = {
    "width_not_int": (["backbone.width=abc"], "error: backbone.width=abc is not valid: backbone.width must be an integer >= 1"),
    "n_train_not_int": (["data.synthetic.n_train=abc"], "error: data.synthetic.n_train=abc is not valid"),
    "dropout_out_of_range": (["model.dropout=2"], "error: model.dropout=2 is not valid: model.dropout must be a number in [0, 1)"),
}


@pytest.mark.parametrize("case", sorted(UP_FRONT))
def test_a_value_torch_would_refuse_is_one_line_before_the_run_dir(case, tmp_path):
    overrides, message = UP_FRONT[case]
    proc = run_cli("cnnlab.train", *B, *overrides, f"hydra.run.dir={tmp_path / 'run'}", check=False)
    one_error(proc, message)
    assert not (tmp_path / "run").exists()


def test_an_unknown_keyword_of_a_target_is_one_line_exit_2(tmp_path, data_dir):
    proc = run_cli("cnnlab.train", *B, "+model.lrr=0.1", f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    line = one_error(proc, "error: model.lrr is not an option of cnnlab.models.classifier.Classifier; it takes ")
    assert "dropout" in line and line.endswith("drop +model.lrr=..., or check its spelling")
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is visible: trainer.accelerator=gpu is valid here")
def test_a_gpu_accelerator_without_a_gpu_is_one_line(tmp_path, data_dir):
    proc = run_cli("cnnlab.train", *B, "trainer.accelerator=gpu", f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    one_error(proc, "error: trainer.accelerator=gpu but no GPU is visible")


def _raised(fn):
    try:
        fn()
    except Exception as exc:  # noqa: BLE001
        return exc
    raise AssertionError("did not raise")


def test_errors_of_hydra_and_lightning_name_the_key():
    """The same mapping on the real exceptions, in process: Hydra building a Trainer from a config."""
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    from cnnlab.cli import error_from_below

    cfg = OmegaConf.create({"trainer": {"_target_": "pytorch_lightning.Trainer", "accelerator": "cpu", "devices": "abc",
                                        "logger": False}})
    err = error_from_below(_raised(lambda: instantiate(cfg.trainer)), cfg)
    assert str(err).startswith("trainer.devices=abc is not valid: `devices` selected with `CPUAccelerator` should be an int > 0")
    cfg.trainer.devices = 1
    cfg.trainer.foo = 1
    err = error_from_below(_raised(lambda: instantiate(cfg.trainer)), cfg)
    assert str(err).startswith("trainer.foo is not an option of pytorch_lightning.trainer.trainer.Trainer; it takes accelerator, ")


def test_a_truncated_ckpt_path_is_one_line_naming_it(finished, tmp_path, data_dir):
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes((finished / "checkpoints" / "last.ckpt").read_bytes()[:100_000])
    proc = run_cli("cnnlab.train", *B, f"ckpt_path={truncated}", f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path / 'run'}", check=False)
    one_error(proc, f"error: {truncated} is damaged")


def test_the_mapping_names_the_file_of_an_os_error():
    from cnnlab.cli import error_from_below

    err = error_from_below(RuntimeError("save failed").with_traceback(None), None)
    assert err is None, "an error that is not one of the known kinds stays a traceback"
    try:
        try:
            raise OSError(30, "Read-only file system", "/out/x.png")
        except OSError as os_err:
            raise RuntimeError("write failed") from os_err
    except RuntimeError as exc:
        assert str(error_from_below(exc)) == "cannot write /out/x.png (Read-only file system): the filesystem is read-only: write somewhere else"


# ----------------------------------------------------------------------------- 11. Optuna
def test_the_optuna_direction_follows_monitor_mode():
    from hydra import compose, initialize_config_dir

    from cnnlab.config import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for extra, direction in (([], "maximize"), (["experiment=colorize_cifar"], "minimize")):
            cfg = compose("train", [*extra, "hparams_search=optuna"], return_hydra_config=True)
            assert cfg.hydra.sweeper.direction == direction, extra


SWEEP = """# @package _global_
defaults:
  - override /hydra/sweeper: optuna
  - override /hydra/sweeper/sampler: random
optimized_metric: ${monitor}
test: false
hydra:
  mode: MULTIRUN
  sweeper:
    storage: ${cnnlab.sqlite:${hydra.sweep.dir}/optuna.db}
    study_name: nan
    direction: ${monitor_mode}imize
    n_trials: 3
    max_failure_rate: 1.0
    sampler: {seed: 1}
    params:
      model.optimizer.lr: choice(1e30, 0.01)
"""


@pytest.mark.slow
def test_an_optuna_trial_whose_objective_is_nan_fails_and_is_never_best(tmp_path, data_dir):
    conf = tmp_path / "conf" / "hparams_search"
    conf.mkdir(parents=True)
    (conf / "nan_trial.yaml").write_text(SWEEP)
    sweep = tmp_path / "sweep"
    # one training batch per epoch: the huge lr's first step is finite, its validation loss is not
    run_cli("cnnlab.train", "--config-dir", str(tmp_path / "conf"), *B, "data.synthetic.n_train=60", "data.batch_size=64",
            "monitor=val/loss", "monitor_mode=min", "hparams_search=nan_trial", f"paths.data_dir={data_dir}",
            f"hydra.sweep.dir={sweep}")
    import optuna

    study = optuna.load_study(study_name="nan", storage=f"sqlite:///{sweep / 'optuna.db'}")
    states = {(t.params["model.optimizer.lr"], t.state.name) for t in study.trials}
    assert states == {(1e30, "FAIL"), (0.01, "COMPLETE")}, states
    import yaml

    best = yaml.safe_load((sweep / "optimization_results.yaml").read_text())
    assert best["best_params"]["model.optimizer.lr"] == 0.01 and np.isfinite(best["best_value"])


# ----------------------------------------------------------------------------- 12. W&B that accepts and never answers
@pytest.fixture
def silent_server():
    """A local server that accepts connections and never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    held, stop = [], threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    thread.join()
    for c in held:
        c.close()
    srv.close()


_WANDB_WAITS = """
import os, sys, time
from cnnlab.tracking import ensure_wandb_started, finish_wandb, make_wandb_logger
t0 = time.time()
(logger,) = ensure_wandb_started([make_wandb_logger(save_dir=sys.argv[1], mode=sys.argv[2], init_timeout=4)])
logger.experiment.log({"x": 1})
finish_wandb()
print("start", time.time() - t0, "end", time.time(), flush=True)
"""


def _wandb_waits(run_dir: Path, mode: str, server: str) -> tuple[float, float]:
    """(seconds to start W&B and log, seconds from the script's last line to the process's end) of a real process."""
    env = {**os.environ, "WANDB_API_KEY": "0" * 40, "WANDB_BASE_URL": server, "WANDB_SILENT": "true"}
    env.pop("WANDB_MODE", None)
    run_dir.mkdir()
    proc = subprocess.run([sys.executable, "-c", _WANDB_WAITS, str(run_dir), mode], env=env, capture_output=True, text=True, timeout=600)
    ended = time.time()
    assert proc.returncode == 0, proc.stderr[-3000:]
    words = proc.stdout.split()
    return float(words[words.index("start") + 1]), ended - float(words[words.index("end") + 1])


@pytest.mark.slow
def test_a_wandb_server_that_never_answers_costs_at_most_the_init_timeout(silent_server, tmp_path):
    """With ``init_timeout=4``, W&B's waits at the start and at the exit together exceed those of an offline run by
    little more than the 4 s (before: W&B's own query timeout at the start and its shutdown wait at the exit, tens
    of seconds). The online run falls back to offline."""
    start_off, exit_off = _wandb_waits(tmp_path / "offline", "offline", silent_server)
    start_on, exit_on = _wandb_waits(tmp_path / "online", "online", silent_server)
    assert list((tmp_path / "online" / "wandb").glob("offline-run-*")), "it went on offline"
    extra = (start_on - start_off) + (exit_on - exit_off)
    assert extra < 4 + 10, (start_on, start_off, exit_on, exit_off)


# ----------------------------------------------------------------------------- issue 20, item 5: noise
def _assert_quiet_text(out: str, run_dir: Path) -> None:
    """No third-party noise; the config tree keeps whole paths, on the console (a pipe here) and in its log."""
    for noise in ("anonymous setting", "litlogger", "is deprecated"):
        assert noise not in out, noise
    line = f"output_dir: {run_dir}"
    assert len(line) > 80 and line in out and line in (run_dir / "config_tree.log").read_text()


def test_a_run_prints_no_third_party_noise_and_whole_paths(finished):
    _assert_quiet_text((finished.parent / "console.txt").read_text(), finished)


def test_help_lists_the_commands_own_groups_only():
    train = run_cli("cnnlab.train", "--help").stdout
    assert all(f"\n{g}: " in train for g in ("data", "backbone", "model", "trainer", "logger", "experiment"))
    assert not any(f"\n{g}: " in train for g in ("viz", "budget", "analysis"))
    visualize = run_cli("cnnlab.visualize", "--help").stdout
    assert "\nviz: " in visualize and not any(f"\n{g}: " in visualize for g in ("budget", "model", "analysis"))


@pytest.mark.slow
def test_the_error_line_is_the_last_line_after_wandb_started(tmp_path, data_dir):
    """W&B (offline) is running when the model refuses its options (the data are checked before any logger starts):
    W&B's closing lines come before the error, in the one stream a terminal shows (stdout and stderr merged, as they
    reach the user)."""
    from cnnlab.config import PROJECT_ROOT

    env = {**os.environ, "WANDB_MODE": "offline"}
    env.pop("WANDB_SILENT", None)
    proc = subprocess.run([sys.executable, "-m", "cnnlab.train", *B, "logger=wandb", "model.warmup_steps=-1",
                           f"paths.data_dir={data_dir}", f"hydra.run.dir={tmp_path / 'run'}"], cwd=PROJECT_ROOT, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600)
    lines = proc.stdout.rstrip().splitlines()
    assert proc.returncode == 2 and "wandb sync" in proc.stdout, proc.stdout[-3000:]
    assert lines[-1] == ("error: model.trunk_lr_mult (1.0), model.warmup_steps (-1) and model.head_only_steps (0) "
                         "must be >= 0"), lines[-5:]


def test_captums_note_on_its_own_hooks_is_silenced():
    """Guided backprop (Captum) warns that it sets ReLU hooks on every call, noise in every analysis run's console;
    the commands' filter drops exactly that, and other warnings still show."""
    import warnings

    import torch
    from captum.attr import GuidedBackprop

    from cnnlab.cli import quiet_third_party

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(), torch.nn.LazyLinear(2))
    net(torch.zeros(1, 3, 8, 8))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quiet_third_party()
        GuidedBackprop(net).attribute(torch.rand(1, 3, 8, 8, requires_grad=True), target=0)
        warnings.warn("a warning of ours", UserWarning, stacklevel=1)
    assert [str(w.message) for w in caught] == ["a warning of ours"]
