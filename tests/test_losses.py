"""Losses against direct NumPy formulas, and their gradients against finite differences."""

import numpy as np
import pytest

from gls_np import bounds, losses
from gls_np.layers import Flatten, Linear, ReLU
from gls_np.model import Sequential
from gls_np.tensor import Tensor, value_and_grad


def ce_reference(logits, y):
    """ln(1 + sum_{i != t} exp(y_i - y_t)) per example, written out (paper, eq. 2)."""
    out = np.empty(logits.shape[:-1])
    for idx in np.ndindex(*logits.shape[:-1]):
        z, t = logits[idx], y[idx[-1]]
        out[idx] = np.log(1 + sum(np.exp(z[i] - z[t]) for i in range(len(z)) if i != t))
    return out


def margins_reference(logits, y):
    K = logits.shape[-1]
    rows = [
        [logits[..., b, y[b]] - logits[..., b, i] for i in range(K) if i != y[b]]
        for b in range(len(y))
    ]
    return np.moveaxis(np.array(rows), (0, 1), (-2, -1))


def central_fd_grad(f, a, h=1e-6):
    g = np.zeros_like(a)
    for idx in np.ndindex(*a.shape):
        e = np.zeros_like(a)
        e[idx] = h
        g[idx] = (f(a + e) - f(a - e)) / (2 * h)
    return g


@pytest.mark.parametrize("lead", [(), (3,)])
def test_cross_entropy_matches_formula(lead, rng):
    logits = 3 * rng.standard_normal((*lead, 5, 4))
    y = rng.integers(0, 4, 5)
    per = losses.cross_entropy(logits, y, per_example=True)
    assert per.shape == (*lead, 5)
    np.testing.assert_allclose(per, ce_reference(logits, y), rtol=1e-12)
    mean = losses.cross_entropy(logits, y)
    assert mean.shape == lead
    np.testing.assert_allclose(mean, ce_reference(logits, y).mean(-1), rtol=1e-12)


def test_cross_entropy_is_stable_for_large_logits():
    logits = np.array([[1000.0, 0.0, -1000.0]])
    np.testing.assert_allclose(losses.cross_entropy(logits, np.array([1])), 1000.0, rtol=1e-12)


@pytest.mark.parametrize("lead", [(), (2,)])
def test_robust_cross_entropy_matches_formula(lead, rng):
    m = rng.standard_normal((*lead, 6, 3))
    ref = np.log(1 + np.exp(-m).sum(-1))
    np.testing.assert_allclose(losses.robust_cross_entropy(m, per_example=True), ref, rtol=1e-12)
    out = losses.robust_cross_entropy(m)
    assert out.shape == lead
    np.testing.assert_allclose(out, ref.mean(-1), rtol=1e-12)


@pytest.mark.parametrize("lead", [(), (3,)])
def test_logit_margins_in_spec_order(lead, rng):
    logits = rng.standard_normal((*lead, 4, 5))
    y = np.array([0, 4, 2, 2])
    np.testing.assert_allclose(
        losses.logit_margins(logits, y), margins_reference(logits, y), rtol=1e-12
    )


def test_robust_ce_equals_ce_for_exact_bounds(rng):
    # eps = 0: the lower bounds on y_t - y_i are the margins themselves
    logits = 2 * rng.standard_normal((3, 7, 5))
    y = rng.integers(0, 5, 7)
    m = losses.logit_margins(logits, y)
    np.testing.assert_allclose(
        losses.robust_cross_entropy(m), losses.cross_entropy(logits, y), rtol=1e-12
    )


def test_robust_ce_grows_as_bounds_loosen(rng):
    m = rng.standard_normal((4, 3))
    looser = losses.robust_cross_entropy(m - 0.1, per_example=True)
    assert np.all(looser > losses.robust_cross_entropy(m, per_example=True))


