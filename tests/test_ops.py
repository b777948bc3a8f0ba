"""Every primitive's VJP against central finite differences (float64).

The dot-product test of HIPS/autograd: for random cotangent u and direction v,
<u, (f(a + h v) - f(a - h v)) / 2h> must equal <VJP(u), v>.
"""

import numpy as np
import pytest

from gls_np import ops
from gls_np.tensor import Tensor, value_and_grad


def check_vjp(f, args, rng, h=1e-6, rtol=1e-6):
    """Check d f / d args[i] for every float argument i by the dot-product test."""
    out = f(*args)
    u = rng.standard_normal(np.shape(out))
    for i, a in enumerate(args):
        if not (isinstance(a, np.ndarray) and a.dtype == np.float64):
            continue
        leaves = [Tensor(x, requires_grad=True) if j == i else x for j, x in enumerate(args)]
        res = f(*leaves)
        res.backward(u)
        v = rng.standard_normal(a.shape)
        plus = [x + h * v if j == i else x for j, x in enumerate(args)]
        minus = [x - h * v if j == i else x for j, x in enumerate(args)]
        fd = (f(*plus) - f(*minus)) / (2 * h)
        lhs = float(np.sum(leaves[i].grad * v))
        rhs = float(np.sum(u * fd))
        assert leaves[i].grad.shape == a.shape, (i, leaves[i].grad.shape, a.shape)
        assert np.isclose(lhs, rhs, rtol=rtol, atol=1e-8 * (1 + abs(rhs))), (i, lhs, rhs)


def away_from_zero(rng, shape):
    """Values with |x| >= 0.1 so kinks (abs, relu) are never crossed by h."""
    x = rng.standard_normal(shape)
    return np.where(np.abs(x) < 0.1, np.sign(x) * 0.1 + x, x)


BINARY_SHAPES = [((3, 4), (3, 4)), ((2, 3, 4), (4,)), ((2, 1, 4), (1, 3, 1)), ((5,), ())]


@pytest.mark.parametrize("op", [ops.add, ops.sub, ops.mul, ops.div, ops.maximum, ops.minimum])
@pytest.mark.parametrize("shapes", BINARY_SHAPES)
def test_binary_vjp(op, shapes, rng):
    a = away_from_zero(rng, shapes[0])
    b = away_from_zero(rng, shapes[1]) + (0.05 if op in (ops.maximum, ops.minimum) else 0)
    check_vjp(op, [a, np.asarray(b)], rng)


@pytest.mark.parametrize("op", [ops.neg, ops.abs, ops.relu, ops.exp, lambda x: ops.log(ops.abs(x))])
def test_unary_vjp(op, rng):
    check_vjp(op, [away_from_zero(rng, (3, 5))], rng)


def test_where_and_clip_vjp(rng):
    a, b = rng.standard_normal((4, 5)), rng.standard_normal((5,))
    cond = rng.random((4, 5)) > 0.5
    check_vjp(lambda a, b: ops.where(cond, a, b), [a, b], rng)
    x = rng.uniform(-2, 2, (4, 5))
    x[np.abs(np.abs(x) - 1) < 0.05] = 0.0
    check_vjp(lambda x: ops.clip(x, -1.0, 1.0), [x], rng)


@pytest.mark.parametrize(
    "fn",
    [
        lambda a: ops.reshape(a, (6, 4)),
        lambda a: ops.transpose(a, (2, 0, 1)),
        lambda a: ops.transpose(a),
        lambda a: ops.swapaxes(a, 0, 2),
        lambda a: ops.broadcast_to(ops.reshape(a, (1, 2, 3, 4)), (5, 2, 3, 4)),
        lambda a: ops.getitem(a, (slice(None), 1, slice(1, 3))),
        lambda a: ops.getitem(a, (Ellipsis, None, 2)),
        lambda a: ops.pad(a, ((0, 0), (1, 2), (2, 0))),
        lambda a: ops.sum(a),
        lambda a: ops.sum(a, axis=1),
        lambda a: ops.sum(a, axis=(0, 2), keepdims=True),
        lambda a: ops.mean(a, axis=-1),
        lambda a: ops.logsumexp(a, axis=-1),
        lambda a: ops.logsumexp(a, axis=1, keepdims=True),
        lambda a: ops.concatenate([a, 2 * a[:, :1]], axis=1),
    ],
)
def test_shape_and_reduction_vjp(fn, rng):
    check_vjp(fn, [rng.standard_normal((2, 3, 4))], rng)


