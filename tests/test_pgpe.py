"""PGPE: estimator statistics against closed forms, sigma adaptation, optimisation, wiring.

Statistical tests use fixed seeds and tolerances of 5 standard errors, with the standard error
either derived in closed form or estimated from the samples; each also checks the tolerance is
tight enough to catch a wrong normalisation. ClipUp's tests live here too: it is PGPE's optimiser.
"""

import math

import numpy as np
import pytest

from gls_np.optim import (
    PGPE,
    adam,
    centered_ranks,
    clipup,
    member_noise,
    pgpe_ask,
    pgpe_grads,
    pgpe_init,
    pgpe_noise,
    pgpe_tell,
    step_decay,
)

SEED = 1234


def _phi(x):
    return math.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _Phi(x):
    return 0.5 * (1 + math.erf(x / math.sqrt(2)))


def _estimates(state, losses_fn, popsize, repeats, rank=False):
    """``repeats`` independent (g_center, g_sigma) estimates, one per step t = 0..repeats-1."""
    gc, gs = [], []
    for t in range(repeats):
        s = {**state, "t": t}
        thetas, z = pgpe_ask(s, SEED, popsize)
        g_c, g_s = pgpe_grads(z, losses_fn(thetas), s["sigma"], rank=rank)
        gc.append(g_c)
        gs.append(g_s)
    return np.array(gc), np.array(gs)


# ------------------------------------------------------------------ fitness shaping


def test_centered_ranks_put_the_lowest_loss_at_minus_half_and_average_ties():
    u = centered_ranks(np.array([3.0, -1.0, 7.0, 3.0, 10.0]))
    # rank / 4 - 0.5 with ranks 0..4; the two 3.0s share ranks 1 and 2, so both get 1.5
    np.testing.assert_allclose(u, [-0.125, -0.5, 0.25, -0.125, 0.5])
    np.testing.assert_array_equal(centered_ranks(np.ones(6)), np.zeros(6))
    assert centered_ranks(np.array([np.nan, 0.0, 1.0]))[0] == 0.5


# ------------------------------------------------------------------ estimator statistics


@pytest.mark.parametrize("n_pairs", [400, 40_000])
def test_center_estimate_converges_to_the_smoothed_step_function_gradient(n_pairs):
    # L(theta) = 1[theta > 0] smooths to L_sigma = Phi(theta / sigma), gradient phi(a) / sigma with
    # a = theta / sigma. Per pair, z (r+ - r-) / (2 sigma) = |z| 1[|z| > a] / (2 sigma), whose
    # second moment is (a phi(a) + 1 - Phi(a)) / (2 sigma^2): the standard error is exact.
    theta, sigma = 0.05, 0.1
    a = theta / sigma
    truth = _phi(a) / sigma
    second = (a * _phi(a) + 1 - _Phi(a)) / (2 * sigma**2)
    se = math.sqrt((second - truth**2) / n_pairs)
    state = pgpe_init(np.array([theta]), sigma)
    thetas, z = pgpe_ask(state, SEED, 2 * n_pairs)
    g_center, _ = pgpe_grads(z, (thetas[:, 0] > 0).astype(float), state["sigma"], rank=False)
    assert abs(g_center[0] - truth) < 5 * se
    # the bound is informative: a missing 1/sigma (or 1/2) would be off by far more than 5 SE
    assert 5 * se < 0.5 * truth


def test_center_and_sigma_estimates_are_unbiased_on_a_quadratic(rng):
    # L = 1/2 theta^T A theta + b^T theta: L_sigma = L + 1/2 sum_j A_jj sigma_j^2, so
    # grad L_sigma = A theta + b and sigma^2 dL_sigma/dsigma_j = A_jj sigma_j^3; g_sigma carries
    # the baseline's (1 - 1/n) on top. Distinct sigma_j catch a wrong per-parameter scaling.
    D, n = 5, 4
    M = rng.standard_normal((D, D))
    A = M @ M.T + np.eye(D)
    b = rng.standard_normal(D)
    theta0 = rng.standard_normal(D)
    sigma = np.array([0.1, 0.15, 0.2, 0.3, 0.4])

    def loss(th):
        return 0.5 * np.einsum("pi,ij,pj->p", th, A, th) + th @ b

    state = pgpe_init(theta0, sigma)
    gc, gs = _estimates(state, loss, 2 * n, repeats=4000)
    true_c = A @ theta0 + b
    true_s = (1 - 1 / n) * np.diag(A) * sigma**3
    for est, truth in ((gc, true_c), (gs, true_s)):
        se = est.std(axis=0, ddof=1) / math.sqrt(len(est))
        np.testing.assert_array_less(np.abs(est.mean(axis=0) - truth), 5 * se)
    # power: the centre tolerance is a small fraction of the gradient, and dropping the
    # 1/sigma_j^2 (scaling coordinate j by sigma_j^2 <= 0.16) would miss by far more than 5 SE
    se_c = gc.std(axis=0, ddof=1) / math.sqrt(len(gc))
    assert np.all(5 * se_c < 0.25 * np.linalg.norm(true_c))


