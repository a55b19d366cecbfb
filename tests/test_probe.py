"""Linear probes: a frozen trunk stays bit-identical and in eval mode; the probes learn what is linearly there;
validation chooses and the test split only reports."""

import numpy as np
import pytest
import pytorch_lightning as pl
import torch

from cnnlab.backbones import VGGCifar, load_trunk, save_trunk
from cnnlab.data import ImageDataModule
from cnnlab.errors import UserError
from cnnlab.probes import LinearProbe, calibrate_batchnorm, check_trunk_matches, fit_linear_probe, probe_trunk_cached
from tests.conftest import run_cli


def _trunk(path, width=4, color_space="L"):
    torch.manual_seed(0)
    net = VGGCifar(in_channels=1, width=width)
    # non-default running statistics, so a BatchNorm left in training mode would visibly move them
    calibrate_batchnorm(net, [torch.rand(32, 1, 32, 32) for _ in range(2)])
    return save_trunk(path, net, color_space, "supervised")


def _dm(data_dir, color_space="L", n_train=200):
    return ImageDataModule(name="synthetic", data_dir=str(data_dir), color_space=color_space, batch_size=32, eval_batch_size=100,
                           augment=["flip"], synthetic={"n_train": n_train, "n_test": 100, "num_classes": 10, "seed": 0}, progress=False)


class _AssertTrunkEval(pl.Callback):
    def __init__(self):
        self.checked = 0

    def _check(self, pl_module):
        assert all(not m.training for m in pl_module.backbone.modules()), "the trunk must stay in eval mode"
        assert pl_module.heads.training == pl_module.training
        self.checked += 1

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        assert pl_module.training
        self._check(pl_module)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self._check(pl_module)

    def on_validation_batch_start(self, trainer, pl_module, batch, batch_idx, dataloader_idx=0):
        self._check(pl_module)