def test_gather_vjp(rng):
    a = rng.standard_normal((3, 4, 6))
    idx = rng.integers(0, 6, (3, 4))
    check_vjp(lambda a: ops.gather(a, idx), [a], rng)
    np.testing.assert_array_equal(
        ops.gather(a, idx), np.take_along_axis(a, idx[..., None], -1)[..., 0]
    )


def test_take_and_put_vjp(rng):
    a = rng.standard_normal((3, 7, 2))
    idx = np.array([4, 0, 4, 6, 4, 1])  # repeats: their cotangents add up
    check_vjp(lambda a: ops.take(a, idx, 1), [a], rng)
    np.testing.assert_array_equal(ops.take(a, idx, 1), a[:, idx])
    spots, v = np.array([5, 0, 2]), rng.standard_normal((3, 3, 2))
    check_vjp(lambda a, v: ops.put(a, spots, v, 1), [a, v], rng)
    want = a.copy()
    want[:, spots] = v
    np.testing.assert_array_equal(ops.put(a, spots, v, 1), want)


@pytest.mark.parametrize("kind", ["distinct", "sorted runs", "any order"])
def test_scatter_add_sums_the_rows_of_repeated_indices(kind, rng):
    from gls_np.backend import scatter_add

    idx = {
        "distinct": np.array([0, 2, 3, 7]),
        "sorted runs": np.array([1, 1, 1, 4, 4, 6]),
        "any order": np.array([5, 1, 5, 0, 1]),
    }[kind]
    for shape in ((3, 2), ()):
        g = rng.standard_normal((len(idx), *shape))
        want = np.zeros((8, *shape))
        np.add.at(want, idx, g)
        np.testing.assert_allclose(scatter_add(g, idx, 8), want, rtol=1e-15, atol=1e-15)


@pytest.mark.parametrize(
    "sa,sb",
    [
        ((3, 4), (4, 5)),
        ((2, 3, 4), (4, 5)),
        ((3, 4), (2, 4, 5)),
        ((2, 3, 4), (2, 4, 5)),
        ((1, 3, 4), (2, 4, 5)),
        ((2, 6, 3, 4), (2, 1, 4, 5)),
    ],
)
def test_matmul_vjp(sa, sb, rng):
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    np.testing.assert_allclose(ops.matmul(a, b), np.matmul(a, b), rtol=1e-12)
    check_vjp(ops.matmul, [a, b], rng)


def naive_conv(x, W, stride, padding):
    """Direct loop over every output pixel: the definition of PyTorch's Conv2d."""
    B, C, H, Wd = x.shape
    O, _, kh, kw = W.shape
    xp_ = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (Wd + 2 * padding - kw) // stride + 1
    out = np.zeros((B, O, Ho, Wo))
    for i in range(Ho):
        for j in range(Wo):
            patch = xp_[:, :, i * stride : i * stride + kh, j * stride : j * stride + kw]
            out[:, :, i, j] = np.einsum("bchw,ochw->bo", patch, W)
    return out


