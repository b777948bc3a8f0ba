"""PGD: stays in the input set, finds known optima, beats random search, is reproducible."""

import numpy as np
import pytest

from gls_np import attacks, bounds, losses
from gls_np.layers import Flatten, Linear, ReLU
from gls_np.model import Sequential


def make_net(layers, rng, dtype="float64"):
    net = Sequential(layers, dtype=dtype)
    net.theta = rng.standard_normal(net.n_params).astype(net.dtype)
    return net


def small_mlp(rng, dtype="float64"):
    """Flatten -> 8 -> 16 -> 4 classes on (1, 2, 4) inputs."""
    layers = [Flatten(), Linear(8, 16), ReLU(), Linear(16, 16), ReLU(), Linear(16, 4)]
    return make_net(layers, rng, dtype)


def min_margin(net, x, y):
    return losses.logit_margins(net(x), y).min(-1)


def box(x, eps):
    return np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)


@pytest.mark.parametrize("objective", ["margin", "ce"])
def test_result_stays_in_ball_and_data_range(objective, rng):
    net = small_mlp(rng)
    x = rng.random((6, 1, 2, 4))
    x[0] = 0.0  # a clipped corner of the data range
    y = rng.integers(0, 4, 6)
    eps = 0.1
    x_adv = attacks.pgd(net, x, y, eps, steps=10, restarts=2, objective=objective, rng=0)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert np.all(np.abs(x_adv - x) <= eps + 1e-12)
    assert np.all((x_adv >= 0) & (x_adv <= 1))


def test_linear_classifier_reaches_the_closed_form_optimum(rng):
    # two classes: margin(x) = w.x + c with w = W_t - W_o, so its minimum over a box is
    # attained at the corner lo where w > 0 and hi where w < 0
    net = make_net([Linear(5, 2)], rng)
    x = rng.random((8, 5))
    y = rng.integers(0, 2, 8)
    eps = 0.2
    lo, hi = box(x, eps)
    W, b = net.unravel()[0]["weight"], net.unravel()[0]["bias"]
    w = W[y] - W[1 - y]
    c = b[y] - b[1 - y]
    exact = (np.where(w > 0, w * lo, w * hi)).sum(-1) + c
    x_adv = attacks.pgd(net, x, y, eps, steps=20, rng=1)
    np.testing.assert_allclose(min_margin(net, x_adv, y), exact, atol=1e-6)


def test_margin_below_clean_and_random_search(rng):
    net = small_mlp(rng)
    x = rng.random((16, 1, 2, 4))
    y = rng.integers(0, 4, 16)
    eps = 0.05
    x_adv = attacks.pgd(net, x, y, eps, steps=40, restarts=2, rng=2)
    pgd = min_margin(net, x_adv, y)
    assert np.all(pgd <= min_margin(net, x, y) + 1e-12)
    lo, hi = box(x, eps)
    samples = lo + rng.random((200, *x.shape)) * (hi - lo)
    random_best = np.min([min_margin(net, s, y) for s in samples], axis=0)
    # PGD is a local method: demand it wins on average and nearly everywhere
    assert pgd.mean() < random_best.mean()
    assert np.mean(pgd <= random_best + 1e-9) >= 0.9


def test_ce_objective_raises_cross_entropy(rng):
    net = small_mlp(rng)
    x = rng.random((12, 1, 2, 4))
    y = rng.integers(0, 4, 12)
    x_adv = attacks.pgd(net, x, y, 0.05, steps=20, objective="ce", rng=3)
    clean = losses.cross_entropy(net(x), y, per_example=True)
    adv = losses.cross_entropy(net(x_adv), y, per_example=True)
    assert np.all(adv >= clean - 1e-12)
    assert adv.mean() > clean.mean()


def test_deterministic_given_seed(rng):
    net = small_mlp(rng)
    x = rng.random((5, 1, 2, 4))
    y = rng.integers(0, 4, 5)
    a = attacks.pgd(net, x, y, 0.1, steps=5, restarts=2, rng=7)
    b = attacks.pgd(net, x, y, 0.1, steps=5, restarts=2, rng=np.random.default_rng(7))
    np.testing.assert_array_equal(a, b)


def test_eps_zero_returns_clean_input(rng):
    net = small_mlp(rng)
    x = rng.random((4, 1, 2, 4))
    y = rng.integers(0, 4, 4)
    np.testing.assert_array_equal(attacks.pgd(net, x, y, 0.0, steps=3, rng=0), x)


def test_float32_input_and_explicit_params(rng):
    net = small_mlp(rng, dtype="float32")
    theta = rng.standard_normal(net.n_params).astype(np.float32)
    x = rng.random((4, 1, 2, 4)).astype(np.float32)
    y = rng.integers(0, 4, 4)
    x_adv = attacks.pgd(net, x, y, 0.1, steps=5, rng=0, params=theta)
    assert x_adv.dtype == np.float32
    m_adv = losses.logit_margins(net.forward(x_adv, theta), y).min(-1)
    m_clean = losses.logit_margins(net.forward(x, theta), y).min(-1)
    assert np.all(m_adv <= m_clean + 1e-5)


def test_adversarial_accuracy_bounded_by_clean_accuracy(rng):
    net = small_mlp(rng)
    x = rng.random((20, 1, 2, 4))
    y = rng.integers(0, 4, 20)
    clean = float(losses.accuracy(net(x), y))
    adv = attacks.adversarial_accuracy(net, x, y, 0.1, steps=10, rng=0)
    assert 0.0 <= adv <= clean
    assert attacks.adversarial_accuracy(net, x, y, 0.0, steps=2, rng=0) == pytest.approx(clean)


def test_bad_arguments_raise(rng):
    net = small_mlp(rng)
    x, y = rng.random((2, 1, 2, 4)), np.array([0, 1])
    with pytest.raises(ValueError, match="objective"):
        attacks.pgd(net, x, y, 0.1, objective="hinge")
    with pytest.raises(ValueError, match="params"):
        attacks.pgd(net, x, y, 0.1, params=np.zeros((3, net.n_params)))
    with pytest.raises(ValueError, match="y"):
        attacks.pgd(net, x, np.array([0]), 0.1)


@pytest.mark.parametrize("method", ["ibp", "deeppoly"])
def test_certified_bound_below_pgd_margin(method, rng):
    net = small_mlp(rng)
    x = rng.random((8, 1, 2, 4))
    y = rng.integers(0, 4, 8)
    eps = 0.05
    lo, hi = box(x, eps)
    lb, _ = bounds.compute(net, lo, hi, method, C=bounds.margin_spec(y, 4))
    pgd = min_margin(net, attacks.pgd(net, x, y, eps, steps=20, rng=0), y)
    assert np.all(lb.min(-1) <= pgd + 1e-9)
