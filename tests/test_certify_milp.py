"""The complete MILP check of gls_np.certify.milp: exact against activation-pattern enumeration,
sparse convolution rows against the layers, monotone in the cascade, timeouts, argument checks.
"""

import itertools

import numpy as np
import pytest
from scipy.optimize import linprog

from gls_np import attacks, bounds, nets
from gls_np.certify import milp
from gls_np.layers import Conv2d, Flatten, Linear, Normalize, ReLU
from gls_np.model import Sequential

# ---------------------------------------------------------------- fixtures built in code


def mlp(rng, widths):
    """Flatten, then Linear/ReLU layers of the given widths (input first, logits last)."""
    layers = [Flatten()]
    for a, b in itertools.pairwise(widths):
        layers += [Linear(a, b), ReLU()]
    net = Sequential(layers[:-1], dtype="float64", input_shape=(1, 1, widths[0]))
    nets.initialize(net, rng)
    return net


def convnet(rng, normalize):
    channels = 2 if normalize else 1
    layers = [Normalize([0.4, 0.5], [0.3, 0.25])] if normalize else []
    layers += [
        Conv2d(channels, 3, 3, stride=2, padding=1),
        ReLU(),
        Flatten(),
        Linear(27, 5),
        ReLU(),
        Linear(5, 3),
    ]
    net = Sequential(layers, dtype="float64", input_shape=(channels, 5, 5))
    nets.initialize(net, rng)
    return net


def spec_at(net, x):
    """Margin rows for the class predicted at x (so x itself is not a counterexample)."""
    K = net.layers[-1].out_features
    return bounds.margin_spec(np.array([int(np.argmax(net(x[None])[0]))]), K)[0]


def exact_minima(net, lo, up, C):
    """Minimum of every row of C f(x) over the box, one LP per activation pattern.

    In each pattern's region {x in the box : the sign of every ReLU input fixed}
    the network is affine, so min over the box = min over regions of an LP; every x
    lies in some region. Patterns are extended layer by layer, and only feasible ones.
    """
    linears = [(p["weight"], p["bias"]) for p in net.unravel() if "weight" in p]
    box = list(zip(lo.ravel(), up.ravel()))
    n = lo.size

    def feasible(A_ub, b_ub):
        if not A_ub:
            return True
        res = linprog(np.zeros(n), A_ub=np.concatenate(A_ub), b_ub=np.concatenate(b_ub), bounds=box)
        return res.status == 0

    def regions(depth, M, m, A_ub, b_ub):
        """(M, m, A_ub, b_ub) per feasible region: the logits are M x + m there."""
        W, b = linears[depth]
        M, m = W @ M, W @ m + b
        if depth == len(linears) - 1:
            yield M, m, A_ub, b_ub
            return
        for s in itertools.product((0.0, 1.0), repeat=W.shape[0]):
            s = np.array(s)
            sign = np.where(s > 0, -1.0, 1.0)  # active: -z <= 0, inactive: z <= 0
            A, bb = [*A_ub, sign[:, None] * M], [*b_ub, -sign * m]
            if feasible(A, bb):
                yield from regions(depth + 1, s[:, None] * M, s * m, A, bb)

    best = np.full(C.shape[0], np.inf)
    for M, m, A_ub, b_ub in regions(0, np.eye(n), np.zeros(n), [], []):
        for i, c in enumerate(C):
            res = linprog(c @ M, A_ub=np.concatenate(A_ub), b_ub=np.concatenate(b_ub), bounds=box)
            best[i] = min(best[i], res.fun + c @ m)
    return best


def margins(net, x, C):
    """C f(x) for a batch of inputs.  Shapes: x (N, C, H, W) -> (N, S)."""
    return net(x) @ C.T


# ---------------------------------------------------------------- exactness on small MLPs


@pytest.mark.parametrize("widths", [(2, 3, 3, 2), (3, 4, 3, 3)])
def test_minimum_and_verdicts_match_pattern_enumeration(widths, rng):
    K = widths[-1]
    labels = np.arange(K)
    verdicts = set()
    for _ in range(3):
        net = mlp(rng, widths)
        x = rng.uniform(0.2, 0.8, (1, 1, widths[0]))
        for eps in (0.03, 0.6):
            lo, up = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
            specs = bounds.margin_spec(labels, K)  # every label: some specs hold, some fail
            exact = exact_minima(net, lo, up, specs.reshape(-1, K)).reshape(K, K - 1)
            for c, e in zip(specs[0], exact[0]):
                value, xm = milp.minimum(net, lo, up, c)
                assert value == pytest.approx(e, abs=1e-6)
                assert np.all((lo <= xm) & (xm <= up))
                assert float(margins(net, xm[None], c[None])[0, 0]) == pytest.approx(e, abs=1e-6)
            for C, e in zip(specs, exact):
                result = milp.verify(net, lo, up, C, time_limit=30.0)
                assert np.all(result.lower <= e + 1e-6)
                if e.min() > 1e-4:
                    assert result.status == "certified"
                    assert np.all(result.lower > 0)
                elif e.min() < -1e-4:
                    assert result.status == "counterexample"
                    assert np.all((lo <= result.x) & (result.x <= up))
                    assert margins(net, result.x[None], C).min() < 0
                verdicts.add(result.status)
    assert verdicts == {"certified", "counterexample"}


