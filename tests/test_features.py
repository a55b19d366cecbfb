import numpy as np
import pytest
import torch

from cnnlab.backbones import VGGCifar
from cnnlab.features import (FeatureStore, data_fingerprint, extract_features, iter_features, pool_features, pool_side,
                             state_fingerprint)
from cnnlab.io.cache import keyed_cache


def test_pool_side_bounds_dimension():
    assert pool_side(64, 32, 9216) == 12  # 64 * 12 * 12 = 9216
    assert pool_side(512, 4, 9216) == 4  # never beyond the map
    assert pool_side(256, 8, None) == 1
    x = torch.rand(2, 64, 32, 32)
    assert pool_features(x, 9216).shape == (2, 9216)
    assert torch.allclose(pool_features(x, None), x.mean(dim=(2, 3)))


def test_extract_features_matches_direct_forward_and_caches(tmp_path):
    torch.manual_seed(0)
    net = VGGCifar(in_channels=3, width=4).train()
    images = (torch.rand(10, 3, 32, 32) * 255).to(torch.uint8)
    labels = torch.arange(10)
    batches = [(images[:6], labels[:6]), (images[6:], labels[6:])]
    pre = lambda u: u.float() / 255  # noqa: E731
    feats = extract_features(net, batches, ["conv2_2", "conv4_2"], pre, target_dims=None, dtype=torch.float32)
    assert net.training, "the backbone's mode is restored"
    net.eval()
    with torch.no_grad():
        direct = net.forward_taps(pre(images), ["conv4_2"])["conv4_2"].mean(dim=(2, 3))
    assert torch.allclose(feats["conv4_2"], direct, atol=1e-5)
    assert torch.equal(feats["labels"], labels)

    calls = []
    key = state_fingerprint(net)
    compute = lambda: calls.append(1) or feats  # noqa: E731
    a = keyed_cache(tmp_path / "f.pt", key, compute)
    b = keyed_cache(tmp_path / "f.pt", key, compute)
    assert len(calls) == 1 and torch.equal(a["conv2_2"], b["conv2_2"])
    keyed_cache(tmp_path / "f.pt", "other-key", compute)
    assert len(calls) == 2, "a different key recomputes"


def _net_and_batches(seed=0):
    torch.manual_seed(seed)
    net = VGGCifar(in_channels=3, width=4)
    g = torch.Generator().manual_seed(1)
    images = (torch.rand(10, 3, 32, 32, generator=g) * 255).to(torch.uint8)
    labels = torch.arange(10) % 3
    return net, [(images[:6], labels[:6]), (images[6:], labels[6:])]


def test_feature_store_round_trips_memory_mapped_and_is_keyed_by_the_trunk(tmp_path):
    net, batches = _net_and_batches()
    taps = ["conv2_2", "conv4_2"]
    pre = lambda u: u.float() / 255  # noqa: E731
    calls = []

    def compute(model):
        calls.append(1)
        return iter_features(model, batches, taps, pre, target_dims=128)

    store = FeatureStore(tmp_path / "store")
    key = state_fingerprint(net)
    got = store.get("train", key, taps, lambda: compute(net), n=10)
    direct = extract_features(net, batches, taps, pre, target_dims=128)
    for t in taps:
        assert isinstance(got[t], np.memmap) and got[t].dtype == np.float16
        assert np.array_equal(np.asarray(got[t]), direct[t].numpy())
    assert np.array_equal(got["labels"], direct["labels"].numpy())
    stamp = (store.path("train") / "conv2_2.npy").stat().st_mtime_ns
    store.get("train", key, taps, lambda: compute(net), n=10)
    store.get("train", key, taps[:1], lambda: compute(net), n=10)  # a subset of the stored taps is found too
    assert len(calls) == 1 and (store.path("train") / "conv2_2.npy").stat().st_mtime_ns == stamp
    other, _ = _net_and_batches(seed=1)
    assert state_fingerprint(other) != key, "different weights, different key"
    again = store.get("train", state_fingerprint(other), taps, lambda: compute(other), n=10)
    assert len(calls) == 2 and not np.array_equal(np.asarray(again["conv4_2"]), direct["conv4_2"].numpy())
    assert store.load("train", key, taps) is None, "the entry now belongs to the other trunk"


def test_feature_store_leaves_no_entry_after_a_failed_write(tmp_path):
    net, batches = _net_and_batches()

    def failing():
        yield from iter_features(net, batches[:1], ["conv4_2"])
        raise RuntimeError("interrupted")

    store = FeatureStore(tmp_path)
    with pytest.raises(RuntimeError, match="interrupted"):
        store.write("train", "k", failing(), n=10)
    assert store.load("train", "k", ["conv4_2"]) is None
    assert list(tmp_path.iterdir()) == [], "no temp directory is left behind"
    assert net.training, "the backbone's mode is restored"
    with pytest.raises(ValueError, match="4 rows written, 10 announced"):
        store.write("train", "k", iter_features(net, batches[1:], ["conv4_2"]), n=10)


def test_data_fingerprint_follows_the_images():
    a = torch.zeros(4, 3, 8, 8, dtype=torch.uint8)
    b = a.clone()
    b[0, 0, 0, 0] = 1
    assert data_fingerprint(a) == data_fingerprint(a.clone()) != data_fingerprint(b)
