"""cnnlab.io.files: a failed write leaves the old file whole; a finished one looks like an ordinary file."""

from __future__ import annotations

import json
import os
import stat

import pytest

from cnnlab.io.files import atomic_save, write_json, write_text


def test_failed_write_leaves_previous_file_and_no_temp(tmp_path):
    target = tmp_path / "metrics.json"
    write_json(target, {"a": 1})
    before = target.read_bytes()

    def half_then_fail(tmp):
        tmp.write_bytes(b"{\"a\": 2, \"trunc")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_save(target, half_then_fail)
    assert target.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.json"]


def test_written_file_has_umask_permissions_and_round_trips(tmp_path):
    old = os.umask(0o022)
    try:
        path = write_json(tmp_path / "sub" / "r.json", {"b": [1, 2], "a": 0.5})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [1, 2]}
    write_text(path, "replaced")
    assert path.read_text() == "replaced"


def test_keyed_cache_recomputes_for_another_key_and_survives_a_corrupt_file(tmp_path, caplog):
    import torch

    from cnnlab.io.cache import keyed_cache

    calls = []

    def compute():
        calls.append(1)
        return {"x": torch.arange(3.0), "n": len(calls)}

    path = tmp_path / "cache" / "v.pt"
    assert keyed_cache(path, "k", compute)["n"] == 1
    assert keyed_cache(path, "k", compute)["n"] == 1 and len(calls) == 1, "the same key reads the file"
    assert keyed_cache(path, "other", compute)["n"] == 2, "another key recomputes"
    for damage in (b"", b"not a torch file", path.read_bytes()[:40]):  # empty, foreign, truncated
        path.write_bytes(damage)
        before = len(calls)
        assert keyed_cache(path, "other", compute)["n"] == before + 1
        assert keyed_cache(path, "other", compute)["n"] == before + 1, "the recomputed value replaced the damaged file"
    assert "unreadable cache file" in caplog.text
    assert sorted(p.name for p in path.parent.iterdir()) == ["v.pt"], "no temp files left"


def test_a_directory_published_twice_keeps_the_first_when_asked_and_fails_otherwise(tmp_path):
    """Two workers building the same cache: the second rename finds the first's directory; a cache keeps it whole."""
    from cnnlab.io.files import atomic_dir

    target = tmp_path / "cache"
    with atomic_dir(target) as tmp:
        (tmp / "meta.json").write_text("first")
    with atomic_dir(target, first_wins=True) as tmp:
        (tmp / "meta.json").write_text("second")
    assert (target / "meta.json").read_text() == "first"
    with pytest.raises(OSError), atomic_dir(target) as tmp:
        (tmp / "meta.json").write_text("third")
    assert (target / "meta.json").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"], "no temp directory is left behind"
