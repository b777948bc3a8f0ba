"""Optimisers against hand-computed traces; schedules."""

import math

import numpy as np

from gls_np.optim import adam, chain, clip_by_global_norm, sgd, step_decay


def test_adam_matches_a_hand_computed_three_step_trace():
    opt = adam(b1=0.9, b2=0.999, eps=1e-8)
    theta = np.array([1.0, -2.0])
    state = opt.init(theta)
    grads = [np.array([0.5, -1.0]), np.array([0.1, 0.0]), np.array([-0.3, 2.0])]
    lr = 0.1
    m = np.zeros(2)
    v = np.zeros(2)
    expected = theta.copy()
    for t, g in enumerate(grads, start=1):
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        expected = expected - lr * (m / (1 - 0.9**t)) / (np.sqrt(v / (1 - 0.999**t)) + 1e-8)
        step, state = opt.update(g, state, lr)
        theta = theta + step
    np.testing.assert_allclose(theta, expected, rtol=1e-14)
    assert state["t"] == 3
    # first Adam step moves every coordinate by lr in the direction of -sign(g)
    _, s0 = opt.update(grads[0], opt.init(np.zeros(2)), lr)
    np.testing.assert_allclose(
        opt.update(grads[0], opt.init(np.zeros(2)), lr)[0], -lr * np.sign(grads[0]), rtol=1e-6
    )
    assert s0["t"] == 1


def test_sgd_momentum_and_clipping_chain():
    opt = chain(clip_by_global_norm(1.0), sgd(momentum=0.5))
    state = opt.init(np.zeros(2))
    g = np.array([3.0, 4.0])  # norm 5 -> clipped to norm 1
    step, state = opt.update(g, state, 1.0)
    np.testing.assert_allclose(step, -g / (5 + 1e-6))
    step, state = opt.update(np.zeros(2), state, 1.0)
    np.testing.assert_allclose(step, -0.5 * g / (5 + 1e-6))
    small = np.array([0.3, 0.4])
    np.testing.assert_allclose(clip_by_global_norm(1.0).update(small, {}, 1.0)[0], small)


def test_step_decay_follows_the_paper_schedule():
    lr = step_decay(5e-4, (50, 60), 0.2)
    assert lr(0) == 5e-4 and lr(49.9) == 5e-4
    assert math.isclose(lr(50), 1e-4) and math.isclose(lr(65), 2e-5)
