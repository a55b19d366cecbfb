"""Data: cache building, splits, label fractions, colour spaces and clear errors."""

import io
import tarfile
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image

from cnnlab.data import ImageDataModule, balanced_subset
from cnnlab.data.cache import build_imagefolder_cache
from cnnlab.errors import UserError


def _jpeg(color, size=(40, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="JPEG")
    return buf.getvalue()


def _make_tar(path, files: dict[str, bytes]):
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _folder_files(classes=("cat", "dog"), per_class=3, splits=("train", "test")):
    return {f"ds/{s}/{c}/{i}.jpg": _jpeg((40 * k, 100, 200)) for s in splits for k, c in enumerate(classes) for i in range(per_class)}


def test_archive_cache_layout_resize_and_reuse(tmp_path):
    src = _make_tar(tmp_path / "ds.tar.gz", _folder_files())
    ds = build_imagefolder_cache(src, tmp_path / "cache", 16, progress=False)
    assert ds.classes == ["cat", "dog"]
    assert ds.splits["train"].images.shape == (6, 3, 16, 16) and ds.splits["train"].images.dtype == np.uint8
    assert sorted(ds.splits["test"].labels.tolist()) == [0, 0, 0, 1, 1, 1]
    again = build_imagefolder_cache(src, tmp_path / "cache", 16, progress=False)
    assert again.path == ds.path, "an unchanged source reuses its cache"
    other = build_imagefolder_cache(src, tmp_path / "cache", 8, progress=False)
    assert other.path != ds.path, "another size builds another cache"


def test_zip_and_directory_sources(tmp_path):
    files = _folder_files(splits=("train",))
    with zipfile.ZipFile(tmp_path / "ds.zip", "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    z = build_imagefolder_cache(tmp_path / "ds.zip", tmp_path / "cache", 8, progress=False)
    root = tmp_path / "dir"
    for name, data in files.items():
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    d = build_imagefolder_cache(root, tmp_path / "cache", 8, progress=False)
    assert z.classes == d.classes == ["cat", "dog"]
    assert np.array_equal(np.sort(z.splits["train"].labels), np.sort(d.splits["train"].labels))


def test_corrupt_images_skip_or_fail(tmp_path):
    files = _folder_files()
    files["ds/train/cat/bad.jpg"] = b"not a jpeg at all"
    src = _make_tar(tmp_path / "ds.tar.gz", files)
    ds = build_imagefolder_cache(src, tmp_path / "c1", 8, on_corrupt="skip", progress=False)
    assert ds.meta["corrupt_skipped"] == ["ds/train/cat/bad.jpg"]
    assert len(ds.splits["train"].labels) == 6
    with pytest.raises(UserError, match="corrupt image ds/train/cat/bad.jpg.*on_corrupt=skip"):
        build_imagefolder_cache(src, tmp_path / "c2", 8, on_corrupt="fail", progress=False)


def test_bad_sources_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        build_imagefolder_cache(tmp_path / "missing.tar.gz", tmp_path / "c", 8)
    flat = _make_tar(tmp_path / "flat.tar.gz", {"a.jpg": _jpeg((1, 2, 3))})
    with pytest.raises(UserError, match="no images in ImageFolder layout"):
        build_imagefolder_cache(flat, tmp_path / "c", 8, progress=False)
    mismatched = _folder_files(splits=("train",))
    mismatched["ds/test/cat/0.jpg"] = _jpeg((1, 2, 3))
    with pytest.raises(UserError, match="classes differ between splits"):
        build_imagefolder_cache(_make_tar(tmp_path / "mm.tar.gz", mismatched), tmp_path / "c", 8, progress=False)
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="not a directory, .tar.gz"):
        build_imagefolder_cache(tmp_path / "notes.txt", tmp_path / "c", 8)
    with pytest.raises(UserError, match="unknown dataset 'imagenet5'"):
        ImageDataModule(name="imagenet5", data_dir=str(tmp_path)).setup()
    with pytest.raises(UserError, match="label_fraction must be in"):
        ImageDataModule(name="synthetic", label_fraction=1.5)


def test_missing_cifar_without_network_names_the_file(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNLAB_DATA", raising=False)
    dm = ImageDataModule(name="cifar10", data_dir=str(tmp_path), download=False)
    with pytest.raises(UserError, match=r"put cifar10-jpg.tar.gz .* in .*CNNLAB_DATA.*data.source"):
        dm.setup()


def test_balanced_subset_is_balanced_and_deterministic():
    labels = np.repeat(np.arange(10), 100)
    a = balanced_subset(labels, fraction=0.1, seed=3)
    assert np.bincount(labels[a]).tolist() == [10] * 10
    assert np.array_equal(a, balanced_subset(labels, fraction=0.1, seed=3))
    assert not np.array_equal(a, balanced_subset(labels, fraction=0.1, seed=4))
    assert np.bincount(labels[balanced_subset(labels, fraction=0.001)]).min() == 1, "every class keeps one example"


def test_splits_label_fraction_and_colour_spaces(tmp_path):
    kw = dict(name="synthetic", data_dir=str(tmp_path), progress=False, synthetic={"n_train": 400, "n_test": 100})
    dm = ImageDataModule(**kw, val_fraction=0.1, label_fraction=0.5, label_seed=1)
    dm.setup()
    tr, va = dm.splits["train"], dm.splits["val"]
    assert len(va) == 40 and len(tr) == 180
    assert np.bincount(tr.labels.numpy()).tolist() == [18] * 10
    dm2 = ImageDataModule(**kw, val_fraction=0.1, label_fraction=0.5, label_seed=2)
    dm2.setup()
    assert torch.equal(dm2.splits["val"].labels, va.labels) and torch.equal(dm2.splits["val"].images, va.images), "val split is independent of the label seed"
    batch = next(iter(dm.train_dataloader()))
    assert batch[0].dtype == torch.uint8
    for space, ch in (("rgb", 3), ("gray", 1), ("L", 1), ("lab", 3)):
        dm_s = ImageDataModule(**kw, color_space=space)
        x = dm_s.preprocess(batch[0][:4], train=True)
        assert x.shape == (4, ch, 32, 32) and x.dtype == torch.float32
        if space in ("rgb", "gray", "L"):
            assert 0.0 <= x.min() and x.max() <= 1.0
    with pytest.raises(UserError, match="unknown colour space"):
        ImageDataModule(**kw, color_space="hsv")
    quick = ImageDataModule(**kw, test_limit=30)
    quick.setup()
    ref = ImageDataModule(**kw)
    ref.setup()
    test, whole = quick.splits["test"], ref.splits["test"]
    assert len(whole) == 100 and len(test) == 30 and np.bincount(test.labels.numpy()).tolist() == [3] * 10
    assert torch.equal(quick.splits["val"].images, ref.splits["val"].images), "only the test split is cut"


def test_epoch_seeded_sampler_repeats_per_epoch(tmp_path):
    dm = ImageDataModule(name="synthetic", data_dir=str(tmp_path), progress=False, synthetic={"n_train": 200, "n_test": 50}, batch_size=32)
    loader = dm.train_dataloader()
    order = lambda epoch: (loader.sampler.set_epoch(epoch), list(loader.sampler))[1]  # noqa: E731
    assert order(0) == order(0) and order(0) != order(1)


@pytest.mark.integration
def test_real_cifar10_archive(cifar_dm_kwargs):
    dm = ImageDataModule(**cifar_dm_kwargs, label_fraction=0.01)
    dm.setup()
    assert dm.classes[:3] == ["airplane", "automobile", "bird"] and dm.num_classes == 10
    assert len(dm.splits["test"]) == 10_000 and len(dm.splits["val"]) == 5_000
    assert np.bincount(dm.splits["train"].labels.numpy()).tolist() == [45] * 10
    x = dm.preprocess(dm.splits["test"].images[:8])
    assert x.shape == (8, 3, 32, 32) and 0.2 < x.mean() < 0.7, "real photos, not blank images"


def test_missing_stl10_without_network_is_clear(tmp_path):
    dm = ImageDataModule(name="stl10", data_dir=str(tmp_path), image_size=96, download=False)
    with pytest.raises(UserError, match="STL-10 not found in .*stl10_binary.*network access"):
        dm.setup()


def test_a_folder_without_test_has_no_test_split_and_no_split_stands_in(tmp_path):
    """Without test/ there is no test split: asking for it names the fix, and the validation split (where choices
    are made) is never reported under the test split's name."""
    src = _make_tar(tmp_path / "train_only.tar.gz", _folder_files(per_class=10, splits=("train",)))
    dm = ImageDataModule(name="imagefolder", source=str(src), data_dir=str(tmp_path), image_size=8, progress=False,
                         val_fraction=0.2, test_limit=5)
    dm.setup()
    assert set(dm.splits) == {"train", "val"} and len(dm.splits["val"]) == 4
    dm.require("val")
    for ask in (lambda: dm.require("test"), dm.test_dataloader):
        with pytest.raises(UserError, match=r"train_only\.tar\.gz has no test split: .*or run with test=false"):
            ask()
    no_val = ImageDataModule(name="imagefolder", source=str(src), data_dir=str(tmp_path), image_size=8, progress=False,
                             val_fraction=0.0)
    with pytest.raises(UserError, match="the val split is empty: check data.val_fraction"):
        no_val.setup()