# ------------------------------------------------------------------ sigma adaptation


def _run_sigma_only(loss, sigma0, steps=20, popsize=64, D=4, rank=True):
    """Adapt sigma with the centre frozen at 0 (lr = 0); return the final sigma."""
    state = pgpe_init(np.zeros(D), sigma0)
    for _ in range(steps):
        thetas, z = pgpe_ask(state, SEED, popsize)
        state = pgpe_tell(state, z, loss(thetas), lr=0.0, rank=rank)
    np.testing.assert_array_equal(state["center"], np.zeros(D))
    return state["sigma"]


@pytest.mark.parametrize("rank", [True, False])
def test_sigma_shrinks_at_the_bottom_of_a_narrow_quadratic(rank):
    # Larger |eps| means larger loss, so ((r+ + r-)/2 - b) correlates positively with
    # eps^2 - sigma^2: g_sigma > 0 and sigma decreases (dL_sigma/dsigma = A sigma > 0).
    sigma = _run_sigma_only(lambda th: 50.0 * np.sum(th**2, axis=1), 0.1, rank=rank)
    np.testing.assert_array_less(sigma, 0.8 * 0.1)


@pytest.mark.parametrize("rank", [True, False])
def test_sigma_grows_on_a_plateau_raised_above_its_surroundings(rank):
    # L = sum_i 1[|theta_i| < 1] at theta = 0: members that leave the plateau (large |eps|) get
    # lower loss, g_sigma < 0, so sigma grows towards the lower ground (dL_sigma/dsigma < 0).
    sigma = _run_sigma_only(
        lambda th: np.sum(np.abs(th) < 1.0, axis=1).astype(float), 0.5, rank=rank
    )
    assert np.all(sigma > 1.1 * 0.5)


def test_sigma_is_unchanged_inside_a_wide_flat_bottom():
    # L = sum_i max(|theta_i| - 1, 0) with sigma = 0.1: no member reaches the walls, all losses
    # tie, the ranks are all 0 (ties averaged), and g_sigma = 0 exactly.
    sigma = _run_sigma_only(lambda th: np.sum(np.maximum(np.abs(th) - 1.0, 0.0), axis=1), 0.1)
    np.testing.assert_array_equal(sigma, np.full(4, 0.1))


def test_sigma_update_is_a_capped_relative_step():
    # In 1-D with L = theta^2 at 0, (r+ + r-)/2 - b = sigma^2 (z_i^2 - mean z^2), so
    # g_sigma = sigma^3 mean((z^2 - mean z^2)(z^2 - 1)) = sigma^3 var(z^2) > 0 for any noise.
    state = pgpe_init(np.zeros(1), 0.1)
    thetas, z = pgpe_ask(state, SEED, 16)
    losses = thetas[:, 0] ** 2
    _, g_sigma = pgpe_grads(z, losses, state["sigma"], rank=False)
    np.testing.assert_allclose(g_sigma, 0.1**3 * np.var(z[:, 0] ** 2), rtol=1e-12)
    new = pgpe_tell(state, z, losses, 0.0, sigma_lr=0.1, rank=False)
    np.testing.assert_allclose(new["sigma"], 0.1 - 0.1 * g_sigma, rtol=1e-14)
    new = pgpe_tell(state, z, losses, 0.0, sigma_lr=1e6, max_change=0.2, rank=False)
    np.testing.assert_allclose(new["sigma"], 0.08, rtol=1e-14)
    new = pgpe_tell(state, z, -losses, 0.0, sigma_lr=1e6, max_change=0.2, rank=False)
    np.testing.assert_allclose(new["sigma"], 0.12, rtol=1e-14)


# ------------------------------------------------------------------ optimisation


C = np.linspace(-1.0, 1.0, 10)


def nonsmooth(th):
    """L = sum_i |theta_i - c_i| + 0.5 sum_i 1[theta_i > c_i]: minimum 0 at theta = c."""
    return np.sum(np.abs(th - C), axis=-1) + 0.5 * np.sum(th > C, axis=-1)


