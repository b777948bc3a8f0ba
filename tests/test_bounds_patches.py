"""Patches (gls_np.bounds.patches) and stable-neuron skipping in DeepPoly: the same bounds and
gradients as dense back-substitution, on random convnets, the paper's nets and populations.

Every comparison is in float64 to 1e-10 relative: the two paths add the same products in a
different order.
"""

import numpy as np
import pytest

from gls_np import bounds, nets, ops
from gls_np.bounds import crown, patches
from gls_np.bounds.spec import Box
from gls_np.layers import Conv2d, Flatten, Linear, Normalize, ReLU
from gls_np.model import Sequential
from gls_np.tensor import value_and_grad

RTOL = 1e-10


def convnet(rng, convs, in_shape, normalize=False, relu_between=True, hidden=5, classes=3):
    """Normalize (optional), then (conv, ReLU) per (out_channels, kernel, stride, padding)."""
    layers = []
    if normalize:
        C = in_shape[0]
        layers.append(Normalize(rng.uniform(0.3, 0.6, C), rng.uniform(0.2, 0.4, C)))
    shape = tuple(in_shape)
    for n, (out, k, s, p) in enumerate(convs):
        conv = Conv2d(shape[0], out, k, s, p)
        layers.append(conv)
        if relu_between or n == len(convs) - 1:
            layers.append(ReLU())
        shape = conv.out_shape(shape)
    layers += [Flatten(), Linear(int(np.prod(shape)), hidden), ReLU(), Linear(hidden, classes)]
    net = Sequential(layers, dtype="float64", input_shape=tuple(in_shape))
    nets.initialize(net, rng)
    return net


# (convs, input shape, Normalize first): strides 1 and 2, paddings 0/1/2, kernels 3/4/5
ARCHS = {
    "s1-s2-pad": ([(3, 3, 1, 1), (4, 3, 2, 1), (2, 4, 2, 2)], (2, 9, 9), True),
    "cnn3-like": ([(3, 5, 2, 2), (4, 4, 2, 1)], (1, 12, 12), False),
    "pad0-pad2": ([(2, 3, 1, 0), (3, 3, 1, 2), (2, 5, 1, 1)], (1, 8, 8), True),
    "k4-pad0": ([(3, 4, 2, 0), (3, 3, 2, 1)], (2, 11, 11), True),
    "k5-s1": ([(2, 5, 1, 2), (3, 3, 1, 0), (2, 3, 2, 1)], (1, 10, 10), False),
}


def problem(rng, net, batch=3, eps=0.1):
    x = rng.uniform(0, 1, (batch, *net.input_shape))
    box = bounds.linf_box(x, eps)
    K = net.layers[-1].out_features
    return box, bounds.margin_spec(rng.integers(0, K, batch), K)


def population(rng, net, box, members=2):
    thetas = net.theta + 0.05 * rng.standard_normal((members, net.n_params))
    return thetas, Box(box.lb[None], box.ub[None])


def assert_close(a, b, what):
    a, b = np.asarray(a), np.asarray(b)
    np.testing.assert_allclose(
        a, b, rtol=RTOL, atol=RTOL * max(1.0, np.max(np.abs(b))), err_msg=what
    )


def assert_same_bounds(got, want):
    (out1, pre1), (out2, pre2) = got, want
    assert_close(out1.lb, out2.lb, "output lb")
    assert_close(out1.ub, out2.ub, "output ub")
    assert pre1.keys() == pre2.keys()
    for k in pre1:
        assert_close(pre1[k].lb, pre2[k].lb, f"pre[{k}] lb")
        assert_close(pre1[k].ub, pre2[k].ub, f"pre[{k}] ub")


def dense(net, theta, box, C, **kw):
    return crown.deeppoly(net, theta, box, C, use_patches=False, skip_stable=False, **kw)


def patched(net, theta, box, C, **kw):
    return crown.deeppoly(net, theta, box, C, use_patches=True, skip_stable=False, **kw)


# ---------------------------------------------------------------- the same bounds as dense rows


@pytest.mark.parametrize(
    "ratio", [0.0, patches.TOEPLITZ_FLOP_RATIO, 1e9], ids=["conv", "auto", "gemm"]
)
@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_patches_equal_dense_rows(arch, ratio, rng, monkeypatch):
    # ratio 0: every patch crosses a conv by conv2d_T; 1e9: by the GEMM with the conv's matrix
    monkeypatch.setattr(patches, "TOEPLITZ_FLOP_RATIO", ratio)
    net = convnet(rng, *ARCHS[arch])
    box, C = problem(rng, net)
    for spec in (None, C):
        assert_same_bounds(patched(net, net.theta, box, spec), dense(net, net.theta, box, spec))
    thetas, shared_box = population(rng, net, box)
    assert_same_bounds(patched(net, thetas, shared_box, C), dense(net, thetas, shared_box, C))