def test_probe_keeps_trunk_bit_identical_and_in_eval_mode(tmp_path, data_dir):
    path = _trunk(tmp_path / "trunk.pt")
    before = {k: v.clone() for k, v in load_trunk(path)[0].state_dict().items()}
    probe = LinearProbe(str(path), target_dims=256, num_classes=10,
                        optimizer={"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.05, "momentum": 0.9})
    assert not any(p.requires_grad for p in probe.backbone.parameters())
    heads_before = [p.detach().clone() for p in probe.heads.parameters()]
    check = _AssertTrunkEval()
    trainer = pl.Trainer(max_epochs=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         enable_model_summary=False, callbacks=[check], accelerator="cpu")
    dm = _dm(data_dir)
    trainer.fit(probe, datamodule=dm)
    trainer.test(probe, datamodule=dm)
    assert check.checked > 10
    after = probe.backbone.state_dict()
    for k, v in before.items():
        assert torch.equal(after[k], v), f"trunk tensor {k} changed during probe training"
    assert any(not torch.equal(a, b) for a, b in zip(heads_before, probe.heads.parameters())), "the heads must train"
    taps = VGGCifar(1, width=4).default_taps
    for t in taps:
        assert 0.0 <= float(trainer.callback_metrics[f"test/acc/{t}"]) <= 1.0
    assert float(trainer.callback_metrics["test/acc"]) == max(float(trainer.callback_metrics[f"test/acc/{t}"]) for t in taps)
    assert float(trainer.callback_metrics["test/acc"]) > 0.3  # synthetic classes are colour/shape coded: chance is 0.1


def test_planted_linear_signal_is_found_and_shuffled_labels_are_not():
    g = torch.Generator().manual_seed(0)
    n, d, k = 1200, 64, 10
    y = torch.arange(n) % k
    means = torch.randn(k, d, generator=g)
    x = means[y] + 0.3 * torch.randn(n, d, generator=g)  # well-separated class means: linearly separable
    noise = torch.randn(n, d, generator=g)
    feats = {"signal": x * 7.0 + 3.0, "noise": noise}  # scale/offset: the standardization must cope
    tr, va, te = slice(0, 700), slice(700, 900), slice(900, None)
    for tap, lo, hi in (("signal", 0.9, 1.0), ("noise", 0.0, 0.25)):
        fit = fit_linear_probe(feats[tap][tr], y[tr], feats[tap][va], y[va], k)
        assert lo <= fit.accuracy(feats[tap][te], y[te]) <= hi, tap
    shuffled = y[tr][torch.randperm(700, generator=g)]
    fit = fit_linear_probe(feats["signal"][tr], shuffled, feats["signal"][va], y[va], k)
    assert fit.accuracy(feats["signal"][te], y[te]) < 0.25, "with shuffled training labels the test accuracy must stay near chance (0.1)"


TAPS = ["conv2_2", "conv4_2"]


def _probe(path, dm, cache, **kw):
    return probe_trunk_cached(path, dm, taps=TAPS, target_dims=512, cache_dir=cache, weight_decays=(1e-3, 1e-1), max_iter=50, **kw)


def test_feature_cache_mode_caches_on_disk_and_checks_colour_space(tmp_path, data_dir):
    path = _trunk(tmp_path / "trunk.pt")
    dm = _dm(data_dir)
    res = _probe(path, dm, tmp_path / "cache")
    assert res["taps"] == TAPS and res["n_test"] == 100 and res["n_val"] == len(dm.splits["val"]) > 0
    assert res["dims"] == {"conv2_2": 8 * 8 * 8, "conv4_2": 32 * 4 * 4}
    for t in TAPS:
        lin, knn = res["linear"][t], res["knn"][t]
        assert set(lin["grid"]) == {"0.001", "0.1"} and lin["val"] == max(lin["grid"].values())
        assert lin["grid"][repr(lin["weight_decay"])] == lin["val"]
        assert 0.0 <= lin["test"] <= 1.0 and 0.0 <= knn["test"] <= 1.0 and lin["iterations"] <= 50
        assert knn["k"] == 200 and knn["temperature"] == 0.1
    assert max(r["test"] for r in res["linear"].values()) > 0.3  # synthetic classes are colour/shape coded: chance is 0.1
    stored = tmp_path / "cache" / "features_train" / "conv2_2.npy"
    assert np.load(stored, mmap_mode="r").dtype == np.float16
    stamp = stored.stat().st_mtime_ns
    again = _probe(path, dm, tmp_path / "cache")
    assert stored.stat().st_mtime_ns == stamp, "the second probe of the same trunk must reuse the stored features"
    assert again["linear"] == res["linear"] and again["knn"] == res["knn"], "same features: the same deterministic probes"
    _probe(path, dm, tmp_path / "gone", keep_cache=False)
    assert not any((tmp_path / "gone").iterdir())
    with pytest.raises(UserError, match="set data.color_space=L"):
        probe_trunk_cached(path, _dm(data_dir, color_space="rgb"))
    with pytest.raises(TypeError, match="epochs"):
        probe_trunk_cached(path, dm, epochs=3)


def test_test_labels_never_change_a_choice(tmp_path, data_dir):
    path = _trunk(tmp_path / "trunk.pt")
    dm = _dm(data_dir)
    res = _probe(path, dm, tmp_path / "a")
    shuffled = _dm(data_dir)
    shuffled.setup()
    test = shuffled.splits["test"]
    test.labels = test.labels[torch.randperm(len(test.labels), generator=torch.Generator().manual_seed(0))]
    corrupted = _probe(path, shuffled, tmp_path / "b")
    for t in TAPS:
        for key in ("grid", "weight_decay", "val", "iterations", "converged"):
            assert corrupted["linear"][t][key] == res["linear"][t][key], (t, key)
        assert corrupted["knn"][t]["val"] == res["knn"][t]["val"]
    assert any(corrupted["linear"][t]["test"] != res["linear"][t]["test"] for t in TAPS), "the test labels do reach the test score"
    blind = _probe(path, dm, tmp_path / "c", evaluate_test=False)
    assert blind["n_test"] == 0 and all(blind["linear"][t]["test"] is None and blind["knn"][t]["test"] is None for t in TAPS)
    assert not (tmp_path / "c" / "features_test").exists(), "evaluate_test=False never runs the trunk over the test split"
    assert {t: blind["linear"][t]["weight_decay"] for t in TAPS} == {t: res["linear"][t]["weight_decay"] for t in TAPS}


def test_a_validation_split_that_is_the_test_split_is_refused(tmp_path, data_dir):
    path = _trunk(tmp_path / "trunk.pt")
    dm = ImageDataModule(name="synthetic", data_dir=str(data_dir), color_space="L", val_fraction=0.0,
                         synthetic={"n_train": 200, "n_test": 100, "num_classes": 10, "seed": 0}, progress=False)
    with pytest.raises(UserError, match="data.val_fraction > 0"):
        _probe(path, dm, tmp_path / "cache")


def test_bad_trunks_and_taps_are_one_line_errors(tmp_path, data_dir):
    path = _trunk(tmp_path / "trunk.pt")
    with pytest.raises(UserError, match="unknown tap"):
        LinearProbe(str(path), taps=["conv9_9"])
    with pytest.raises(UserError, match="resnet18_cifar"):
        LinearProbe(str(path), expect_arch="resnet18_cifar")
    meta = load_trunk(path)[1]
    with pytest.raises(UserError, match="width=4 .expected 16"):
        check_trunk_matches(meta, path, arch="vgg_cifar", arch_kwargs={"width": 16})
    probe = LinearProbe(str(path), target_dims=64)
    trainer = pl.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False, accelerator="cpu")
    with pytest.raises(UserError, match="set data.color_space=L"):
        trainer.fit(probe, datamodule=_dm(data_dir, color_space="gray"))
    for err in (UserError,):
        with pytest.raises(err, match="does not exist"):
            LinearProbe(str(tmp_path / "missing.pt"))


def test_calibrate_batchnorm_gives_random_trunk_normalised_activations():
    torch.manual_seed(0)
    net = VGGCifar(in_channels=1, width=8).eval()
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "num_batches" not in k}
    x = torch.rand(64, 1, 32, 32)
    with torch.no_grad():
        before = net.forward_taps(x, ["conv4_2"])["conv4_2"].std().item()
    n = calibrate_batchnorm(net, [x[:32], x[32:]])
    with torch.no_grad():
        after = net.forward_taps(x, ["conv4_2"])["conv4_2"].std().item()
    assert n == 64 and not net.training
    assert before < 0.01 < 0.1 < after, (before, after)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in weights.items())


