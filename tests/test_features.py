import torch

from cnnlab.backbones import VGGCifar
from cnnlab.features import cached_features, extract_features, pool_features, pool_side, state_fingerprint


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
    a = cached_features(tmp_path / "f.pt", key, compute)
    b = cached_features(tmp_path / "f.pt", key, compute)
    assert len(calls) == 1 and torch.equal(a["conv2_2"], b["conv2_2"])
    cached_features(tmp_path / "f.pt", "other-key", compute)
    assert len(calls) == 2, "a different key recomputes"