@pytest.mark.parametrize(
    "center_opt, lr0", [(adam(), 0.1), (clipup(), 0.3)], ids=["adam", "clipup"]
)
def test_pgpe_with_rank_shaping_minimises_a_nonsmooth_function(center_opt, lr0):
    pgpe = PGPE(popsize=32, sigma0=0.3, center_opt=center_opt, seed=SEED)
    start = C + np.where(np.arange(C.size) % 2, 3.0, -3.0)
    state = pgpe.init(start)
    lr = step_decay(lr0, (150, 225), 0.2)
    for t in range(300):
        thetas, z = pgpe.ask(state)
        state = pgpe.tell(state, z, nonsmooth(thetas), lr(t))
    assert np.abs(state["center"] - C).max() < 0.2
    # PGPE sees the jumps: L_sigma's minimiser lies below c, where d/dtheta of E|theta - c + eps|,
    # 2 Phi((theta - c)/sigma) - 1, balances the jump's 0.5 phi((theta - c)/sigma)/sigma.
    # (RGS, blind to jumps, converges to c itself: tests/test_smoothing.py.)
    assert np.all(state["center"] < C)
    assert nonsmooth(state["center"]) < 0.1 * nonsmooth(start)
    assert state["t"] == 300


# ------------------------------------------------------------------ wiring


def test_tell_applies_adam_to_the_center_estimate():
    opt = adam()
    state = pgpe_init(np.array([1.0, -2.0, 0.5]), 0.1, opt)
    thetas, z = pgpe_ask(state, SEED, 8)
    losses = np.sum(np.abs(thetas - 0.3), axis=1)
    new = pgpe_tell(state, z, losses, 0.01, opt)
    g_center, _ = pgpe_grads(z, losses, state["sigma"], rank=True)
    step, opt_state = opt.update(g_center, state["opt"], 0.01)
    np.testing.assert_allclose(new["center"], state["center"] + step, rtol=1e-15)
    np.testing.assert_allclose(new["opt"]["m"], opt_state["m"], rtol=1e-15)
    assert new["opt"]["t"] == 1 and new["t"] == 1
    # Adam's first step has length lr per coordinate
    np.testing.assert_allclose(np.abs(new["center"] - state["center"]), 0.01, rtol=1e-5)


def test_tell_with_clipup_moves_the_center_at_most_max_speed():
    opt = clipup(momentum=0.9)
    state = pgpe_init(np.zeros(10) + 3.0, 0.3, opt)
    for _ in range(30):
        thetas, z = pgpe_ask(state, SEED, 16)
        new = pgpe_tell(state, z, nonsmooth(thetas), 0.05, opt)
        assert np.linalg.norm(new["center"] - state["center"]) <= 2 * 0.05 * (1 + 1e-12)
        state = new
    # the speed limit was reached (momentum alone would allow 10 lr)
    assert np.linalg.norm(state["opt"]["v"]) == pytest.approx(0.1)


def test_clipup_normalises_accumulates_and_clips():
    opt = clipup(momentum=0.5, max_speed=0.25)
    state = opt.init(np.zeros(2))
    g = np.array([3.0, 4.0])
    step, state = opt.update(g, state, 0.1)
    np.testing.assert_allclose(step, -0.1 * g / 5)  # lr g / ||g||, whatever ||g|| is
    step, state = opt.update(100 * g, state, 0.1)
    np.testing.assert_allclose(step, -0.15 * g / 5)  # 0.5 * 0.1 + 0.1
    norms = []
    for k in range(50):
        step, state = opt.update(np.array([1.0, (-1.0) ** k * 0.1]) * 1e3, state, 0.2)
        norms.append(np.linalg.norm(step))
    assert max(norms) <= 0.25 * (1 + 1e-12)
    assert max(norms) == pytest.approx(0.25)  # the clip is active, not vacuous
    step, state = opt.update(np.zeros(2), state, 0.2)  # no gradient: momentum decays
    assert np.linalg.norm(step) == pytest.approx(0.125)
    # default max_speed is 2 lr
    default = clipup(momentum=0.99)
    s = default.init(np.zeros(3))
    for _ in range(20):
        step, s = default.update(np.ones(3), s, 0.01)
    assert np.linalg.norm(step) == pytest.approx(0.02)


# ------------------------------------------------------------------ determinism and state


