"""Randomized Gradient Smoothing: unbiasedness on a quadratic, blindness to jumps, optimisation."""

import math

import numpy as np
import pytest

from gls_np import ops
from gls_np.optim import (
    adam,
    pgpe_ask,
    pgpe_grads,
    pgpe_init,
    rgs_gradient,
    rgs_points,
    sigma_schedule,
    step_decay,
)
from gls_np.optim.smoothing import rgs_share
from gls_np.tensor import data, value_and_grad

SEED = 4321


def test_rgs_points_are_gaussian_around_theta_and_reproducible():
    theta = np.array([1.0, -2.0, 0.5])
    sigma = np.array([0.1, 1.0, 3.0])
    pts = rgs_points(theta, sigma, 20_000, np.random.default_rng(SEED))
    assert pts.shape == (20_000, 3) and pts.dtype == np.float64
    z = (pts - theta) / sigma
    np.testing.assert_array_less(np.abs(z.mean(axis=0)), 5 / math.sqrt(20_000))
    np.testing.assert_allclose(z.std(axis=0), 1.0, atol=5 * math.sqrt(0.5 / 20_000))
    again = rgs_points(theta, sigma, 20_000, np.random.default_rng(SEED))
    np.testing.assert_array_equal(pts, again)
    f32 = rgs_points(theta.astype(np.float32), 0.1, 2, np.random.default_rng(SEED))
    assert f32.dtype == np.float32
    with pytest.raises(ValueError, match="flat parameter vector"):
        rgs_points(np.zeros((2, 2)), 0.1, 2, np.random.default_rng(SEED))


def test_rgs_is_unbiased_for_the_smoothed_quadratic(rng):
    # L = 1/2 theta^T A theta + b^T theta: grad L(theta + eps) = A (theta + eps) + b averages to
    # grad L_sigma = A theta + b, and the mean loss to L_sigma = L + 1/2 sum_j A_jj sigma_j^2.
    D = 5
    M = rng.standard_normal((D, D))
    A = M @ M.T + np.eye(D)
    b = rng.standard_normal(D)
    theta = rng.standard_normal(D)
    sigma = np.array([0.1, 0.3, 0.5, 1.0, 2.0])

    def grad_fn(th):
        return 0.5 * th @ A @ th + b @ th, A @ th + b

    draws = np.random.default_rng(SEED)
    out = [rgs_gradient(grad_fn, theta, sigma, 2, draws) for _ in range(4000)]
    losses = np.array([o[0] for o in out])
    grads = np.array([o[1] for o in out])
    true_grad = A @ theta + b
    true_loss = 0.5 * theta @ A @ theta + b @ theta + 0.5 * np.sum(np.diag(A) * sigma**2)
    se_g = grads.std(axis=0, ddof=1) / math.sqrt(len(grads))
    se_l = losses.std(ddof=1) / math.sqrt(len(losses))
    np.testing.assert_array_less(np.abs(grads.mean(axis=0) - true_grad), 5 * se_g)
    assert abs(losses.mean() - true_loss) < 5 * se_l
    # power: the smoothing term 1/2 sum A_jj sigma_j^2 is far outside the loss tolerance
    assert 5 * se_l < 0.5 * 0.5 * np.sum(np.diag(A) * sigma**2)


def test_rgs_shares_of_any_partition_sum_to_the_estimate(rng):
    # point i draws z_i and then its own extra numbers from rng_of(i), so a partition of the
    # points over ranks neither changes the points nor what each one draws
    D, n = 4, 5
    A = rng.standard_normal((D, D))
    theta = rng.standard_normal(D)
    seen = {}

    def grad_fn(th, point_rng):
        extra = point_rng.random()
        assert seen.setdefault(tuple(th), extra) == extra  # same point, same extra draw
        return 0.5 * th @ A @ th + extra, 0.5 * (A + A.T) @ th

    def rng_of(i):
        return np.random.default_rng([SEED, i])

    whole = rgs_share(grad_fn, theta, 0.3, n, range(n), rng_of)
    points = [theta + 0.3 * rng_of(i).standard_normal(D) for i in range(n)]
    np.testing.assert_allclose(whole[1], np.mean([0.5 * (A + A.T) @ p for p in points], axis=0))
    parts = [rgs_share(grad_fn, theta, 0.3, n, s, rng_of) for s in ([3, 0], [], [4, 1, 2])]
    assert sum(p[0] for p in parts) == pytest.approx(whole[0], rel=1e-13)
    np.testing.assert_allclose(sum(p[1] for p in parts), whole[1], rtol=1e-13)
    assert len(seen) == n
    with pytest.raises(ValueError, match=r"point indices in \[0, 5\)"):
        rgs_share(grad_fn, theta, 0.3, n, [5], rng_of)