def test_cli_linear_probe_config(tmp_path, data_dir):
    path = _trunk(tmp_path / "trunk.pt")
    run_dir = tmp_path / "run"
    run_cli("cnnlab.train", "model=linear_probe", f"model.trunk={path}", "model.target_dims=256", "data=synthetic", "data.color_space=L",
            "data.synthetic.n_train=200", "data.synthetic.n_test=100", "trainer.max_epochs=1", "logger=none", "callbacks.progress_bar=null",
            f"paths.data_dir={data_dir}", f"hydra.run.dir={run_dir}")
    import json

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "test/acc/conv4_2" in metrics and "test/acc" in metrics
    assert not (run_dir / "trunk.pt").exists(), "a probe run has no trunk of its own to export"


def test_real_cifar_probe_of_a_calibrated_random_trunk(tmp_path, cifar_dm_kwargs):
    dm = ImageDataModule(**cifar_dm_kwargs, color_space="L", train_limit=500, val_fraction=0.004, eval_batch_size=250)
    dm.setup()
    torch.manual_seed(0)
    net = VGGCifar(in_channels=1, width=8)
    calibrate_batchnorm(net, dm.loader("train", 250), lambda u: dm.preprocess(u), max_batches=2)
    path = save_trunk(tmp_path / "trunk.pt", net, "L", "random")
    res = probe_trunk_cached(path, dm, taps=["conv3_2"], target_dims=2048, cache_dir=tmp_path / "cache",
                             weight_decays=(0.1, 1.0), max_iter=100, evaluate_test=False)
    assert res["n_train"] == 500 and res["n_val"] == 200 and res["n_test"] == 0
    lin, knn = res["linear"]["conv3_2"], res["knn"]["conv3_2"]
    assert lin["converged"] and lin["val"] > 0.15 and knn["val"] > 0.15  # chance is 0.1; ~0.25-0.3 expected