CONV_CASES = [
    # (B, C, H, W, O, k, stride, padding)
    (2, 1, 7, 7, 3, 3, 1, 0),
    (2, 2, 8, 6, 3, 3, 2, 1),
    (3, 1, 9, 9, 2, 5, 2, 2),
    (1, 3, 6, 7, 4, 4, 2, 1),
    (2, 2, 5, 5, 2, 2, 3, 0),
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_matches_naive_loop(case, rng):
    B, C, H, W_, O, k, s, p = case
    x = rng.standard_normal((B, C, H, W_))
    W = rng.standard_normal((O, C, k, k))
    np.testing.assert_allclose(
        ops.conv2d(x, W, s, p), naive_conv(x, W, s, p), rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_vjp(case, rng):
    B, C, H, W_, O, k, s, p = case
    x, W = rng.standard_normal((B, C, H, W_)), rng.standard_normal((O, C, k, k))
    check_vjp(lambda x, W: ops.conv2d(x, W, s, p), [x, W], rng)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv2d_T_is_the_adjoint_and_its_vjp(case, rng):
    B, C, H, W_, O, k, s, p = case
    x, W = rng.standard_normal((B, C, H, W_)), rng.standard_normal((O, C, k, k))
    y = ops.conv2d(x, W, s, p)
    u = rng.standard_normal(y.shape)
    xt = ops.conv2d_T(u, W, s, p, in_hw=(H, W_))
    assert np.isclose(np.sum(y * u), np.sum(x * xt), rtol=1e-10)
    check_vjp(lambda u, W: ops.conv2d_T(u, W, s, p, in_hw=(H, W_)), [u, W], rng)


@pytest.mark.parametrize("shared", [True, False])
def test_population_conv_equals_member_convs(shared, rng):
    P, B, C, H, O, k, s, p = 3, 2, 2, 8, 4, 3, 2, 1
    Ws = rng.standard_normal((P, O, C, k, k))
    x = rng.standard_normal((1 if shared else P, B, C, H, H))
    out = ops.conv2d(x, Ws, s, p)
    assert out.shape[:2] == (P, B)
    for i in range(P):
        np.testing.assert_allclose(
            out[i], naive_conv(x[0 if shared else i], Ws[i], s, p), rtol=1e-12
        )
    check_vjp(lambda x, W: ops.conv2d(x, W, s, p), [x, Ws], rng)
    u = rng.standard_normal(out.shape)
    back = ops.conv2d_T(u, Ws, s, p, in_hw=(H, H))
    for i in range(P):
        np.testing.assert_allclose(
            back[i], ops.conv2d_T(u[i], Ws[i], s, p, in_hw=(H, H)), rtol=1e-12
        )
    u1 = rng.standard_normal((1 if shared else P, *out.shape[1:]))
    check_vjp(lambda u, W: ops.conv2d_T(u, W, s, p, in_hw=(H, H)), [u1, Ws], rng)


def test_conv_with_extra_batch_axes(rng):
    """Back-substitution carries (B, S) batch axes: conv folds them like one batch."""
    A = rng.standard_normal((2, 3, 4, 5, 5))
    W = rng.standard_normal((4, 2, 3, 3))
    out = ops.conv2d_T(A, W, 1, 1, in_hw=(5, 5))
    ref = ops.conv2d_T(A.reshape(6, 4, 5, 5), W, 1, 1, in_hw=(5, 5)).reshape(2, 3, 2, 5, 5)
    np.testing.assert_allclose(out, ref, rtol=1e-12)


def test_untaped_calls_return_bare_arrays(rng):
    a = rng.standard_normal((2, 3))
    assert isinstance(ops.relu(a), np.ndarray)
    assert isinstance(ops.matmul(a, a.T), np.ndarray)


def test_tape_shares_subexpressions_and_operators(rng):
    a = rng.standard_normal((3,))

    def f(x):
        y = x * x  # used twice: gradients must add up
        return ops.sum(y + y * 3.0 - x / 2.0)

    val, (g,) = value_and_grad(f, a)
    np.testing.assert_allclose(val, np.sum(4 * a * a - a / 2))
    np.testing.assert_allclose(g, 8 * a - 0.5)
    # an array on the left of an operator must defer to the Tensor
    t = Tensor(a, requires_grad=True)
    out = ops.sum(np.ones(3) * t + np.ones(3) - t)
    out.backward()
    np.testing.assert_allclose(t.grad, np.zeros(3))


def test_bad_shapes_raise_clear_errors(rng):
    with pytest.raises(ValueError, match="expects input"):
        ops.conv2d(rng.standard_normal((2, 3, 5, 5)), rng.standard_normal((4, 2, 3, 3)))
    with pytest.raises(ValueError, match="2-D or more"):
        ops.matmul(rng.standard_normal(3), rng.standard_normal((3, 2)))


def _composite(x, y):
    """A small function with shared subexpressions and a broadcast, for recompute tests."""
    z = ops.mul(ops.exp(x), y)
    return ops.sum(ops.add(z, ops.mul(z, x)), axis=0)


def test_recompute_vjp(rng):
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((4,))
    check_vjp(lambda a, b: ops.recompute(_composite, a, b), [x, y], rng)

    # nested: an outer recompute whose function itself recomputes
    def nested(a, b):
        return ops.recompute(lambda p, q: ops.recompute(_composite, p, q), a, b)

    check_vjp(nested, [x, y], rng)


def test_recompute_matches_the_taped_function(rng):
    x, y = rng.standard_normal((3, 4)), rng.standard_normal((4,))
    direct_val, direct_grads = value_and_grad(lambda a, b: ops.sum(_composite(a, b)), x, y)
    val, grads = value_and_grad(lambda a, b: ops.sum(ops.recompute(_composite, a, b)), x, y)
    np.testing.assert_allclose(val, direct_val, rtol=1e-14)
    for g, d in zip(grads, direct_grads):
        np.testing.assert_allclose(g, d, rtol=1e-14)
    # constants pass through; untaped calls return bare arrays; an unused Tensor gets zeros
    assert isinstance(ops.recompute(_composite, x, y), np.ndarray)

    def first_only(a, b):
        return ops.sum(ops.recompute(lambda p, q: ops.exp(p), a, b))

    _, (gx, gy) = value_and_grad(first_only, x, y)
    np.testing.assert_allclose(gx, np.exp(x))
    np.testing.assert_array_equal(gy, np.zeros_like(y))


# ---------------------------------------------------------------- fast kernels
#
# The convolutions run in a batch-last memory layout, in cache-sized blocks, and
# conv2d_T picks between col2im and a phase (sub-pixel) decomposition; matmul
# folds and reorders its GEMMs. Each fast path is checked against the plain one.


def naive_windows(x, k, stride, padding):
    """Compute im2col by definition on a zero-padded array: (..., H, W) -> (..., k, k, Ho, Wo)."""
    pad = [(0, 0)] * (x.ndim - 2) + [(padding, padding)] * 2
    xp_ = np.pad(x, pad)
    Ho = (x.shape[-2] + 2 * padding - k) // stride + 1
    Wo = (x.shape[-1] + 2 * padding - k) // stride + 1
    out = np.zeros((*x.shape[:-2], k, k, Ho, Wo), dtype=x.dtype)
    for i in range(k):
        for j in range(k):
            out[..., i, j, :, :] = xp_[
                ..., i : i + stride * (Ho - 1) + 1 : stride, j : j + stride * (Wo - 1) + 1 : stride
            ]
    return out


def random_geometry(rng, max_hw=11):
    """A random (k, stride, padding, H, W) with at least one window."""
    k, s, p = int(rng.integers(1, 6)), int(rng.integers(1, 4)), int(rng.integers(0, 3))
    H = int(rng.integers(max(1, k - 2 * p), max_hw + 1))
    W = int(rng.integers(max(1, k - 2 * p), max_hw + 1))
    return k, s, p, H, W


def test_windows_view_of_the_gpu_path_matches_the_definition(rng):
    # CuPy's windows are one copy of this strided view; it is plain array code, so NumPy checks it
    from gls_np.backend import _windows_view

    for _ in range(40):
        k, s, p, H, W = random_geometry(rng)
        x = rng.standard_normal((2, 3, H, W))
        ref = naive_windows(x, k, s, p)
        Ho = ref.shape[-2]
        np.testing.assert_array_equal(_windows_view(x, k, k, s, p, 0, (0, Ho)), ref)
        xl = np.ascontiguousarray(np.moveaxis(x, 0, -1))  # batch last, trailing=1
        r0 = int(rng.integers(0, Ho))
        r1 = int(rng.integers(r0 + 1, Ho + 1))
        band = _windows_view(xl, k, k, s, p, 1, (r0, r1))
        np.testing.assert_array_equal(np.moveaxis(band, -1, 0), ref[..., r0:r1, :])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_windows_bands_and_trailing_axes_match_the_definition(dtype, xp, rng):
    from gls_np.backend import to_host, unwindows, windows

    for _ in range(40):
        k, s, p, H, W = random_geometry(rng)
        x = rng.standard_normal((2, 3, H, W)).astype(dtype)
        ref = naive_windows(x, k, s, p)
        np.testing.assert_array_equal(to_host(windows(xp.asarray(x), k, k, s, p)), ref)
        # batch last: (C, H, W, N) -> (C, k, k, Ho, Wo, N), built a band of rows at a time
        xl = xp.asarray(np.ascontiguousarray(np.moveaxis(x, 0, -1)))
        Ho = ref.shape[-2]
        cut = int(rng.integers(0, Ho + 1))
        cols = rng.standard_normal(ref.shape).astype(dtype)
        back = xp.zeros((3, H, W, 2), dtype=dtype)
        for r0, r1 in [(0, cut), (cut, Ho)]:
            if r1 > r0:
                band = xp.full((3, k, k, r1 - r0, ref.shape[-1], 2), np.nan, dtype=dtype)
                windows(xl, k, k, s, p, trailing=1, rows=(r0, r1), out=band)
                np.testing.assert_array_equal(np.moveaxis(to_host(band), -1, 0), ref[..., r0:r1, :])
                part = xp.asarray(np.ascontiguousarray(np.moveaxis(cols[..., r0:r1, :], 0, -1)))
                unwindows(part, H, W, s, p, trailing=1, rows=(r0, r1), out=back)
        # the adjoint, whole and in bands: <windows(x), cols> = <x, unwindows(cols)>
        whole = to_host(unwindows(xp.asarray(cols), H, W, s, p))
        np.testing.assert_allclose(np.moveaxis(to_host(back), -1, 0), whole, rtol=1e-5, atol=1e-5)
        lhs, rhs = np.sum(ref * cols, dtype=np.float64), np.sum(x * whole, dtype=np.float64)
        assert np.isclose(lhs, rhs, rtol=1e-4 if dtype == np.float32 else 1e-12)


def _transposed_inputs(rng, mode, k, s, p, H, W, O=2, C=3, P=3):
    """(yl, W, reduce) for ops._transposed: no population, per member, shared y, or summed."""
    Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
    if mode == "plain":
        return rng.standard_normal((O, Ho, Wo, 4)), rng.standard_normal((O, C, k, k)), False
    Ws = rng.standard_normal((P, O, C, k, k))
    if mode == "shared":
        return rng.standard_normal((O, Ho, Wo, 4)), Ws, False
    return rng.standard_normal((P, O, Ho, Wo, 4)), Ws, mode == "reduce"


@pytest.mark.parametrize("mode", ["plain", "member", "shared", "reduce"])
def test_transposed_conv_phases_equal_col2im(mode, rng):
    for _ in range(25):
        k, s, p, H, W = random_geometry(rng)
        yl, Wt, reduce = _transposed_inputs(rng, mode, k, s, p, H, W)
        a = ops._transposed(yl, Wt, H, W, s, p, reduce=reduce, method="col2im")
        b = ops._transposed(yl, Wt, H, W, s, p, reduce=reduce, method="phases")
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv_blocks_of_one_row_give_the_same_values_and_gradients(case, rng, monkeypatch):
    B, C, H, W_, O, k, s, p = case
    x, W = rng.standard_normal((B, C, H, W_)), rng.standard_normal((O, C, k, k))
    u = rng.standard_normal(ops.conv2d(x, W, s, p).shape)
    whole = ops.conv2d(x, W, s, p), ops.conv2d_T(u, W, s, p, in_hw=(H, W_))
    monkeypatch.setattr(ops, "_BLOCK_BYTES", 1)
    monkeypatch.setattr(ops, "_KEEP_COLS_BYTES", 0)  # the weight gradient remakes them too
    np.testing.assert_allclose(ops.conv2d(x, W, s, p), whole[0], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(ops.conv2d_T(u, W, s, p, in_hw=(H, W_)), whole[1], rtol=1e-12)
    check_vjp(lambda x, W: ops.conv2d(x, W, s, p), [x, W], rng)
    check_vjp(lambda u, W: ops.conv2d_T(u, W, s, p, in_hw=(H, W_)), [u, W], rng)


@pytest.mark.parametrize("shared", [True, False])
def test_population_conv_in_blocks_of_one_member(shared, rng, monkeypatch):
    monkeypatch.setattr(ops, "_BLOCK_BYTES", 1)
    monkeypatch.setattr(ops, "_KEEP_COLS_BYTES", 0)
    test_population_conv_equals_member_convs(shared, rng)


@pytest.mark.parametrize("lead", ["none", "shared", "member"])
def test_kept_columns_give_the_remade_columns_weight_gradient(lead, rng, monkeypatch):
    P, B, C, H, O, k, s, p = 3, 4, 2, 9, 5, 4, 2, 1
    W = rng.standard_normal((O, C, k, k) if lead == "none" else (P, O, C, k, k))
    xs = {"none": (B, C, H, H), "shared": (1, B, C, H, H), "member": (P, B, C, H, H)}[lead]
    x = rng.standard_normal(xs)
    u = rng.standard_normal(ops.conv2d(x, W, s, p).shape)

    def grads():
        xt, Wt = Tensor(x, requires_grad=True), Tensor(W, requires_grad=True)
        out = ops.conv2d(xt, Wt, s, p)
        out.backward(u)
        return out.data, xt.grad, Wt.grad

    kept = grads()
    monkeypatch.setattr(ops, "_KEEP_COLS_BYTES", 0)
    remade = grads()
    for a, b in zip(kept, remade):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


def test_conv_reads_any_memory_layout_and_returns_batch_last(rng):
    x = rng.standard_normal((4, 2, 7, 7))
    W = rng.standard_normal((3, 2, 3, 3))
    ref = naive_conv(x, W, 2, 1)
    batch_last = np.moveaxis(np.ascontiguousarray(np.moveaxis(x, 0, -1)), -1, 0)
    strided = np.pad(x, ((0, 0), (0, 0), (0, 1), (0, 1)))[..., :7, :7]
    for inp in (x, batch_last, strided):
        out = ops.conv2d(inp, W, 2, 1)
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)
        assert out.strides[0] == out.itemsize  # the batch is the unit-stride axis
    # a conv of a conv's output takes its batch-last layout without a copy
    np.testing.assert_allclose(
        ops.conv2d(out, rng.standard_normal((2, 3, 2, 2)), 1, 0).shape, (4, 2, 3, 3)
    )


@pytest.mark.parametrize(
    "sa,sb",
    [
        ((5, 6, 4), (4, 3)),
        ((5, 6, 4), (1, 4, 3)),
        ((2, 5, 6, 4), (2, 1, 4, 3)),
        ((5, 6, 1), (5, 1, 3)),
    ],
)
@pytest.mark.parametrize("batch_last", [False, True])
def test_matmul_fast_paths_match_numpy(sa, sb, batch_last, rng):
    a, b = rng.standard_normal(sa), rng.standard_normal(sb)
    if batch_last:
        # rows with unit stride, as a Flatten of a convolution's output has them: the
        # features outermost for a weight b (all rows fold into one GEMM), else per matrix
        if np.prod(sb[:-2]) == 1:
            a = np.moveaxis(np.ascontiguousarray(np.moveaxis(a, -1, 0)), 0, -1)
        else:
            a = np.swapaxes(np.ascontiguousarray(np.swapaxes(a, -1, -2)), -1, -2)
    out = ops.matmul(a, b)
    np.testing.assert_allclose(out, np.matmul(a, b), rtol=1e-12, atol=1e-12)
    if batch_last and sa[-2] > 1:
        assert out.strides[-2] == out.itemsize  # the result keeps the rows' order
    check_vjp(ops.matmul, [a, b], rng)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_is_where_bit_for_bit(dtype, rng):
    special = np.array([np.nan, -np.nan, 0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45, 3.0, -2.0])
    a = rng.standard_normal(4099).astype(dtype)
    a[rng.integers(0, a.size, 1500)] = rng.choice(special.astype(dtype), 1500)
    bits = np.uint32 if dtype == np.float32 else np.uint64
    for view in (a, a[1:], a[::3]):
        ref = np.where(view > 0, view, 0).astype(dtype)
        np.testing.assert_array_equal(ops.relu(view).view(bits), ref.view(bits))


def test_contiguous_copy_of_a_transposed_array(rng):
    from gls_np.backend import contiguous, tune_allocator

    a = rng.standard_normal((300, 1000)).astype(np.float32)
    for view in (a.T, a[:, ::2].T, a):
        out = contiguous(view)
        assert out.flags.c_contiguous
        np.testing.assert_array_equal(out, view)
    assert isinstance(tune_allocator(), bool)


# ---------------------------------------------------------------- relu_backstep


def _backstep_reference(A, s_pos, s_neg, i_pos, i_neg, n):
    """The unfused products and sums that relu_backstep replaces."""
    pos, neg = np.maximum(A, 0), np.minimum(A, 0)
    axes = tuple(range(-n, 0))
    shift = (pos * i_pos).sum(axis=axes) + (neg * i_neg).sum(axis=axes)
    return pos * s_pos + neg * s_neg, shift


@pytest.mark.parametrize("batch_last", [False, True])
@pytest.mark.parametrize("shared", [False, True])
def test_relu_backstep_values_and_vjp(batch_last, shared, rng, monkeypatch):
    # rows first (S, B, C, H, W) with per-sample fields (1, B, C, H, W); small blocks so
    # that the blocked kernel loops over several prefixes and chunks
    monkeypatch.setattr(ops, "_SIGN_BLOCK_BYTES", 256)
    S, B, shape = 3, 4, (2, 3, 5)
    A = away_from_zero(rng, (S, 1 if shared else B, *shape))
    if batch_last:
        A = np.ascontiguousarray(np.moveaxis(A, (0, 1), (-2, -1)))
        A = np.moveaxis(A, (-2, -1), (0, 1))
    fields = [rng.standard_normal((1, B, *shape)) for _ in range(4)]
    out, shift = ops.relu_backstep(A, *fields, 3)
    ref_out, ref_shift = _backstep_reference(A, *fields, 3)
    np.testing.assert_allclose(out, ref_out, rtol=1e-12)
    np.testing.assert_allclose(shift, ref_shift, rtol=1e-12)
    # both outputs at once: <u, out> + <w, shift> as one scalar function of every input
    u = rng.standard_normal(out.shape)
    w = rng.standard_normal(shift.shape)

    def f(A, s_pos, s_neg, i_pos, i_neg):
        o, sh = ops.relu_backstep(A, s_pos, s_neg, i_pos, i_neg, 3)
        return ops.add(ops.sum(ops.mul(o, u)), ops.sum(ops.mul(sh, w)))

    check_vjp(f, [A, *fields], rng)


def test_relu_backstep_shift_only_and_missing_intercepts(rng, monkeypatch):
    monkeypatch.setattr(ops, "_SIGN_BLOCK_BYTES", 512)
    A = away_from_zero(rng, (3, 4, 6, 5))
    lo, hi = rng.standard_normal((1, 4, 6, 5)), rng.standard_normal((1, 4, 6, 5))
    out, shift = ops.relu_backstep(A, None, None, lo, hi, 2)
    assert out is None
    np.testing.assert_allclose(shift, _backstep_reference(A, 0, 0, lo, hi, 2)[1], rtol=1e-12)
    check_vjp(lambda A, lo, hi: ops.relu_backstep(A, None, None, lo, hi, 2)[1], [A, lo, hi], rng)
    s = rng.standard_normal((4, 6, 5))
    check_vjp(lambda A, i: ops.relu_backstep(A, s, s * 2, None, i, 2)[1], [A, hi], rng)
    check_vjp(lambda A, s: ops.relu_backstep(A, s, -s, None, None, 2)[0], [A, s], rng)


def test_relu_backstep_whole_array_path_matches_the_blocks(rng):
    # the CuPy path (_backstep_whole and its VJP) run on NumPy arrays against the blocked one
    A = away_from_zero(rng, (3, 4, 2, 5))
    s_pos, s_neg, i_neg = (rng.standard_normal((1, 4, 2, 5)) for _ in range(3))
    g = rng.standard_normal(A.shape)
    whole = ops._backstep_whole(np, A, s_pos, s_neg, None, i_neg, 2, A.shape)
    blocks = ops._backstep_blocks(A, s_pos, s_neg, None, i_neg, 2, A.shape)
    for w, b in zip(whole, blocks):
        np.testing.assert_allclose(w, b, rtol=1e-12)
    wanted = [True, True, True]
    whole = ops._backstep_vjp_whole(A, g, s_pos, s_neg, wanted, A.shape)
    blocks = ops._backstep_vjp_blocks(A, g, s_pos, s_neg, wanted, A.shape)
    for w, b in zip(whole, blocks):
        np.testing.assert_allclose(w, b, rtol=1e-12)


# ---------------------------------------------------------------- patch_windows


def _windows_reference(m, p, S, off, rows_hw):
    """Every window pixel by pixel from a zero-padded map (the definition)."""
    Hk, Wk = rows_hw
    H, W = m.shape[-2:]
    pad = p + S * max(Hk, Wk) + abs(off)
    big = np.pad(m, [(0, 0)] * (m.ndim - 2) + [(pad, pad), (pad, pad)])
    out = np.zeros((*m.shape[:-3], 1, Hk, Wk, m.shape[-3], p, p))
    for i in range(Hk):
        for j in range(Wk):
            r, c = pad + i * S + off, pad + j * S + off
            out[..., 0, i, j, :, :, :] = big[..., r : r + p, c : c + p]
    return out


@pytest.mark.parametrize("lead", [(), (2,)])
def test_patch_windows_match_the_definition(lead, rng):
    for _ in range(60):
        S, p, off = int(rng.integers(1, 4)), int(rng.integers(1, 8)), int(rng.integers(-4, 3))
        H, W = (int(n) for n in rng.integers(2, 9, 2))
        rows_hw = tuple(int(n) for n in rng.integers(1, 6, 2))
        m = rng.standard_normal((*lead, 3, 2, H, W))
        out = ops.patch_windows(m, p, S, off, rows_hw)
        assert out.flags.c_contiguous
        ref = _windows_reference(m, p, S, off, rows_hw)
        np.testing.assert_allclose(out, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "p,S,off,rows_hw",
    [
        (3, 1, -1, (5, 4)),
        (5, 2, -2, (3, 3)),
        (2, 3, 1, (2, 2)),
        (4, 2, 0, (4, 3)),
        (1, 1, 0, (5, 4)),
    ],
)
def test_patch_windows_vjp(p, S, off, rows_hw, rng):
    m = rng.standard_normal((2, 3, 2, 5, 4))
    check_vjp(lambda m: ops.patch_windows(m, p, S, off, rows_hw), [m], rng)


@pytest.mark.parametrize("lead", [(), (2,)])
def test_patch_windows_of_sites_are_those_windows(lead, rng):
    # sites[r] = (b Hk + i) Wk + j: the window of sample b at row position (i, j)
    B, rows_hw = 3, (4, 3)
    m = rng.standard_normal((*lead, B, 2, 7, 6))
    full = ops.patch_windows(m, 3, 2, -1, rows_hw)
    sites = np.array([0, 5, 13, 14, 35])
    got = ops.patch_windows(m, 3, 2, -1, rows_hw, sites)
    b, ij = np.divmod(sites, 12)
    want = full[..., b, 0, ij // 3, ij % 3, :, :, :]
    np.testing.assert_array_equal(got, want.reshape(*lead, 5, 1, 1, 1, 2, 3, 3))
    check_vjp(lambda m: ops.patch_windows(m, 3, 2, -1, rows_hw, sites), [m], rng)