def test_rgs_is_blind_to_jumps_where_pgpe_is_not():
    # App. B.3: L = 1[theta > 0] has zero gradient almost everywhere, so RGS returns exactly 0,
    # while grad L_sigma(theta) = phi(theta / sigma) / sigma, which PGPE estimates.
    theta, sigma = np.array([0.05]), 0.1

    def grad_fn(th):
        return (th[0] > 0).astype(float), np.zeros(1)

    loss, grad = rgs_gradient(grad_fn, theta, sigma, 2000, np.random.default_rng(SEED))
    np.testing.assert_array_equal(grad, 0.0)
    p = 0.5 * (1 + math.erf(0.5 / math.sqrt(2)))  # L_sigma(theta) = Phi(0.5)
    assert abs(loss - p) < 5 * math.sqrt(p * (1 - p) / 2000)
    state = pgpe_init(theta, sigma)
    thetas, z = pgpe_ask(state, SEED, 4000)
    g_center, _ = pgpe_grads(z, (thetas[:, 0] > 0).astype(float), state["sigma"], rank=False)
    truth = math.exp(-0.125) / math.sqrt(2 * math.pi) / 0.1
    se = 3.44 / math.sqrt(2000)  # per-pair standard deviation 3.44 (see test_pgpe)
    assert abs(g_center[0] - truth) < 5 * se < 0.15 * truth


C = np.linspace(-1.0, 1.0, 10)


def nonsmooth_loss(th):
    """L = sum_i |theta_i - c_i| + 0.5 sum_i 1[theta_i > c_i], taped; jumps carry no gradient."""
    jumps = 0.5 * float(np.sum(data(th) > C))
    return ops.add(ops.sum(ops.abs(ops.sub(th, C))), jumps)


def test_rgs_with_adam_minimises_a_nonsmooth_function():
    # RGS follows the continuous part sum |theta_i - c_i|, whose minimum coincides with L's
    # (the decomposition h = f + g of App. B.3 with aligned minima), so it reaches c.
    def grad_fn(th):
        value, (grad,) = value_and_grad(nonsmooth_loss, th)
        return value, grad

    theta = C + np.where(np.arange(C.size) % 2, 3.0, -3.0)
    start_loss = float(nonsmooth_loss(theta))
    lr = step_decay(0.1, (150, 225), 0.2)
    sigma = sigma_schedule(0.3, lr)
    opt = adam()
    state = opt.init(theta)
    draws = np.random.default_rng(SEED)
    for t in range(300):
        _, grad = rgs_gradient(grad_fn, theta, sigma(t), 2, draws)
        step, state = opt.update(grad, state, lr(t))
        theta = theta + step
    assert np.abs(theta - C).max() < 0.05
    assert float(nonsmooth_loss(theta)) < 0.2 * start_loss


def test_sigma_schedule_decays_with_the_learning_rate():
    sigma = sigma_schedule(1e-2, step_decay(5e-4, (60, 70), 0.4))
    assert sigma(0) == 1e-2 and sigma(59.9) == 1e-2
    assert math.isclose(sigma(60), 4e-3) and math.isclose(sigma(75), 1.6e-3)
    with pytest.raises(ValueError, match="lr_schedule"):
        sigma_schedule(1e-2, lambda epoch: 0.0)