@pytest.mark.parametrize("lead", [(), (2,)])
def test_cross_entropy_gradient(lead, rng):
    logits = rng.standard_normal((*lead, 4, 3))
    y = rng.integers(0, 3, 4)
    w = rng.standard_normal(lead)

    def f(z):
        return (losses.cross_entropy(z, y) * w).sum()

    _, (g,) = value_and_grad(f, logits)
    np.testing.assert_allclose(g, central_fd_grad(f, logits), rtol=1e-6, atol=1e-9)


def test_robust_cross_entropy_gradient(rng):
    m = rng.standard_normal((2, 4, 3))
    w = rng.standard_normal(2)

    def f(a):
        return (losses.robust_cross_entropy(a) * w).sum()

    _, (g,) = value_and_grad(f, m)
    np.testing.assert_allclose(g, central_fd_grad(f, m), rtol=1e-6, atol=1e-9)


def test_logit_margins_gradient(rng):
    logits = rng.standard_normal((2, 3, 4))
    y = np.array([3, 0, 1])
    u = rng.standard_normal((2, 3, 3))

    def f(z):
        return (losses.logit_margins(z, y) * u).sum()

    _, (g,) = value_and_grad(f, logits)
    np.testing.assert_allclose(g, central_fd_grad(f, logits), rtol=1e-6, atol=1e-9)


def test_losses_record_only_on_tensors(rng):
    logits = rng.standard_normal((3, 4))
    y = np.array([0, 1, 2])
    assert isinstance(losses.cross_entropy(Tensor(logits, requires_grad=True), y), Tensor)
    assert not isinstance(losses.cross_entropy(logits, y), Tensor)
    assert not isinstance(losses.robust_cross_entropy(logits), Tensor)


def test_float32_stays_float32(rng):
    logits = rng.standard_normal((3, 4)).astype(np.float32)
    y = np.array([0, 1, 2])
    assert losses.cross_entropy(logits, y).dtype == np.float32
    assert losses.robust_cross_entropy(logits).dtype == np.float32
    assert losses.logit_margins(logits, y).dtype == np.float32


def test_accuracy_and_certified():
    logits = np.array([[[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]], [[0.0, 1.0], [0.0, 3.0], [1.0, 0.0]]])
    y = np.array([0, 1, 1])
    np.testing.assert_allclose(losses.accuracy(logits, y), [2 / 3, 1 / 3])
    m = np.array([[0.5, 0.1], [0.5, -0.1], [0.0, 1.0]])
    np.testing.assert_array_equal(losses.certified(m), [True, False, False])
    assert losses.certified(np.ones((2, 3, 1))).shape == (2, 3)


def test_bad_shapes_raise():
    with pytest.raises(ValueError, match="labels"):
        losses.cross_entropy(np.zeros((3, 4)), np.zeros(2, dtype=int))
    with pytest.raises(ValueError, match="margin_lb"):
        losses.robust_cross_entropy(np.zeros(3))


def test_logit_margins_match_margin_spec(rng):
    logits = rng.standard_normal((2, 5, 4))
    y = rng.integers(0, 4, 5)
    C = bounds.margin_spec(y, 4)
    np.testing.assert_allclose(
        losses.logit_margins(logits, y), (C @ logits[..., None])[..., 0], rtol=1e-12
    )


@pytest.mark.parametrize("method", ["ibp", "hbox", "crown-ibp", "deeppoly"])
def test_robust_ce_of_exact_bounds_is_ce(method, rng):
    # eps = 0: every relaxation is exact, so the certified loss is the clean loss
    net = Sequential([Flatten(), Linear(6, 5), ReLU(), Linear(5, 3)], dtype="float64")
    net.theta = rng.standard_normal(net.n_params)
    x = rng.random((4, 1, 2, 3))
    y = rng.integers(0, 3, 4)
    lb, _ = bounds.compute(net, x, x, method, C=bounds.margin_spec(y, 3))
    np.testing.assert_allclose(
        losses.robust_cross_entropy(lb), losses.cross_entropy(net(x), y), rtol=1e-10
    )
