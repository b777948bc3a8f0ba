"""Properties of gls_np.bounds: soundness, exactness where it must be exact, population,
gradients, memory chunking and argument checks.

Reference numbers are checked in test_bounds_reference.py, the ReLU relaxations in
test_bounds_relax.py.
"""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from gls_np import bounds, nets, ops
from gls_np.layers import Conv2d, Flatten, Linear, Normalize, ReLU
from gls_np.model import Sequential
from gls_np.tensor import Tensor, value_and_grad

METHODS = bounds.METHODS


# ---------------------------------------------------------------- fixtures built in code


def mlp(rng, dtype="float64"):
    layers = [Flatten(), Linear(8, 10), ReLU(), Linear(10, 7), ReLU(), Linear(7, 4)]
    net = Sequential(layers, dtype=dtype, input_shape=(2, 2, 2))
    nets.initialize(net, rng)
    return net


def convnet(rng, dtype="float64"):
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
    net = Sequential(layers, dtype=dtype, input_shape=(2, 6, 6))
    nets.initialize(net, rng)
    return net


def paper_net(arch, dataset):
    def build(rng, dtype="float64"):
        return nets.build(arch, dataset, dtype=dtype, seed=int(rng.integers(1 << 30)))

    return build


BUILDERS = {
    "mlp": mlp,
    "convnet": convnet,
    "cnn3-mnist": paper_net("cnn3", "mnist"),
    "cnn3-cifar10": paper_net("cnn3", "cifar10"),
    "cnn5-mnist": paper_net("cnn5", "mnist"),
}


def input_box(rng, net, batch, eps, dtype="float64"):
    x = rng.uniform(0.0, 1.0, (batch, *net.input_shape))
    lo, up = np.clip(x - eps, 0.0, 1.0), np.clip(x + eps, 0.0, 1.0)
    return x.astype(dtype), lo.astype(dtype), up.astype(dtype)


def random_spec(rng, net, batch):
    K = net.layers[-1].out_features
    return bounds.margin_spec(rng.integers(0, K, batch), K)


def box_samples(rng, lo, up, n):
    """n points of the box per sample: half random vertices, half uniform interior points."""
    t = rng.random((n, *lo.shape))
    t[: n // 2] = t[: n // 2] < 0.5
    return (lo + t * (up - lo)).astype(lo.dtype)


def forward_many(net, xs):
    """Logits of (n, B, *in) points -> (n, B, K)."""
    n, B = xs.shape[:2]
    return net.forward(xs.reshape(n * B, *xs.shape[2:])).reshape(n, B, -1)


def relu_inputs(net, x):
    """{layer index: the input of that ReLU} along a forward pass."""
    out = {}
    for i, (layer, p) in enumerate(zip(net.layers, net.unravel())):
        if isinstance(layer, ReLU):
            out[i] = x
        x = layer.forward(p, x)
    return out


def assert_inside(values, lb, ub, tol):
    """lb - tol (1 + |v|) <= v <= ub + tol (1 + |v|), everywhere (values may have a sample axis)."""
    slack = tol * (1.0 + np.abs(values))
    assert np.all(values >= lb - slack), float(np.max(lb - values))
    assert np.all(values <= ub + slack), float(np.max(values - ub))


# ---------------------------------------------------------------- soundness

SOUNDNESS_CASES = [
    ("mlp", 4, 0.1),
    ("mlp", 4, 0.4),
    ("convnet", 3, 0.05),
    ("convnet", 3, 0.3),
    ("cnn3-mnist", 2, 0.05),
    pytest.param("cnn3-cifar10", 1, 8 / 255, marks=pytest.mark.slow),
    pytest.param("cnn5-mnist", 2, 0.02, marks=pytest.mark.slow),
]


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-9), ("float32", 1e-5)])
@pytest.mark.parametrize("name,batch,eps", SOUNDNESS_CASES)
def test_sampled_points_lie_inside_every_methods_bounds(name, batch, eps, dtype, tol, rng):
    net = BUILDERS[name](rng, dtype)
    _, lo, up = input_box(rng, net, batch, eps, dtype)
    C = random_spec(rng, net, batch)
    xs = box_samples(rng, lo, up, 64)
    logits = forward_many(net, xs)
    margins = np.einsum("bsk,nbk->nbs", C, logits)
    hidden = relu_inputs(net, xs.reshape(-1, *lo.shape[1:]))
    for method in METHODS:
        assert_inside(logits, *bounds.compute(net, lo, up, method), tol)
        assert_inside(margins, *bounds.compute(net, lo, up, method, C), tol)
        for i, box in bounds.intermediate_bounds(net, lo, up, method).items():
            v = hidden[i].reshape(len(xs), *box.lb.shape)
            assert_inside(v, box.lb, box.ub, tol)


