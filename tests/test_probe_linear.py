"""The L-BFGS linear probe: it solves the regularized logistic regression, and only train/val decide its weight decay."""

import numpy as np
import pytest
import torch

from cnnlab.probes.linear import Standardizer, fit_linear_probe, softmax_loss_and_grad


def _blobs(n, d, k, spread, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    means = torch.randn(k, d, generator=g)
    x = means[y] + spread * torch.randn(n, d, generator=g)
    return x * 7.0 + 3.0, y  # scale and offset: the standardization must cope


def test_separable_data_is_fit_to_100_percent():
    x, y = _blobs(800, 32, 10, 0.3)
    fit = fit_linear_probe(x[:600], y[:600], x[600:], y[600:], 10)
    assert fit.accuracy(x[:600], y[:600]) == 1.0
    assert fit.val_acc >= 0.99 and fit.accuracy(x[600:], y[600:]) == fit.val_acc
    # every weight decay separates these classes: the tie goes to the largest
    assert fit.weight_decay == max(fit.grid)
    assert fit.converged and 0 < fit.iterations < 200


def test_matches_sklearn_logistic_regression_on_a_small_problem():
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = _blobs(400, 20, 3, 2.0, seed=1)
    xt, yt, xv, yv = x[:300], y[:300], x[300:], y[300:]
    wd = 1e-2
    fit = fit_linear_probe(xt, yt, xv, yv, 3, weight_decays=(wd,), max_iter=500, rtol_grad=1e-6, tolerance_change=1e-12)
    std = Standardizer.fit(xt)
    zt, zv = std.apply(xt).double().numpy(), std.apply(xv).double().numpy()
    # sklearn minimizes 0.5 ||W||^2 + C * sum(CE); ours is mean(CE) + wd / 2 ||W||^2, the same optimum at C = 1 / (N wd)
    ref = sklearn.LogisticRegression(C=1.0 / (len(yt) * wd), tol=1e-10, max_iter=10_000).fit(zt, yt.numpy())
    assert np.allclose(fit.weight.T.numpy(), ref.coef_, atol=2e-3), np.abs(fit.weight.T.numpy() - ref.coef_).max()
    ours = fit.predict(xv).numpy()
    assert (ours == ref.predict(zv)).mean() >= 0.99
    assert abs(fit.val_acc - ref.score(zv, yv.numpy())) <= 0.01
    # and the objective value at its solution is no worse than at sklearn's
    w_ref = torch.tensor(ref.coef_.T, dtype=torch.float32)
    b_ref = torch.tensor(ref.intercept_, dtype=torch.float32)
    zt32 = torch.tensor(zt, dtype=torch.float32)
    ours_loss = softmax_loss_and_grad(zt32, yt, fit.weight, fit.bias, wd)[0]
    ref_loss = softmax_loss_and_grad(zt32, yt, w_ref, b_ref, wd)[0]
    assert ours_loss <= ref_loss + 1e-5


def test_analytic_gradient_matches_autograd():
    x, y = _blobs(50, 6, 4, 1.0)
    w = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, dtype=torch.float64, requires_grad=True)
    loss = torch.nn.functional.cross_entropy(x.double() @ w + b, y) + 0.5 * 0.3 * (w * w).sum()
    loss.backward()
    ours, gw, gb = softmax_loss_and_grad(x.double(), y, w.detach(), b.detach(), 0.3, chunk_size=7)
    assert ours == pytest.approx(float(loss.detach()), rel=1e-10)
    assert torch.allclose(gw, w.grad) and torch.allclose(gb, b.grad)


def test_choice_depends_only_on_train_and_val_and_is_deterministic():
    x, y = _blobs(900, 24, 5, 2.5, seed=2)
    a = fit_linear_probe(x[:500], y[:500], x[500:700], y[500:700], 5)
    b = fit_linear_probe(x[:500], y[:500], x[500:700], y[500:700], 5)
    assert a.grid == b.grid and a.weight_decay == b.weight_decay and torch.equal(a.weight, b.weight)
    assert a.grid[a.weight_decay] == max(a.grid.values()) == a.val_acc
    # a larger weight decay never loses a tie
    assert all(a.grid[w] < a.val_acc for w in a.grid if w > a.weight_decay)
    test_x, test_y = x[700:], y[700:]
    before = a.accuracy(test_x, test_y)
    shuffled = test_y[torch.randperm(len(test_y), generator=torch.Generator().manual_seed(0))]
    assert a.accuracy(test_x, shuffled) != before  # the test labels only change the reported test number


def test_float16_memmap_features_and_the_float16_working_copy(tmp_path):
    x, y = _blobs(600, 40, 4, 2.0, seed=3)
    path = tmp_path / "f.npy"
    np.save(path, x.numpy().astype(np.float16))
    mm = np.load(path, mmap_mode="r")
    ref = fit_linear_probe(torch.from_numpy(np.asarray(mm, dtype=np.float32)[:400]), y[:400], x[400:], y[400:], 4)
    via_mm = fit_linear_probe(mm[:400], y[:400].numpy(), mm[400:], y[400:].numpy(), 4)
    half = fit_linear_probe(mm[:400], y[:400], mm[400:], y[400:], 4, max_bytes=0)  # forces the float16 copy
    assert via_mm.grid == pytest.approx(ref.grid, abs=0.01)
    assert half.grid == pytest.approx(ref.grid, abs=0.02)


def test_constant_features_do_not_break_standardization():
    x, y = _blobs(300, 8, 3, 0.5)
    x = torch.cat([x, torch.full((300, 3), 5.0)], 1)
    fit = fit_linear_probe(x[:200], y[:200], x[200:], y[200:], 3)
    assert torch.isfinite(fit.weight).all() and fit.val_acc > 0.9


def test_empty_grid_is_an_error():
    x, y = _blobs(30, 4, 3, 0.5)
    with pytest.raises(ValueError, match="weight_decays is empty"):
        fit_linear_probe(x, y, x, y, 3, weight_decays=())
