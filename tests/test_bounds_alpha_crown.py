"""alpha-CROWN (gls_np.bounds.alpha_crown): sound, never looser than DeepPoly, tighter where the
lower slopes matter, exact slope gradients, and one-line argument errors.
"""

import numpy as np
import pytest

from gls_np import bounds, data, nets, ops
from gls_np.bounds.alpha_crown import alpha_crown, initial_slopes, lower_bound
from gls_np.layers import Conv2d, Flatten, Linear, Normalize, ReLU
from gls_np.model import Sequential
from gls_np.tensor import value_and_grad

TOL = 1e-9


def mlp(rng):
    layers = [Flatten(), Linear(8, 10), ReLU(), Linear(10, 7), ReLU(), Linear(7, 4)]
    net = Sequential(layers, dtype="float64", input_shape=(2, 2, 2))
    nets.initialize(net, rng)
    return net


def convnet(rng):
    layers = [
        Normalize([0.4, 0.5], [0.3, 0.25]),
        Conv2d(2, 4, 3, stride=2, padding=1),
        ReLU(),
        Conv2d(4, 3, 3, stride=1, padding=1),
        ReLU(),
        Flatten(),
        Linear(27, 6),
        ReLU(),
        Linear(6, 3),
    ]
    net = Sequential(layers, dtype="float64", input_shape=(2, 6, 6))
    nets.initialize(net, rng)
    return net


BUILDERS = {"mlp": mlp, "convnet": convnet}


def problem(rng, name, batch, eps):
    net = BUILDERS[name](rng)
    x = rng.uniform(0.0, 1.0, (batch, *net.input_shape))
    lo, up = np.clip(x - eps, 0.0, 1.0), np.clip(x + eps, 0.0, 1.0)
    K = net.layers[-1].out_features
    return net, lo, up, bounds.margin_spec(rng.integers(0, K, batch), K)


def specs(net, x, C):
    """C f(x) for points x (n, B, *in) -> (n, B, S)."""
    n, B = x.shape[:2]
    logits = net.forward(x.reshape(n * B, *x.shape[2:])).reshape(n, B, -1)
    return np.einsum("bsk,nbk->nbs", C, logits)