def pgd_min_margins(net, lo, up, C, steps=30):
    """A projected-gradient attack per spec row: the smallest margin it finds, (B, S)."""
    best = np.full(C.shape[:2], np.inf)
    step = (up - lo).max() / 8
    for s in range(C.shape[1]):
        x = (lo + up) / 2

        def margin(x):
            logits = net.forward(x)
            return ops.sum(ops.mul(logits, C[:, s, :]), axis=-1)

        for _ in range(steps):
            m = np.asarray(margin(x))
            best[:, s] = np.minimum(best[:, s], m)
            _, (g,) = value_and_grad(lambda x: ops.sum(margin(x)), x)
            x = np.clip(x - step * np.sign(g), lo, up)
        best[:, s] = np.minimum(best[:, s], margin(x))
    return best


@pytest.mark.parametrize(
    "name,batch,eps", [("mlp", 4, 0.3), ("convnet", 3, 0.2), ("cnn3-mnist", 2, 0.1)]
)
def test_pgd_never_beats_the_lower_bounds(name, batch, eps, rng):
    net = BUILDERS[name](rng)
    _, lo, up = input_box(rng, net, batch, eps)
    C = random_spec(rng, net, batch)
    attacked = pgd_min_margins(net, lo, up, C)
    for method in METHODS:
        lb, _ = bounds.compute(net, lo, up, method, C)
        assert np.all(attacked >= lb - 1e-9 * (1 + np.abs(attacked))), method


@pytest.mark.parametrize(
    "name,batch",
    [
        ("mlp", 3),
        ("convnet", 3),
        ("cnn3-mnist", 2),
        pytest.param("cnn3-cifar10", 1, marks=pytest.mark.slow),
    ],
)
def test_hbox_is_never_looser_than_ibp(name, batch, rng):
    net = BUILDERS[name](rng)
    _, lo, up = input_box(rng, net, batch, 0.05 if name.startswith("cnn") else 0.2)
    C = random_spec(rng, net, batch)
    hb = bounds.intermediate_bounds(net, lo, up, "hbox")
    ib = bounds.intermediate_bounds(net, lo, up, "ibp")
    assert hb.keys() == ib.keys()
    for i in ib:
        assert np.all(hb[i].lb >= ib[i].lb - 1e-12 * (1 + np.abs(ib[i].lb)))
        assert np.all(hb[i].ub <= ib[i].ub + 1e-12 * (1 + np.abs(ib[i].ub)))
    for spec in (None, C):
        hl, hu = bounds.compute(net, lo, up, "hbox", spec)
        il, iu = bounds.compute(net, lo, up, "ibp", spec)
        assert np.all(hl >= il - 1e-12 * (1 + np.abs(il)))
        assert np.all(hu <= iu + 1e-12 * (1 + np.abs(iu)))
        assert np.any(hu - hl < iu - il)  # and strictly tighter somewhere