def test_noise_depends_only_on_seed_step_and_member():
    like = np.zeros(7)
    z8 = pgpe_noise(SEED, 3, 8, like)
    np.testing.assert_array_equal(z8[:4], pgpe_noise(SEED, 3, 4, like))  # split-invariant
    np.testing.assert_array_equal(z8[5:7], pgpe_noise(SEED, 3, 2, like, start=5))
    np.testing.assert_array_equal(z8[5], member_noise(SEED, 3, 5, 7))
    assert not np.allclose(z8, pgpe_noise(SEED, 4, 8, like))
    assert not np.allclose(z8, pgpe_noise(SEED + 1, 3, 8, like))
    state = pgpe_init(np.arange(7.0), 0.01)
    thetas, z = pgpe_ask(state, SEED, 16)
    again, _ = pgpe_ask(state, SEED, 16)
    np.testing.assert_array_equal(thetas, again)
    np.testing.assert_allclose(thetas[:8] + thetas[8:], np.tile(2 * state["center"], (8, 1)))
    np.testing.assert_allclose(thetas[:8] - state["center"], 0.01 * z, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("rank", [True, False])
def test_shares_of_a_split_population_add_up_to_the_whole_step(rank):
    # how MPI ranks split PGPE: each asks for a slice of the pairs, scores it, and after the
    # losses are gathered forms its share of the estimate; the shares sum to the whole
    pgpe = PGPE(popsize=12, sigma0=0.1, rank=rank, seed=SEED)
    state = pgpe.init(np.linspace(-1.0, 1.0, 5))
    thetas, z = pgpe.ask(state)
    losses = nonsmooth(np.pad(thetas, ((0, 0), (0, 5))))
    whole = pgpe.grads(z, losses, state["sigma"])
    cuts = [slice(0, 2), slice(2, 2), slice(2, 5), slice(5, 6)]
    g_center, g_sigma = np.zeros(5), np.zeros(5)
    for pairs in cuts:
        part, z_part = pgpe.ask(state, pairs)
        np.testing.assert_array_equal(z_part, z[pairs])
        np.testing.assert_array_equal(part[: len(z_part)], thetas[pairs])
        np.testing.assert_array_equal(part[len(z_part) :], thetas[6 + pairs.start : 6 + pairs.stop])
        share = pgpe.grads(z_part, losses, state["sigma"], pairs)
        g_center, g_sigma = g_center + share[0], g_sigma + share[1]
    np.testing.assert_allclose(g_center, whole[0], rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(g_sigma, whole[1], rtol=1e-13, atol=1e-15)
    told = pgpe.tell(state, z, losses, 0.01)
    updated = pgpe.update(state, g_center, g_sigma, 0.01)
    np.testing.assert_allclose(updated["center"], told["center"], rtol=1e-13)
    np.testing.assert_allclose(updated["sigma"], told["sigma"], rtol=1e-13)
    assert updated["t"] == told["t"] == 1
    with pytest.raises(ValueError, match="contiguous slice of the 6 pairs"):
        pgpe.ask(state, slice(4, 8))
    with pytest.raises(ValueError, match=r"noise of the 2 pairs"):
        pgpe.grads(z[:3], losses, state["sigma"], slice(0, 2))


def test_float32_state_and_population_stay_float32():
    state = pgpe_init(np.zeros(5, dtype=np.float32), 1e-3, clipup())
    thetas, z = pgpe_ask(state, SEED, 4)
    assert thetas.dtype == z.dtype == np.float32
    state = pgpe_tell(state, z, np.arange(4.0, dtype=np.float32), 1e-3, clipup())
    assert state["center"].dtype == state["sigma"].dtype == np.float32


def test_state_survives_a_checkpoint_round_trip(tmp_path):
    from gls_np import checkpoint
    from gls_np.layers import Linear
    from gls_np.model import Sequential

    net = Sequential([Linear(3, 2)], dtype="float64")
    pgpe = PGPE(popsize=8, sigma0=0.1, seed=SEED)
    state = pgpe.init(np.linspace(-1, 1, net.n_params))
    for _ in range(2):
        thetas, z = pgpe.ask(state)
        state = pgpe.tell(state, z, np.sum(thetas**2, axis=1), 0.01)
    checkpoint.save(tmp_path / "c.h5", net, optimizer=state)
    _, meta = checkpoint.load(tmp_path / "c.h5")
    resumed = meta.optimizer
    thetas, z = pgpe.ask(state)
    thetas2, z2 = pgpe.ask(resumed)
    np.testing.assert_array_equal(thetas, thetas2)
    a = pgpe.tell(state, z, np.sum(thetas**2, axis=1), 0.01)
    b = pgpe.tell(resumed, z2, np.sum(thetas2**2, axis=1), 0.01)
    for key in ("center", "sigma"):
        np.testing.assert_array_equal(a[key], b[key])
    assert a["t"] == b["t"] == 3


def test_bad_inputs_raise_value_errors():
    state = pgpe_init(np.zeros(3), 0.1)
    with pytest.raises(ValueError, match="even popsize"):
        pgpe_ask(state, SEED, 7)
    thetas, z = pgpe_ask(state, SEED, 4)
    with pytest.raises(ValueError, match=r"losses of shape \(4,\)"):
        pgpe_grads(z, np.zeros(5), state["sigma"])
    with pytest.raises(ValueError, match="finite losses"):
        pgpe_grads(z, np.array([0.0, np.nan, 1.0, 2.0]), state["sigma"], rank=False)
    with pytest.raises(ValueError, match="sigma0 > 0"):
        pgpe_init(np.zeros(3), 0.0)
    with pytest.raises(ValueError, match="max_change"):
        pgpe_tell(state, z, np.zeros(4), 0.1, max_change=1.0)
