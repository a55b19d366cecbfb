"""Segmentation units on synthetic data: joint augmentation, scores, sparse = dense, the dense probe's algebra, bad input."""

import numpy as np
import pytest
import torch
from PIL import Image
from torchmetrics.classification import MulticlassConfusionMatrix

from cnnlab.data.segmentation import SegmentationDataModule, joint_augment
from cnnlab.errors import UserError
from cnnlab.hypercolumn import gather_pixels, grid_pixels, pixel_centers, sample_hypercolumns
from cnnlab.labelmaps import majority_class_scores, palette, sample_label_pixels, scores_from_confusion
from cnnlab.probes.dense import dense_probe_logits
from cnnlab.probes.linear import fit_linear_probe

CLASSES = 5
VOID = 5


def _blocky_labels(n: int, h: int, w: int, block: int = 6, seed: int = 0) -> torch.Tensor:
    """``(n, h, w)`` label maps of ``block``-pixel squares, void included."""
    g = torch.Generator().manual_seed(seed)
    small = torch.randint(0, CLASSES + 1, (n, -(-h // block), -(-w // block)), generator=g)
    return small.repeat_interleave(block, 1).repeat_interleave(block, 2)[:, :h, :w]


def test_joint_augmentation_keeps_image_and_mask_aligned(one_thread):
    labels = _blocky_labels(16, 30, 40)
    pal = palette(CLASSES).float() / 255
    images = pal[labels].permute(0, 3, 1, 2)  # the colour of every pixel encodes its label
    aug = joint_augment((30, 40), crop_scale=(0.3, 0.6), flip=True)
    torch.manual_seed(0)
    x, m = aug(images, labels[:, None].float())
    m = m[:, 0].round().long()
    assert set(m.unique().tolist()) <= set(range(CLASSES + 1)), "nearest neighbour: no blended labels"
    decoded = torch.cdist(x.permute(0, 2, 3, 1).reshape(-1, 3), pal).argmin(1).reshape(m.shape)
    agree = (decoded == m).float().mean()
    assert agree > 0.93, f"only {agree:.3f} of the pixels decode to their mask's label"  # misses: bilinear edges only
    assert not torch.equal(m, labels), "the augmentation changed the frames (scale, crop, flip)"


def test_miou_matches_a_hand_computed_confusion_matrix_and_ignores_void():
    truth = torch.tensor([[0, 0, 1, 1, 2, VOID]])
    pred = torch.tensor([[0, 1, 1, 1, 0, 3]])
    cm = MulticlassConfusionMatrix(CLASSES, ignore_index=VOID)
    cm.update(pred, truth)
    s = scores_from_confusion(cm.compute())
    # class 0: tp 1, fp 1 (the 2), fn 1 -> 1/3; class 1: tp 2, fp 1 -> 2/3; class 2: tp 0, fn 1 -> 0; 3, 4: absent
    assert s["iou"][:3].tolist() == pytest.approx([1 / 3, 2 / 3, 0.0])
    assert torch.isnan(s["iou"][3:]).all(), "a class neither present nor predicted is left out of the mean"
    assert float(s["miou"]) == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert float(s["pixel_acc"]) == pytest.approx(3 / 5)
    other = MulticlassConfusionMatrix(CLASSES, ignore_index=VOID)
    other.update(torch.tensor([[0, 1, 1, 1, 0, 0]]), truth)  # a different prediction at the void pixel only
    assert torch.equal(other.compute(), cm.compute())


def test_majority_class_baseline():
    train = torch.tensor([[0, 0, 0, 1, VOID, VOID, VOID]])
    s = majority_class_scores(train, torch.tensor([[0, 1, 1, 2, VOID]]), CLASSES)
    assert int(s["class"]) == 0 and float(s["miou"]) == pytest.approx((1 / 4 + 0 + 0) / 3)


def test_pixel_sampling_skips_void_and_balances_classes():
    masks = torch.full((2, 20, 20), VOID)
    masks[:, :18] = 0
    masks[:, 18:, :10] = 1  # 10 pixels of class 1 against 360 of class 0
    g = torch.Generator().manual_seed(0)
    pix = sample_label_pixels(masks, 4000, VOID, generator=g)
    labels = gather_pixels(masks[:, None], pix)[..., 0]
    assert (labels != VOID).all()
    balanced = gather_pixels(masks[:, None], sample_label_pixels(masks, 4000, VOID, balanced=True, generator=g))[..., 0]
    assert (labels == 1).float().mean() < 0.1 and abs(float((balanced == 1).float().mean()) - 0.5) < 0.05


@pytest.fixture(scope="module")
def segmenter():
    from cnnlab.models.segmenter import Segmenter

    torch.manual_seed(0)
    model = Segmenter({"_target_": "cnnlab.backbones.VGGCifar", "in_channels": 3, "width": 4, "plan": "vgg8"},
                      num_classes=CLASSES, ignore_index=VOID, hidden=16, eval_chunk_pixels=97)
    x = torch.rand(4, 3, 21, 26)
    model.train()
    model.tap_maps(x)  # BatchNorm running statistics that are not the identity
    return model.eval()


def test_sparse_dense_and_banded_heads_give_the_same_logits(segmenter, one_thread):
    x = torch.rand(2, 3, 21, 26)
    with torch.no_grad():
        dense = segmenter.dense_logits(x)
        banded = segmenter(x)  # the head in bands of at most 97 pixels
        pixels = torch.stack([torch.randint(0, 21, (2, 30)), torch.randint(0, 26, (2, 30))], -1)
        sparse = segmenter.sparse_logits(x, pixels)
    assert dense.shape == banded.shape == (2, CLASSES, 21, 26)
    assert torch.allclose(banded, dense, atol=1e-5)
    assert torch.allclose(sparse, gather_pixels(dense, pixels), atol=1e-5)


def test_dense_probe_logits_equal_the_probe_on_every_pixels_hypercolumn(one_thread):
    g = torch.Generator().manual_seed(0)
    maps = [torch.randn(1, 3, 4, 5, generator=g), torch.randn(1, 2, 2, 3, generator=g)]
    h, w = 13, 17
    cols = sample_hypercolumns(maps, pixel_centers(grid_pixels(h, w)[None], h, w))[0]  # (h*w, 5)
    labels = torch.randint(0, 3, (h * w,), generator=g)
    fit = fit_linear_probe(cols, labels, cols, labels, 3, [0.1], max_iter=20)
    dense = dense_probe_logits(maps, fit, (h, w))
    assert torch.allclose(dense[0].flatten(1).T, fit.logits(cols), atol=1e-4)


# ----------------------------------------------------------------------------- bad input (a folder of images/ + labels/)
def _folder(root, frames: dict, classes=("a", "b", "c")):
    """``frames``: ``{"train/x": (image (H, W, 3) or None, labels (H, W) or None)}`` -> a segmentation folder."""
    (root / "classes.txt").parent.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    for key, (image, labels) in frames.items():
        split, name = key.split("/")
        if image is not None:
            (root / split / "images").mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(root / split / "images" / f"{name}.png")
        if labels is not None:
            (root / split / "labels").mkdir(parents=True, exist_ok=True)
            Image.fromarray(labels.astype(np.uint8)).save(root / split / "labels" / f"{name}.png")
    return root


def _frame(h=12, w=16, value=1):
    return np.full((h, w, 3), 80, np.uint8), np.full((h, w), value, np.uint8)


def _dm(source, data_dir, **kw):
    return SegmentationDataModule(name="segfolder", source=str(source), data_dir=str(data_dir), image_size=[6, 8],
                                  ignore_index=255, progress=False, **kw)


def test_a_good_folder_loads_with_its_own_splits(tmp_path):
    src = _folder(tmp_path / "ok", {"train/a": _frame(), "train/b": _frame(), "val/c": _frame(), "test/d": _frame(24, 32)})
    dm = _dm(src, tmp_path / "data")
    dm.setup()
    assert dm.classes == ["a", "b", "c"] and len(dm.splits["train"]) == 2
    assert dm.splits["test"].masks.shape == (1, 24, 32), "test label maps stay at full resolution"
    images, masks, sizes = next(iter(dm.train_dataloader()))
    assert images.dtype == torch.uint8 and images.shape == (2, 3, 6, 8) and masks.shape == (2, 6, 8)


def test_a_cache_another_worker_published_first_is_kept(tmp_path):
    """Two gap workers decode the same source at once; the one that publishes second finds the first's cache in
    place and loads it (it used to fail with 'Directory not empty' and lose the arm)."""
    from PIL import Image

    from cnnlab.data.segmentation import build_seg_cache

    src = _folder(tmp_path / "ok", {"train/a": _frame(), "val/b": _frame(value=2), "test/c": _frame()})
    first = _dm(src, tmp_path / "data")
    first.setup()
    (path,) = (tmp_path / "data" / "cache").iterdir()
    pairs = [(split, name, Image.fromarray(image), Image.fromarray(mask))
             for split, name, (image, mask) in (("train", "a", _frame()), ("val", "b", _frame(value=1)), ("test", "c", _frame()))]
    second = build_seg_cache(path, pairs, ["a", "b", "c"], (6, 8), 255, {"source": str(src), "name": "segfolder"})
    assert second.splits["val"].masks.max() == 2, "the first publisher's cache is the one kept"
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name], "no temp directory is left behind"


@pytest.mark.parametrize("split", ["test", "val"])
def test_a_limit_is_a_fixed_subset_of_the_split_frames(tmp_path, split):
    frames = {"train/a": _frame(), **{f"{s}/{s}{i}": _frame(value=i % 3) for s in ("val", "test") for i in range(6)}}
    src = _folder(tmp_path / "ok", frames)
    names = []
    for run in range(2):
        dm = _dm(src, tmp_path / "data", **{f"{split}_limit": 3}, label_seed=run, shuffle_seed=run)
        dm.setup()
        names.append(dm.splits[split].names)
        other = "val" if split == "test" else "test"
        assert len(dm.splits[other]) == 6, "a limit on one split leaves the other whole"
    assert len(names[0]) == 3 and names[0] == names[1], "the subset depends on the data settings, not the run's seeds"
    whole = _dm(src, tmp_path / "data")
    whole.setup()
    assert len(whole.splits[split]) == 6 and set(names[0]) < set(whole.splits[split].names)
    assert dm.splits[split].sizes.tolist() == [[12, 16]] * 3, "the kept frames are still scored at full resolution"


@pytest.mark.parametrize("case, frames, message", [
    ("size", {"train/a": (_frame()[0], _frame(12, 15)[1])}, "label map of train/images/a.png is 15x12 but its image is 16x12"),
    ("values", {"train/a": _frame(value=7)}, "label map of train/images/a.png holds values [7] outside the 3 classes"),
    ("no mask", {"train/a": _frame(), "train/b": (_frame()[0], None)}, "image train/images/b.png in"),
    ("empty", {"train/a": _frame()}, "the train split of"),
])
def test_bad_input_is_one_line_naming_the_file_and_nothing_is_cached(tmp_path, case, frames, message):
    src = _folder(tmp_path / "bad", frames)
    data_dir = tmp_path / "data"
    with pytest.raises(UserError) as err:
        _dm(src, data_dir).setup()
    assert message in str(err.value) and "\n" not in str(err.value) and ":" in str(err.value)
    if case != "empty":  # a refused source leaves no cache behind
        assert not (data_dir / "cache").exists() or not any((data_dir / "cache").iterdir())


@pytest.mark.parametrize("size", ["0", "-5", "abc"])
def test_segment_refuses_a_bad_size_in_one_line(tmp_path, capsys, size):
    from cnnlab.segment import main

    with pytest.raises(SystemExit) as exit_:
        main([str(tmp_path), "--ckpt", str(tmp_path / "none.ckpt"), "--size", size])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and err == [f"error: --size {size}: pass a positive number of pixels "
                                              "(the shorter side the model sees)"]


def test_eval_rebuilds_the_checkpoints_data_with_this_machines_paths_and_command_line_keys(monkeypatch):
    from hydra import compose, initialize_config_dir

    from cnnlab import evaluate
    from cnnlab.config import CONF_DIR

    with initialize_config_dir(str(CONF_DIR), version_base=None):
        cfg = compose("eval", overrides=["ckpt_path=x.ckpt", "paths.data_dir=/here", "data.eval_batch_size=4"])
    checkpoint = {"cnnlab_data": {"name": "camvid"},  # written before the data module's class was recorded
                  "datamodule_hyper_parameters": {"name": "camvid", "data_dir": "/there", "image_size": [45, 60],
                                                  "test_limit": 32, "eval_batch_size": 16}}
    monkeypatch.setattr(evaluate, "command_line_data", lambda: (False, ["eval_batch_size"]))
    data = evaluate.data_config(cfg, checkpoint)
    assert data._target_ == "cnnlab.data.segmentation.SegmentationDataModule"
    assert (data.data_dir, data.image_size, data.test_limit, data.eval_batch_size) == ("/here", [45, 60], 32, 4)
    monkeypatch.setattr(evaluate, "command_line_data", lambda: (True, []))  # data=<name> on the command line
    assert evaluate.data_config(cfg, checkpoint).name == "cifar10"