def test_deeppoly_is_exact_when_every_relu_is_stable(rng):
    net = convnet(rng)
    x, _, _ = input_box(rng, net, 2, 0.0)
    eps = 1e-2
    while True:  # shrink the box until no ReLU input straddles zero
        lo, up = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
        pre = bounds.intermediate_bounds(net, lo, up, "deeppoly")
        if all(np.all((b.lb >= 0) | (b.ub <= 0)) for b in pre.values()):
            break
        eps /= 2
    assert eps > 1e-5
    # the network is affine on the box: f(x) = f(c) + M (x - c), M read off by central differences
    c, r = (lo + up) / 2, (up - lo) / 2
    n = c[0].size
    dirs = np.eye(n).reshape(n, *c.shape[1:])[:, None] * r[None]  # (n, B, *in)
    M = (forward_many(net, c + dirs) - forward_many(net, c - dirs)) / 2  # (n, B, K): M r per input
    fc = net.forward(c)
    exact_lb, exact_ub = fc - np.abs(M).sum(0), fc + np.abs(M).sum(0)
    lb, ub = bounds.compute(net, lo, up, "deeppoly")
    np.testing.assert_allclose(lb, exact_lb, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(ub, exact_ub, rtol=1e-9, atol=1e-12)
    ilb, iub = bounds.compute(net, lo, up, "ibp")
    assert np.all(ilb <= lb + 1e-12) and np.all(iub >= ub - 1e-12)


def test_affine_network_bounds_are_exact(rng):
    net = Sequential(
        [Flatten(), Linear(8, 5), Linear(5, 3)], dtype="float64", input_shape=(2, 2, 2)
    )
    nets.initialize(net, rng)
    _, lo, up = input_box(rng, net, 4, 0.2)
    W1, W2 = (p["weight"] for p in net.unravel()[1:])
    centre = net.forward((lo + up) / 2)
    radius = ((up - lo) / 2).reshape(4, -1) @ np.abs(W2 @ W1).T
    for method in ("crown-ibp", "deeppoly", "hbox"):
        lb, ub = bounds.compute(net, lo, up, method)
        np.testing.assert_allclose(lb, centre - radius, rtol=1e-12)
        np.testing.assert_allclose(ub, centre + radius, rtol=1e-12)
    lb, ub = bounds.compute(net, lo, up, "ibp")
    assert np.all(ub - lb >= 2 * radius - 1e-12)


@pytest.mark.parametrize("name,batch", [("mlp", 3), ("convnet", 3), ("cnn3-mnist", 2)])
def test_zero_radius_gives_the_forward_pass(name, batch, rng):
    net = BUILDERS[name](rng)
    x, _, _ = input_box(rng, net, batch, 0.0)
    C = random_spec(rng, net, batch)
    logits = net.forward(x)
    for method in METHODS:
        lb, ub = bounds.compute(net, x, x, method)
        np.testing.assert_allclose(lb, logits, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ub, logits, rtol=1e-12, atol=1e-12)
        lb, ub = bounds.compute(net, x, x, method, C)
        np.testing.assert_allclose(lb, np.einsum("bsk,bk->bs", C, logits), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(ub, lb, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", ["mlp", "convnet"])
def test_ibp_is_monotone_in_eps(name, rng):
    net = BUILDERS[name](rng)
    x, _, _ = input_box(rng, net, 3, 0.0)
    C = random_spec(rng, net, 3)
    prev = None
    for eps in (0.0, 0.01, 0.05, 0.1, 0.3):
        lo, up = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)
        lb, ub = bounds.compute(net, lo, up, "ibp", C)
        if prev is not None:
            assert np.all(lb <= prev[0] + 1e-12) and np.all(ub >= prev[1] - 1e-12)
        prev = (lb, ub)


# ---------------------------------------------------------------- population


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("name", ["mlp", "convnet"])
def test_population_equals_separate_calls(name, method, rng):
    net = BUILDERS[name](rng)
    _, lo, up = input_box(rng, net, 3, 0.1)
    C = random_spec(rng, net, 3)
    params = net.theta + 0.05 * rng.standard_normal((4, net.n_params))
    for spec in (None, C):
        lb, ub = bounds.compute(net, lo, up, method, spec, params=params)
        K = net.layers[-1].out_features
        assert lb.shape == ub.shape == (4, 3, K - 1 if spec is not None else K)
        for p in range(4):
            member = Sequential(net.layers, dtype="float64", input_shape=net.input_shape)
            member.theta = params[p]
            lb_p, ub_p = bounds.compute(member, lo, up, method, spec)
            np.testing.assert_allclose(lb[p], lb_p, rtol=1e-5, atol=1e-12)
            np.testing.assert_allclose(ub[p], ub_p, rtol=1e-5, atol=1e-12)


def test_population_intermediate_bounds_have_the_population_axis(rng):
    net = convnet(rng)
    _, lo, up = input_box(rng, net, 2, 0.1)
    params = net.theta + 0.05 * rng.standard_normal((3, net.n_params))
    for method in METHODS:
        pre = bounds.intermediate_bounds(net, lo, up, method, params=params)
        assert [pre[i].lb.shape for i in sorted(pre)] == [
            (3, 2, 4, 3, 3),
            (3, 2, 3, 3, 3),
            (3, 2, 6),
        ]


# ---------------------------------------------------------------- gradients


def weighted_sum(lb, ub, w_l, w_u):
    return ops.add(ops.sum(ops.mul(lb, w_l)), ops.sum(ops.mul(ub, w_u)))


def directional_fd(f, x, v, h=1e-6):
    return (float(f(x + h * v)) - float(f(x - h * v))) / (2 * h)


def away_from_switches(net, lo, up, margin=1e-4):
    """True when no ReLU input bound is within ``margin`` of a stability or lambda switch."""
    for method in METHODS:
        for box in bounds.intermediate_bounds(net, lo, up, method).values():
            for v in (box.lb, box.ub, box.lb + box.ub):
                if np.min(np.abs(v)) < margin:
                    return False
    return True


TINY_NETS = {
    # one conv: its ReLU input is exact by IBP, the hidden Linear's is back-substituted
    "one-conv": (
        lambda: [Conv2d(1, 3, 3, stride=1, padding=1), ReLU(), Flatten(), Linear(48, 5)],
        (1, 4, 4),
    ),
    # two convs: the second conv's neurons are back-substituted as patches
    "two-convs": (
        lambda: [
            Conv2d(1, 2, 3, stride=1, padding=1),
            ReLU(),
            Conv2d(2, 2, 3, stride=2, padding=1),
            ReLU(),
            Flatten(),
            Linear(8, 5),
        ],
        (1, 4, 4),
    ),
}


@pytest.fixture(params=sorted(TINY_NETS))
def tiny(request, rng):
    """A tiny conv net (< 300 parameters) with a box away from relaxation switches."""
    body, in_shape = TINY_NETS[request.param]
    net = Sequential([*body(), ReLU(), Linear(5, 3)], dtype="float64", input_shape=in_shape)
    for _ in range(20):
        nets.initialize(net, rng)
        _, lo, up = input_box(rng, net, 2, 0.15)
        if away_from_switches(net, lo, up):
            return net, lo, up, random_spec(rng, net, 2)
    pytest.fail("no box away from relaxation switches found")


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("budget_gb", [4.0, 1e-7])  # 1e-7: one row per chunk (recomputed)
def test_gradient_wrt_params_matches_finite_differences(tiny, method, budget_gb, rng):
    net, lo, up, C = tiny
    w_l, w_u = rng.standard_normal(C.shape[:2]), rng.standard_normal(C.shape[:2])

    def f(theta):
        lb, ub = bounds.compute(net, lo, up, method, C, params=theta, max_memory_gb=budget_gb)
        return weighted_sum(lb, ub, w_l, w_u)

    theta = net.theta[None]
    _, (g,) = value_and_grad(f, theta)
    for _ in range(3):
        v = rng.standard_normal(theta.shape)
        np.testing.assert_allclose(float(np.sum(g * v)), directional_fd(f, theta, v), rtol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_gradient_wrt_the_input_box_matches_finite_differences(tiny, method, rng):
    net, lo, up, C = tiny
    w_l, w_u = rng.standard_normal(C.shape[:2]), rng.standard_normal(C.shape[:2])

    def f(lower, upper):
        return weighted_sum(*bounds.compute(net, lower, upper, method, C), w_l, w_u)

    _, (g_lo, g_up) = value_and_grad(f, lo, up)
    for _ in range(3):
        v_lo, v_up = rng.standard_normal(lo.shape), rng.standard_normal(up.shape)
        h = 1e-6
        fd = (float(f(lo + h * v_lo, up + h * v_up)) - float(f(lo - h * v_lo, up - h * v_up))) / (
            2 * h
        )
        np.testing.assert_allclose(float(np.sum(g_lo * v_lo) + np.sum(g_up * v_up)), fd, rtol=1e-6)


@pytest.mark.parametrize("method", METHODS)
def test_chunked_bounds_and_gradients_equal_unchunked(method, rng):
    net = convnet(rng)
    _, lo, up = input_box(rng, net, 3, 0.1)
    C = random_spec(rng, net, 3)
    params = net.theta + 0.05 * rng.standard_normal((2, net.n_params))
    results = []
    for budget in (4.0, 1e-7, 2e-5):  # whole, one row of one sample, a few rows of all samples

        def f(theta, lower):
            lb, ub = bounds.compute(net, lower, up, method, C, params=theta, max_memory_gb=budget)
            return ops.sum(ops.sub(ub, lb))

        results.append(value_and_grad(f, params, lo))
    for value, (g_theta, g_lo) in results[1:]:
        np.testing.assert_allclose(value, results[0][0], rtol=1e-12)
        np.testing.assert_allclose(g_theta, results[0][1][0], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(g_lo, results[0][1][1], rtol=1e-10, atol=1e-12)


def test_tensors_in_float32_stay_on_the_tape(rng):
    net = mlp(rng, "float32")
    _, lo, up = input_box(rng, net, 2, 0.1, "float32")
    theta = Tensor(net.theta[None], requires_grad=True)
    lb, ub = bounds.compute(net, lo, up, "deeppoly", params=theta)
    assert isinstance(lb, Tensor) and lb.dtype == np.float32
    ops.sum(lb).backward()
    assert theta.grad.shape == theta.shape and np.all(np.isfinite(theta.grad))


# ---------------------------------------------------------------- the spec and the arguments


def test_margin_spec_rows():
    C = bounds.margin_spec(np.array([0, 2]), 4)
    np.testing.assert_array_equal(
        C,
        [
            [[1, -1, 0, 0], [1, 0, -1, 0], [1, 0, 0, -1]],
            [[-1, 0, 1, 0], [0, -1, 1, 0], [0, 0, 1, -1]],
        ],
    )
    with pytest.raises(ValueError, match="labels must lie in"):
        bounds.margin_spec(np.array([4]), 4)
    with pytest.raises(ValueError, match="1-D integer"):
        bounds.margin_spec(np.array([0.5]), 4)


def test_linf_box_is_clipped_to_the_data_range():
    box = bounds.linf_box(np.array([[[[0.05, 0.5, 0.97]]]]), 0.1)
    np.testing.assert_allclose(box.lb, [[[[0.0, 0.4, 0.87]]]])
    np.testing.assert_allclose(box.ub, [[[[0.15, 0.6, 1.0]]]])
    with pytest.raises(ValueError, match="eps must be"):
        bounds.linf_box(np.zeros((1, 1, 1, 1)), -0.1)


def test_margin_bounds_are_tighter_than_subtracted_logit_bounds(rng):
    net = convnet(rng)
    _, lo, up = input_box(rng, net, 3, 0.1)
    C = random_spec(rng, net, 3)
    for method in METHODS:
        llb, lub = bounds.compute(net, lo, up, method)
        naive = np.einsum("bsk,bk->bs", np.maximum(C, 0), llb) + np.einsum(
            "bsk,bk->bs", np.minimum(C, 0), lub
        )
        lb, _ = bounds.compute(net, lo, up, method, C)
        assert np.all(lb >= naive - 1e-12), method


def test_crown_is_an_alias_of_deeppoly(rng):
    net = convnet(rng)
    _, lo, up = input_box(rng, net, 2, 0.1)
    for a, b in zip(bounds.compute(net, lo, up, "crown"), bounds.compute(net, lo, up, "deeppoly")):
        np.testing.assert_array_equal(a, b)


def test_bad_arguments_raise_one_line_value_errors(rng):
    net = convnet(rng)
    _, lo, up = input_box(rng, net, 2, 0.1)
    C = random_spec(rng, net, 2)
    cases = [
        (dict(method="zonotope"), "unknown method"),
        (dict(upper=up[:1]), "lower and upper"),
        (dict(lower=lo[0], upper=up[0]), "lower and upper"),
        (dict(lower=up, upper=lo), "lower must be <= upper"),
        (dict(C=C[:1]), "C must be"),
        (dict(C=C[..., :2]), "C must be"),
        (dict(params=net.theta), "params must be"),
        (dict(lower=lo[:, :, :4], upper=up[:, :, :4]), "input box must be"),
    ]
    for change, message in cases:
        kwargs = dict(net=net, lower=lo, upper=up, method="ibp", C=None) | change
        with pytest.raises(ValueError, match=message) as info:
            bounds.compute(**kwargs)
        assert "\n" not in str(info.value)


# ---------------------------------------------------------------- memory

MEMORY_SCRIPT = """
import sys
import numpy as np
from gls_np import bounds, nets, ops
from gls_np.tensor import value_and_grad

batch, budget_gb = int(sys.argv[1]), float(sys.argv[2])
net = nets.build("cnn5", "mnist", dtype="float32", init="ibp", seed=0)
rng = np.random.default_rng(0)
x = rng.uniform(0, 1, (batch, 1, 28, 28)).astype(np.float32)
lo, up = np.clip(x - 0.1, 0, 1), np.clip(x + 0.1, 0, 1)
C = bounds.margin_spec(rng.integers(0, 10, batch), 10)

def loss(theta):
    lb, _ = bounds.compute(net, lo, up, "deeppoly", C, params=theta, max_memory_gb=budget_gb)
    return ops.sum(lb)

value_and_grad(loss, net.theta[None])
# VmHWM is this process's own peak; ru_maxrss would also count the forked parent's RSS
with open("/proc/self/status") as status:
    peak_kb = next(int(line.split()[1]) for line in status if line.startswith("VmHWM"))
print(peak_kb * 1024)
"""


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
def test_deeppoly_gradient_on_cnn5_stays_within_the_memory_budget():
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OPENBLAS_NUM_THREADS": "1"}
    budget_gb = 0.25
    out = subprocess.run(
        [sys.executable, "-c", MEMORY_SCRIPT, "8", str(budget_gb)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    peak_gb = int(out.stdout.split()[-1]) / 1e9
    # the interpreter, numpy and the network take ~0.05 GB before any bound is computed
    assert peak_gb < budget_gb + 0.15, peak_gb


@pytest.mark.parametrize("name", ["mlp", "convnet"])
@pytest.mark.parametrize("method", METHODS)
def test_lower_only_gives_the_same_lower_bounds_and_gradient(name, method, rng):
    net = {"mlp": mlp, "convnet": convnet}[name](rng)
    _, lo, up = input_box(rng, net, 3, 0.05)
    C = random_spec(rng, net, 3)
    P = net.theta[None] + 0.01 * rng.standard_normal((2, net.n_params))
    both, _ = bounds.compute(net, lo, up, method, C, params=P)
    lb, ub = bounds.compute(net, lo, up, method, C, params=P, lower_only=True)
    assert ub is None
    np.testing.assert_allclose(lb, both, rtol=1e-12, atol=1e-12)

    def loss(theta, lower_only):
        out, _ = bounds.compute(net, lo, up, method, C, params=theta, lower_only=lower_only)
        return ops.sum(out)

    _, (g_both,) = value_and_grad(lambda t: loss(t, False), P)
    _, (g_lower,) = value_and_grad(lambda t: loss(t, True), P)
    np.testing.assert_allclose(g_lower, g_both, rtol=1e-10, atol=1e-12)


def test_deeppoly_relaxation_off_the_tape_equals_the_taped_one(rng):
    # relax.deeppoly builds the chord from 0/1 factors off the tape, from where() on it
    from gls_np.bounds import relax

    lb = rng.standard_normal((6, 7))
    ub = lb + rng.random((6, 7)) * 2
    lb[0, :3], ub[1, :3] = 0.0, 0.0  # the boundary cases l = 0 and u = 0
    bare = relax.deeppoly(lb, ub)
    taped = relax.deeppoly(Tensor(lb, requires_grad=True), Tensor(ub, requires_grad=True))
    for name in ("slope_l", "icpt_l", "slope_u", "icpt_u"):
        value = getattr(taped, name)
        value = value.data if isinstance(value, Tensor) else value
        np.testing.assert_array_equal(getattr(bare, name), value)
    assert not np.any(bare.icpt_l.strides)  # one stored zero: checked in O(1)