def test_skip_and_prior(rng):
    net = mlp(rng, (2, 3, 3, 2))
    x = rng.uniform(0.2, 0.8, (1, 1, 2))
    C = spec_at(net, x)
    lo, up = np.clip(x - 0.01, 0, 1), np.clip(x + 0.01, 0, 1)
    prior = np.array([0.123])
    result = milp.verify(net, lo, up, C, skip=np.array([True]), prior=prior)
    assert result.status == "certified"
    assert result.rows == ("skipped",)
    assert result.lower[0] == 0.123 and result.value[0] == np.inf


def test_theta_replaces_the_network_parameters(rng):
    net, other = mlp(rng, (3, 4, 3, 3)), mlp(rng, (3, 4, 3, 3))
    x = rng.uniform(0.2, 0.8, (1, 1, 3))
    C = spec_at(other, x)
    lo, up = np.clip(x - 0.2, 0, 1), np.clip(x + 0.2, 0, 1)
    want = milp.minimum(other, lo, up, C[0])[0]
    assert milp.minimum(net, lo, up, C[0], theta=other.theta)[0] == pytest.approx(want, abs=1e-9)


def test_failed_validation_is_not_a_counterexample(rng, monkeypatch):
    net = mlp(rng, (2, 3, 3, 2))
    x = rng.uniform(0.2, 0.8, (1, 1, 2))
    C = -spec_at(net, x)  # the predicted class loses: x itself violates the row
    lo, up = np.clip(x - 0.05, 0, 1), np.clip(x + 0.05, 0, 1)
    monkeypatch.setattr(milp, "_violates", lambda *args: False)
    result = milp.verify(net, lo, up, C)
    assert result.status == "timeout"
    assert result.x is None
    assert result.rows == ("undecided",)


# ---------------------------------------------------------------- conv nets


@pytest.mark.parametrize("normalize", [False, True])
def test_sparse_affine_maps_equal_the_layers(normalize, rng):
    net = convnet(rng, normalize)
    shapes = net.shapes(net.input_shape)
    for layer, p, shape in zip(net.layers, net.unravel(), shapes):
        if layer.type == "relu":
            continue
        x = rng.normal(size=(4, *shape))
        want = layer.forward(p, x).reshape(4, -1)
        mapped = milp.affine_map(layer, p, shape)
        got = x.reshape(4, -1) if mapped is None else x.reshape(4, -1) @ mapped[0].T + mapped[1]
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


def test_conv_matrix_odd_sizes(rng):
    for k, stride, padding, hw in [(4, 2, 1, 7), (3, 1, 0, 5), (2, 3, 2, 6)]:
        layer = Conv2d(2, 3, k, stride=stride, padding=padding)
        p = {"weight": rng.normal(size=(3, 2, k, k)), "bias": rng.normal(size=3)}
        x = rng.normal(size=(1, 2, hw, hw))
        M, b = milp.affine_map(layer, p, (2, hw, hw))
        np.testing.assert_allclose(M @ x.ravel() + b, layer.forward(p, x).ravel(), atol=1e-12)


@pytest.mark.parametrize("normalize", [False, True])
def test_conv_minimum_between_relaxation_and_attacks(normalize, rng):
    net = convnet(rng, normalize)
    x = rng.uniform(0, 1, (1, *net.input_shape))
    C = spec_at(net, x[0])
    y = np.array([int(np.argmax(net(x)[0]))])
    eps = 0.1
    lo, up = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
    deeppoly = bounds.compute(net, lo, up, "deeppoly", C[None])[0][0]
    inside = lo + (up - lo) * rng.random((200, *net.input_shape))
    sampled = margins(net, inside, C).min(0)
    adversarial = attacks.pgd(net, x, y, eps, steps=20, rng=0)
    attacked = margins(net, adversarial, C)[0]
    pre = bounds.intermediate_bounds(net, lo, up, "ibp")
    for i, c in enumerate(C):
        value, xm = milp.minimum(net, lo[0], up[0], c)
        assert deeppoly[i] - 1e-6 <= value <= min(sampled[i], attacked[i]) + 1e-6
        assert float(margins(net, xm[None], c[None])[0, 0]) == pytest.approx(value, abs=1e-6)
        # exact whatever sound bounds the encoding is built on: IBP's looser ones too
        assert milp.minimum(net, lo[0], up[0], c, pre=pre)[0] == pytest.approx(value, abs=1e-6)