@pytest.mark.parametrize("arch", ["s1-s2-pad", "k5-s1"])
def test_dense_rows_through_the_conv_matrix_equal_conv2d_T(arch, rng, monkeypatch):
    # dense rows on a small map cross a conv by one GEMM with its matrix (gemm_pays)
    net = convnet(rng, *ARCHS[arch])
    box, C = problem(rng, net)
    monkeypatch.setattr(patches, "TOEPLITZ_FLOP_RATIO", 0.0)
    want = dense(net, net.theta, box, C)
    monkeypatch.setattr(patches, "TOEPLITZ_FLOP_RATIO", 1e9)
    assert_same_bounds(dense(net, net.theta, box, C), want)


def test_patches_cross_conv_after_conv_and_normalize_without_relu(rng):
    # no ReLU between the convs: a patch reaches the first conv (and Normalize) with
    # coefficients in the second conv's padding, which must be masked, not spread
    net = convnet(rng, [(3, 3, 1, 1), (2, 3, 2, 2), (3, 3, 1, 1)], (2, 9, 9), True, False)
    box, C = problem(rng, net)
    assert_same_bounds(patched(net, net.theta, box, C), dense(net, net.theta, box, C))


def test_patch_geometry_follows_the_receptive_field():
    # CNN3 on MNIST: conv (5, 2, 2) then conv (4, 2, 1); a neuron of the second conv sees an
    # 11 x 11 input window starting at (4 i - 4, 4 j - 4)
    net = nets.build("cnn3", "mnist", dtype="float64")
    conv1, conv2 = net.layers[0], net.layers[2]
    assert patches.grown(conv2, 1) == 4 and patches.grown(conv1, 4) == 11
    P, _ = patches.eye(np.zeros(1), 0, (8, 7, 7), slice(0, 8))
    params = net.unravel()
    P, _ = patches.conv_T(conv2, params[2], P, (8, 7, 7))
    assert (P.stride, P.offset, P.size) == (2, -1, 4)
    P, _ = patches.conv_T(conv1, params[0], P.with_A(P.A, clean=True), (8, 14, 14))
    assert (P.stride, P.offset, P.size) == (4, -4, 11)


def test_to_dense_places_each_window_at_its_anchor(rng):
    A = rng.standard_normal((1, 2, 3, 3, 1, 4, 4))
    P = patches.Patches(A, 2, -1, (3, 3))
    D = patches.to_dense(P, (1, 5, 5))
    assert D.shape == (1, 2 * 9, 1, 5, 5)
    for o in range(2):
        for i in range(3):
            for j in range(3):
                want = np.zeros((8, 8))  # the map with the windows' overhang on each side
                want[2 * i : 2 * i + 4, 2 * j : 2 * j + 4] = A[0, o, i, j, 0]
                np.testing.assert_array_equal(D[0, o * 9 + i * 3 + j, 0], want[1:6, 1:6])