def box_points(rng, lo, up, n=64):
    """n points per sample: half random vertices, half uniform interior points."""
    t = rng.random((n, *lo.shape))
    t[: n // 2] = t[: n // 2] < 0.5
    return lo + t * (up - lo)


def pgd_min(net, lo, up, C, steps=30):
    """Signed-gradient descent on each spec row from the centre: the smallest value seen, (B, S)."""
    best = np.full(C.shape[:2], np.inf)
    step = (up - lo).max() / 8
    for s in range(C.shape[1]):

        def row(x, s=s):
            return ops.sum(ops.mul(net.forward(x), C[:, s, :]), axis=-1)

        x = (lo + up) / 2
        for _ in range(steps):
            best[:, s] = np.minimum(best[:, s], row(x))
            _, (g,) = value_and_grad(lambda x, row=row: ops.sum(row(x)), x)
            x = np.clip(x - step * np.sign(g), lo, up)
        best[:, s] = np.minimum(best[:, s], row(x))
    return best


def assert_below(lb, values):
    assert np.all(lb <= values + TOL * (1 + np.abs(values))), float(np.max(lb - values))


# ---------------------------------------------------------------- soundness and tightness


@pytest.mark.parametrize("name,batch,eps", [("mlp", 4, 0.3), ("convnet", 3, 0.2)])
def test_bounds_are_sound_and_never_looser_than_deeppoly(name, batch, eps, rng):
    net, lo, up, C = problem(rng, name, batch, eps)
    lb, pre = alpha_crown(net, lo, up, C)
    assert lb.shape == C.shape[:2] and lb.dtype == np.float64
    assert_below(lb, specs(net, box_points(rng, lo, up), C))
    assert_below(lb, pgd_min(net, lo, up, C))
    dp, _ = bounds.compute(net, lo, up, "deeppoly", C)
    assert np.all(lb >= dp - 1e-12 * (1 + np.abs(dp)))
    assert np.any(lb > dp + 1e-6)  # random nets at these radii have unstable neurons
    # the returned pre are DeepPoly's, and passing them in changes nothing
    for i, box in bounds.intermediate_bounds(net, lo, up, "deeppoly").items():
        np.testing.assert_array_equal(pre[i].lb, box.lb)
        np.testing.assert_array_equal(pre[i].ub, box.ub)
    np.testing.assert_array_equal(alpha_crown(net, lo, up, C, pre=pre)[0], lb)


@pytest.mark.parametrize("name", ["mlp", "convnet"])
def test_zero_steps_is_deeppoly_and_logits_without_a_spec(name, rng):
    net, lo, up, C = problem(rng, name, 3, 0.2)
    for spec in (C, None):
        dp, _ = bounds.compute(net, lo, up, "deeppoly", spec)
        lb0, _ = alpha_crown(net, lo, up, spec, steps=0)
        np.testing.assert_allclose(lb0, dp, rtol=1e-12, atol=1e-12)
    theta = net.theta + 0.05 * rng.standard_normal(net.n_params)
    lb0, _ = alpha_crown(net, lo, up, C, steps=0, theta=theta)
    np.testing.assert_allclose(lb0, bounds.compute(net, lo, up, "deeppoly", C, theta[None])[0][0])
    lb, _ = alpha_crown(net, lo, up)
    assert lb.shape == dp.shape
    assert np.all(lb >= dp - 1e-12 * (1 + np.abs(dp)))
    assert_below(lb, specs(net, box_points(rng, lo, up), np.eye(dp.shape[1])[None]))


def test_optimised_slope_recovers_the_exact_minimum_of_the_toy():
    """y = relu(x + 0.5) + 1 on x in [-1, 1]: DeepPoly's lambda = 1 gives 0.5, alpha = 0 gives 1."""
    layers = [Flatten(), Linear(1, 1), ReLU(), Linear(1, 1)]
    net = Sequential(layers, dtype="float64", input_shape=(1, 1, 1))
    net.theta = np.array([1.0, 0.5, 1.0, 1.0])  # (w1, b1, w2, b2)
    lo, up = -np.ones((1, 1, 1, 1)), np.ones((1, 1, 1, 1))
    dp, _ = bounds.compute(net, lo, up, "deeppoly")
    np.testing.assert_allclose(dp, [[0.5]])
    lb, _ = alpha_crown(net, lo, up, steps=20, lr=0.1)
    np.testing.assert_allclose(lb, [[1.0]], atol=1e-12)


def test_chunks_give_the_same_bounds(rng):
    net, lo, up, C = problem(rng, "convnet", 3, 0.2)
    whole, _ = alpha_crown(net, lo, up, C, steps=5)
    one_row, _ = alpha_crown(net, lo, up, C, steps=5, max_memory_gb=1e-7)
    np.testing.assert_allclose(one_row, whole, rtol=1e-9, atol=1e-12)


def test_float32_bounds_stay_float32(rng):
    net, lo, up, C = problem(rng, "convnet", 2, 0.2)
    net32 = Sequential(net.layers, dtype="float32", input_shape=net.input_shape)
    net32.theta = net.theta.astype(np.float32)
    lo, up = lo.astype(np.float32), up.astype(np.float32)
    lb, _ = alpha_crown(net32, lo, up, C, steps=5)
    dp, _ = bounds.compute(net32, lo, up, "deeppoly", C)
    # step 0 equals DeepPoly up to float32 rounding (the two sum in different orders)
    assert lb.dtype == np.float32 and np.all(lb >= dp - 1e-5 * (1 + np.abs(dp)))
    assert_below(lb.astype(np.float64), specs(net, box_points(rng, lo, up).astype(np.float64), C))


# ---------------------------------------------------------------- the slope gradient


def test_slope_gradient_matches_finite_differences(rng):
    net, lo, up, C = problem(rng, "convnet", 2, 0.2)
    pre = bounds.intermediate_bounds(net, lo, up, "deeppoly")
    box = bounds.Box(lo, up)
    keys = sorted(pre)
    shapes = [initial_slopes(pre, C.shape[1])[i].shape for i in keys]
    alpha = [rng.uniform(0.1, 0.9, s) for s in shapes]  # interior: no clip, no lambda switch

    def f(*alpha):
        return ops.sum(lower_bound(net, net.theta, box, C, pre, dict(zip(keys, alpha))))

    _, grads = value_and_grad(f, *alpha)
    for i, g in zip(keys, grads):
        unstable = (pre[i].lb < 0) & (pre[i].ub > 0)
        assert unstable.any()
        assert np.all(g[np.broadcast_to(~unstable[:, None], g.shape)] == 0)
    h = 1e-6
    for _ in range(3):
        v = [rng.standard_normal(s) for s in shapes]
        plus = f(*(a + h * d for a, d in zip(alpha, v)))
        minus = f(*(a - h * d for a, d in zip(alpha, v)))
        fd = (float(plus) - float(minus)) / (2 * h)
        np.testing.assert_allclose(
            sum(float(np.sum(g * d)) for g, d in zip(grads, v)), fd, rtol=1e-6
        )


# ---------------------------------------------------------------- the paper's cnn3 on MNIST


def test_cnn3_on_mnist_is_sound_against_pgd_and_tighter_than_deeppoly(shared_dir, tmp_path):
    x, y = data.load("mnist", "test", tmp_path, mirror=shared_dir / "data")
    x, y = x[:2].astype(np.float64), y[:2]
    net = nets.build("cnn3", "mnist", init="ibp", dtype="float64")
    box = bounds.linf_box(x, 0.05)
    C = bounds.margin_spec(y, 10)
    lb, _ = alpha_crown(net, box.lb, box.ub, C, steps=10)
    dp, _ = bounds.compute(net, box.lb, box.ub, "deeppoly", C)
    assert np.all(lb >= dp - 1e-12 * (1 + np.abs(dp)))
    assert np.mean(lb - dp) > 0
    assert_below(lb, pgd_min(net, box.lb, box.ub, C, steps=10))


# ---------------------------------------------------------------- arguments


def test_bad_arguments_raise_one_line_value_errors(rng):
    net, lo, up, C = problem(rng, "convnet", 2, 0.1)
    pre = bounds.intermediate_bounds(net, lo, up, "deeppoly")
    cases = [
        (dict(steps=-1), "steps must be"),
        (dict(steps=1.5), "steps must be"),
        (dict(lr=0.0), "lr must be"),
        (dict(lr=-0.1), "lr must be"),
        (dict(upper=up[:1]), "lower and upper"),
        (dict(lower=up, upper=lo), "lower must be <= upper"),
        (dict(C=C[:1]), "C must be"),
        (dict(theta=net.theta[None]), "theta must be"),
        (dict(pre={2: pre[2]}), "pre must bound"),
        (dict(pre=pre | {2: bounds.Box(pre[2].lb[:1], pre[2].ub[:1])}), r"pre\[2\] must be"),
    ]
    for change, message in cases:
        kwargs = dict(net=net, lower=lo, upper=up, C=C, steps=1) | change
        with pytest.raises(ValueError, match=message) as info:
            alpha_crown(**kwargs)
        assert "\n" not in str(info.value)