def test_conv_counterexample_validates(rng):
    net = convnet(rng, True)
    x = rng.uniform(0, 1, (1, *net.input_shape))
    C = spec_at(net, x[0])
    lo, up = np.clip(x[0] - 0.5, 0, 1), np.clip(x[0] + 0.5, 0, 1)
    result = milp.verify(net, lo, up, C, time_limit=30.0)
    assert result.status == "counterexample"
    assert np.all((lo <= result.x) & (result.x <= up))
    assert margins(net, result.x[None], C).min() < 0
    assert "violated" in result.rows


def test_float32_network(rng):
    net64 = convnet(rng, True)
    net32 = Sequential(net64.layers, dtype="float32", input_shape=net64.input_shape)
    net32.theta = net64.theta.astype(np.float32)
    net64.theta = net32.theta.astype(np.float64)  # the same network, weights exact in both
    x = rng.uniform(0, 1, (1, *net32.input_shape))
    C = spec_at(net64, x[0])
    lo, up = np.clip(x[0] - 0.05, 0, 1), np.clip(x[0] + 0.05, 0, 1)
    pre = bounds.intermediate_bounds(net32, lo[None], up[None], "deeppoly")
    got = milp.minimum(net32, lo, up, C[0], pre=pre)[0]
    assert got == pytest.approx(milp.minimum(net64, lo, up, C[0])[0], abs=1e-6)


# ---------------------------------------------------------------- timeouts


def test_timeout_gives_no_verdict(rng):
    net = mlp(rng, (10, 40, 40, 10))
    x = rng.uniform(0.3, 0.7, (1, 1, 10))
    C = spec_at(net, x)
    lo, up = np.clip(x - 0.5, 0, 1), np.clip(x + 0.5, 0, 1)
    inside = lo + (up - lo) * rng.random((500, 1, 1, 10))
    sampled = margins(net, inside, C).min(0)

    result = milp.verify(net, lo, up, C, time_limit=0.0)
    assert result.status == "timeout" and result.x is None
    assert set(result.rows) == {"open"}
    assert np.all(np.isfinite(result.lower)) and np.all(result.lower <= sampled)

    result = milp.verify(net, lo, up, C, time_limit=0.05)
    assert result.status != "certified"
    assert np.all((result.lower == -np.inf) | (result.lower <= sampled))
    if result.status == "timeout":
        assert result.x is None and "open" in result.rows
    else:
        assert margins(net, result.x[None], C).min() < 0


def test_minimum_raises_on_timeout(rng):
    net = mlp(rng, (10, 40, 40, 10))
    x = rng.uniform(0.3, 0.7, (1, 1, 10))
    C = spec_at(net, x)
    lo, up = np.clip(x - 0.5, 0, 1), np.clip(x + 0.5, 0, 1)
    with pytest.raises(TimeoutError):
        milp.minimum(net, lo, up, C[0], time_limit=1e-3)


# ---------------------------------------------------------------- argument checks


def test_bad_arguments(rng):
    net = convnet(rng, False)
    x = rng.uniform(0, 1, net.input_shape)
    lo, up = np.clip(x - 0.1, 0, 1), np.clip(x + 0.1, 0, 1)
    C = spec_at(net, x)
    pre = {1: (np.zeros((3, 3, 3)), np.ones((3, 3, 3))), 4: (np.zeros(5), np.ones(5))}
    cases = [
        dict(lower=lo[None], upper=up[None], C=C),
        dict(lower=up + 0.1, upper=up, C=C),
        dict(lower=lo, upper=up, C=C[:, :2]),
        dict(lower=lo, upper=up, C=C[0]),
        dict(lower=lo, upper=up, C=C, pre={1: pre[1]}),
        dict(lower=lo, upper=up, C=C, pre={**pre, 4: (np.zeros(4), np.ones(4))}),
        dict(lower=lo, upper=up, C=C, pre={**pre, 4: (np.ones(5), np.zeros(5))}),
        dict(lower=lo, upper=up, C=C, skip=np.zeros(3, bool)),
        dict(lower=lo, upper=up, C=C, prior=np.zeros(1)),
        dict(lower=lo, upper=up, C=C, theta=net.theta[:-1]),
        dict(lower=lo, upper=up, C=C, time_limit=-1.0),
    ]
    for kwargs in cases:
        with pytest.raises(ValueError) as info:
            milp.verify(net, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError):
        milp.minimum(net, lo, up, C)