def test_window_is_zero_outside_the_map(rng):
    m = rng.standard_normal((2, 3, 6, 6))
    P = patches.Patches(np.zeros((1, 1, 1, 1, 3, 4, 4)), 2, -1, (3, 3))
    w = patches.window(m, P)
    padded = np.pad(m, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for i in range(3):
        for j in range(3):
            np.testing.assert_array_equal(
                w[:, 0, i, j], padded[:, :, 2 * i : 2 * i + 4, 2 * j : 2 * j + 4]
            )


@pytest.mark.parametrize("arch", ["s1-s2-pad", "k4-pad0"])
def test_lower_only_patches_equal_dense_rows(arch, rng):
    # alpha-CROWN's mode: only A_l travels back
    net = convnet(rng, *ARCHS[arch])
    box, C = problem(rng, net)
    _, pre = dense(net, net.theta, box, C)
    k = max(i for i in pre if isinstance(net.layers[i - 1], Conv2d))
    shapes = net.shapes(net.input_shape)
    params = net.unravel()
    lower = {}
    for use_patches in (True, False):
        if use_patches:
            A, b = patches.eye(box.lb, 0, shapes[k], slice(0, shapes[k][0]))
        else:
            A, b = crown._identity_rows(box.lb, 0, shapes[k], slice(0, int(np.prod(shapes[k]))))
        lin = crown.backsubstitute(
            net.layers[:k], params, shapes, pre, crown.LinearBounds(A, b, None, None)
        )
        out = crown.concretize(lin, box)
        assert out.ub is None
        lower[use_patches] = out.lb
    assert_close(lower[True], lower[False], "lower-only lb")
    assert_close(lower[True], pre[k].lb.reshape(lower[True].shape), "lower-only vs both sides")


def test_lower_only_output_equals_the_lower_side_of_both(rng):
    net = convnet(rng, *ARCHS["cnn3-like"])
    box, C = problem(rng, net)
    thetas, shared_box = population(rng, net, box)
    both, pre = crown.deeppoly(net, thetas, shared_box, C)
    lower, pre_lower = crown.deeppoly(net, thetas, shared_box, C, upper=False)
    assert lower.ub is None
    assert_close(lower.lb, both.lb, "lower-only output")
    for k in pre:
        assert_close(pre_lower[k].lb, pre[k].lb, f"pre[{k}]")


@pytest.mark.parametrize("name", ["cnn3-mnist", "cnn5-mnist"])
def test_patches_equal_dense_rows_on_the_papers_nets(name, rng):
    arch = name.split("-")[0]
    net = nets.build(arch, "mnist", dtype="float64", init="ibp", seed=int(rng.integers(1 << 30)))
    box, C = problem(rng, net, batch=2, eps=0.05)
    assert_same_bounds(patched(net, net.theta, box, C), dense(net, net.theta, box, C))


# ---------------------------------------------------------------- skipping stable neurons


def deep_mlp(rng, widths):
    layers = [Flatten()]
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [Linear(a, b), ReLU()]
    net = Sequential(layers[:-1], dtype="float64", input_shape=(1, 2, widths[0] // 2))
    nets.initialize(net, rng)
    return net


@pytest.mark.parametrize("trial", range(8))
def test_skipping_stable_neurons_keeps_the_output_bounds(trial, rng):
    # a neuron the one-step bound proves stable is stable for full back-substitution too,
    # so its relaxation and every later bound are the same; its own pre bound may be looser
    if trial < 5:
        net = deep_mlp(rng, [4, *rng.integers(3, 8, 4), 3])
        net.theta = net.theta + rng.uniform(0, 1) * rng.standard_normal(net.n_params)
    else:
        net = convnet(rng, *ARCHS[sorted(ARCHS)[trial - 5]])
    box, C = problem(rng, net, batch=4, eps=rng.uniform(0.02, 0.4))
    for theta, b in ((net.theta, box), population(rng, net, box)):
        skipped = crown.deeppoly(net, theta, b, C)
        full = dense(net, theta, b, C)
        assert_close(skipped[0].lb, full[0].lb, "output lb")
        assert_close(skipped[0].ub, full[0].ub, "output ub")
        for k, f in full[1].items():
            s = skipped[1][k]
            np.testing.assert_array_equal((s.lb >= 0) | (s.ub <= 0), (f.lb >= 0) | (f.ub <= 0))
            assert np.all(s.lb <= f.lb + 1e-12) and np.all(s.ub >= f.ub - 1e-12)


def with_dead_channels(net):
    """``net`` with the first channel of its last convolution stable (off) on [0, 1]
    inputs, so that skipping by channel has a channel to skip."""
    last = max(i for i, layer in enumerate(net.layers) if isinstance(layer, Conv2d))
    net.unravel()[last]["bias"][0] = -10.0
    return net


# how DeepPoly picks the rows it back-substitutes: (SITE_FRACTION, use_patches, the path)
PICKS = {
    "sites": (1.0, True, "_sites_bounds"),  # conv maps: sites x channels, as patches
    "channels": (0.0, True, "_backsubstituted"),  # conv maps: channels only
    "slots": (1.0, False, "_backsubstituted"),  # dense rows: each sample's neurons
}


@pytest.fixture(params=sorted(PICKS))
def picking(request, monkeypatch):
    """Pick the unstable rows however many there are; count the calls of the picked path."""
    fraction, use_patches, path = PICKS[request.param]
    monkeypatch.setattr(crown, "SITE_FRACTION", fraction)
    calls = []
    run = getattr(crown, path)

    def counted(*args, **kw):
        if path == "_sites_bounds" or kw.get("slots") is not None:
            calls.append(path)
        return run(*args, **kw)

    monkeypatch.setattr(crown, path, counted)
    return use_patches, calls


@pytest.mark.parametrize("budget", [4e9, 2e3], ids=["whole", "chunked"])
@pytest.mark.parametrize("arch", ["cnn3-like", "s1-s2-pad", "k5-s1"])
def test_back_substituting_only_unstable_rows_keeps_every_bound(arch, budget, picking, rng):
    # per sample: the sites (and channels) of a conv map, or the neurons of dense rows, with
    # an unstable neuron are back-substituted; there pre equals full back-substitution,
    # elsewhere it may be the one-step bound (stable, so the same relaxation), and the
    # output bounds are the same
    use_patches, calls = picking
    net = with_dead_channels(convnet(rng, *ARCHS[arch]))
    box, C = problem(rng, net, batch=4, eps=0.03)
    shapes = net.shapes(net.input_shape)
    for theta, b in ((net.theta, box), population(rng, net, box)):
        got = crown.deeppoly(net, theta, b, C, budget, use_patches=use_patches)
        full = dense(net, theta, b, C)
        assert_close(got[0].lb, full[0].lb, "output lb")
        assert_close(got[0].ub, full[0].ub, "output ub")
        for k in sorted(full[1])[1:]:
            earlier = {i: v for i, v in got[1].items() if i < k}
            if not earlier:
                continue
            one = crown._one_step(net, net.unravel(theta), shapes, earlier, k)
            unstable = (one.lb < 0) & (one.ub > 0)
            for side in ("lb", "ub"):
                g, f, o = (
                    getattr(x[1][k] if x is not one else one, side) for x in (got, full, one)
                )
                if unstable.any():
                    assert_close(g[unstable], f[unstable], f"pre[{k}] {side} at unstable")
                tol = RTOL * max(1.0, np.max(np.abs(f)))
                either = np.isclose(g, f, RTOL, tol) | np.isclose(g, o, RTOL, tol)
                assert either.all(), f"pre[{k}] {side}: neither full nor one-step"
    assert calls


def test_unstable_picks_are_each_samples_unstable_neurons():
    # dense rows: each sample's unstable neurons, padded with stable ones to the busiest
    # sample's count; the neurons unstable anywhere when they are fewer
    lb = np.array([[-1.0, 1, -1, 1], [-1, -1, 1, -1]])
    one = Box(lb, lb + np.array([[2.0, 1, 0.5, 1], [0.5, 0.5, 1, 2]]))
    pick = crown._unstable_picks(one, (4,), False, False)
    np.testing.assert_array_equal(np.sort(pick.rows[:, :1], axis=1), [[0], [3]])
    np.testing.assert_array_equal(pick.flat, np.arange(2)[:, None] * 4 + pick.rows)
    one = Box(lb, lb + np.array([[2.0, 1, 2, 1], [2, 0.5, 1, 0.5]]))
    np.testing.assert_array_equal(crown._unstable_picks(one, (4,), False, False).rows, [0, 2])
    # patches on a map (3, 1, 3): the channels unstable anywhere and the (sample, position)
    # sites with an unstable neuron
    lb = -np.ones((2, 3, 1, 3))
    ub = np.full((2, 3, 1, 3), -0.5)
    ub[0, 1, 0, 2] = ub[1, 2, 0, 0] = 1
    pick = crown._unstable_picks(Box(lb, ub), (3, 1, 3), True, True)
    np.testing.assert_array_equal(pick.rows, [1, 2])
    np.testing.assert_array_equal(pick.sites, [2, 3])
    # site 2 = (sample 0, position 2), site 3 = (sample 1, position 0); flat b 9 + c 3 + l
    np.testing.assert_array_equal(pick.flat, [[5, 8], [12, 15]])
    pick = crown._unstable_picks(Box(lb, ub), (3, 1, 3), True, False)
    assert pick.sites is None
    np.testing.assert_array_equal(pick.flat, [[3, 4, 5, 6, 7, 8], [12, 13, 14, 15, 16, 17]])


def test_one_step_bounds_are_sound_and_looser_than_full_back_substitution(rng):
    net = deep_mlp(rng, [4, 6, 6, 6, 3])
    box, _ = problem(rng, net, batch=5, eps=0.3)
    _, pre = dense(net, net.theta, box, None)
    shapes, params = net.shapes(net.input_shape), net.unravel()
    for k in sorted(pre)[1:]:
        one = crown._one_step(net, params, shapes, {i: b for i, b in pre.items() if i < k}, k)
        assert np.all(one.lb <= pre[k].lb + 1e-12) and np.all(one.ub >= pre[k].ub - 1e-12)


# ---------------------------------------------------------------- gradients and chunks


def tiny_convnet(rng, side, dead=False):
    """A tiny two-conv net on (1, side, side) whose second ReLU's input is back-substituted
    as patches, with a box kept away from relaxation switches (``dead``: a dead channel)."""
    for _ in range(30):
        net = convnet(rng, [(2, 3, 1, 1), (2, 3, 2, 1)], (1, side, side), hidden=4, classes=3)
        if dead:
            with_dead_channels(net)
        box, C = problem(rng, net, batch=2, eps=0.15)
        _, pre = dense(net, net.theta, box, None)
        ends = [v for b in pre.values() for v in (b.lb, b.ub, b.lb + b.ub)]
        if min(np.min(np.abs(v)) for v in ends) <= 1e-4:
            continue
        if not dead or np.any((pre[3].lb < 0) & (pre[3].ub > 0)):
            return net, box, C
    pytest.fail("no box away from relaxation switches found")


@pytest.fixture
def two_convs(rng):
    """< 300 parameters; the patches become dense rows before the input (5 x 5)."""
    return tiny_convnet(rng, 5)


def loss_of(net, box, C, w_l, w_u, **kw):
    def f(theta, lower, upper):
        out, _ = crown.deeppoly(net, theta, Box(lower[None], upper[None]), C, **kw)
        return ops.add(ops.sum(ops.mul(out.lb, w_l)), ops.sum(ops.mul(out.ub, w_u)))

    return f


@pytest.mark.parametrize("budget", [4e9, 1e3])  # 1e3: one channel of one sample per chunk
def test_patch_gradients_match_finite_differences_and_dense(two_convs, budget, rng):
    assert_gradients_match(*two_convs, rng, budget_bytes=budget)


def test_gradients_through_unstable_rows_match_finite_differences_and_dense(picking, rng):
    # on 7 x 7 the patches stay patches down to the input, as sites need
    use_patches, calls = picking
    assert_gradients_match(*tiny_convnet(rng, 7, dead=True), rng, use_patches=use_patches)
    assert calls


def assert_gradients_match(net, box, C, rng, **kw):
    """The loss's gradients in theta and the box: finite differences, and the dense path's."""
    w_l, w_u = rng.standard_normal(C.shape[:2]), rng.standard_normal(C.shape[:2])
    f = loss_of(net, box, C, w_l, w_u, **kw)
    args = (net.theta[None], box.lb, box.ub)
    value, grads = value_and_grad(f, *args)
    for _ in range(3):
        vs = [rng.standard_normal(a.shape) for a in args]
        h = 1e-6
        plus = f(*(a + h * v for a, v in zip(args, vs)))
        minus = f(*(a - h * v for a, v in zip(args, vs)))
        fd = (float(plus) - float(minus)) / (2 * h)
        np.testing.assert_allclose(
            sum(float(np.sum(g * v)) for g, v in zip(grads, vs)), fd, rtol=1e-6
        )
    g_dense = value_and_grad(
        loss_of(net, box, C, w_l, w_u, use_patches=False, skip_stable=False), *args
    )
    assert_close(value, g_dense[0], "value")
    for g, gd in zip(grads, g_dense[1]):
        assert_close(g, gd, "gradient")


def test_chunked_patches_equal_unchunked(rng):
    net = convnet(rng, *ARCHS["s1-s2-pad"])
    box, C = problem(rng, net, batch=3)
    whole = patched(net, net.theta, box, C)
    for budget in (1e3, 2e4):  # one channel of one sample; a few channels of all samples
        assert_same_bounds(patched(net, net.theta, box, C, budget_bytes=budget), whole)


def test_patch_rows_are_cheaper_than_dense_rows_in_the_memory_plan():
    net = nets.build("cnn3", "mnist")
    shapes = net.shapes(net.input_shape)
    dense_row = crown._bytes_per_row(net, shapes, 3, 4)
    patch_row = crown._bytes_per_row(net, shapes, 3, 4, patched=True)
    assert patch_row * 4 < dense_row


def test_targets_are_taped_while_they_fit_the_budget():
    # the tape keeps targets in order while their bytes fit; a target that does not is
    # recomputed during backward and takes nothing from the room
    room = [10.0]
    assert not crown._recompute(room, 4.0) and room == [6.0]
    assert crown._recompute(room, 7.0) and room == [6.0]
    assert not crown._recompute(room, 6.0) and room == [0.0]
    # what a tape keeps of a row is less than what computing it needs at its peak
    net = nets.build("cnn5", "mnist")
    shapes = net.shapes(net.input_shape)
    for k, patched in ((3, True), (8, False)):
        taped = crown._bytes_per_row(net, shapes, k, 4, patched, taped=True)
        assert 0 < taped < crown._bytes_per_row(net, shapes, k, 4, patched)
