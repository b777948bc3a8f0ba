"""The differentiable primitives: each forward next to its hand-derived VJP.

Every function accepts bare arrays or ``Tensor``s and records on the tape only
when an input is a Tensor (``tensor.record``). A VJP maps the output cotangent
``g`` to the input's cotangent; its derivation is the comment beside it
(``<g, J dx> = <J^T g, dx>``). ``docs/autodiff.md`` gives the long form.

Population axis. Arrays are ``(*lead, *batch, ...)`` with ``lead`` either
``()`` or ``(P,)``. ``matmul`` and the elementwise ops broadcast it like NumPy;
``conv2d`` / ``conv2d_T`` take weights ``(*lead, O, C, kh, kw)`` and an input
whose first axis is the population when the weights have one -- of size P, or
1 for an input shared by all members (then the P weight tensors form one
stacked GEMM).
"""

from __future__ import annotations

import math

from .backend import contiguous, get_xp, np, patch_view, scatter_add, unwindows, windows
from .tensor import Tensor, data, needs_grad, record


def unbroadcast(g, shape):
    """Sum ``g`` down to ``shape``: the VJP of NumPy broadcasting.

    Leading axes that broadcasting added are summed away, axes of size 1 in
    ``shape`` are summed with keepdims.
    """
    shape = tuple(shape)
    if g.shape == shape:
        return g
    extra = g.ndim - len(shape)
    if extra > 0:
        g = g.sum(axis=tuple(range(extra)))
    axes = tuple(i for i, n in enumerate(shape) if n == 1 and g.shape[i] != 1)
    if axes:
        g = g.sum(axis=axes, keepdims=True)
    return g


def _shape(a):
    return getattr(a, "shape", ())


# ---------------------------------------------------------------- elementwise


def add(a, b):
    """a + b with broadcasting."""
    ad, bd = data(a), data(b)
    out = ad + bd
    # d(a+b) = da + db
    return record(
        out,
        (a, lambda g: unbroadcast(g, _shape(ad))),
        (b, lambda g: unbroadcast(g, _shape(bd))),
    )


def sub(a, b):
    """a - b with broadcasting."""
    ad, bd = data(a), data(b)
    out = ad - bd
    # d(a-b) = da - db
    return record(
        out,
        (a, lambda g: unbroadcast(g, _shape(ad))),
        (b, lambda g: unbroadcast(-g, _shape(bd))),
    )


def neg(a):
    """-a."""
    # d(-a) = -da
    return record(-data(a), (a, lambda g: -g))


def mul(a, b):
    """a * b (elementwise) with broadcasting."""
    ad, bd = data(a), data(b)
    out = ad * bd
    # d(ab) = b da + a db
    return record(
        out,
        (a, lambda g: unbroadcast(g * bd, _shape(ad))),
        (b, lambda g: unbroadcast(g * ad, _shape(bd))),
    )


def div(a, b):
    """a / b (elementwise) with broadcasting."""
    ad, bd = data(a), data(b)
    out = ad / bd
    # d(a/b) = da / b - a db / b^2
    return record(
        out,
        (a, lambda g: unbroadcast(g / bd, _shape(ad))),
        (b, lambda g: unbroadcast(-g * out / bd, _shape(bd))),
    )


def abs(a):  # noqa: A001 - the math name
    """|a|; NOTE: the subgradient at 0 is taken as 0."""
    ad = data(a)
    xp = get_xp(ad)
    # d|a| = sign(a) da
    return record(xp.abs(ad), (a, lambda g: g * xp.sign(ad)))


def relu(a):
    """max(a, 0); NOTE: the gradient at 0 is taken as 0."""
    ad = data(a)
    # fmax(a, 0) + 0 equals where(a > 0, a, 0) bit for bit (NaN -> 0, -0 -> +0) but has
    # no per-element branch: where() on random signs is ~10x slower on a CPU
    out = get_xp(ad).fmax(ad, 0)
    out += 0
    # d relu(a) = 1[a > 0] da
    return record(out, (a, lambda g: g * (ad > 0)))


def exp(a):
    """e^a."""
    ad = data(a)
    out = get_xp(ad).exp(ad)
    # d e^a = e^a da
    return record(out, (a, lambda g: g * out))


def log(a):
    """ln a."""
    ad = data(a)
    # d ln a = da / a
    return record(get_xp(ad).log(ad), (a, lambda g: g / ad))


def maximum(a, b):
    """max(a, b) elementwise; NOTE: ties send the gradient to ``a``."""
    ad, bd = data(a), data(b)
    xp = get_xp(ad, bd)
    pick_a = ad >= bd
    out = xp.where(pick_a, ad, bd)
    # d max(a, b) = 1[a >= b] da + 1[a < b] db
    return record(
        out,
        (a, lambda g: unbroadcast(g * pick_a, _shape(ad))),
        (b, lambda g: unbroadcast(g * ~pick_a, _shape(bd))),
    )


def minimum(a, b):
    """min(a, b) elementwise; NOTE: ties send the gradient to ``a``."""
    ad, bd = data(a), data(b)
    xp = get_xp(ad, bd)
    pick_a = ad <= bd
    out = xp.where(pick_a, ad, bd)
    # d min(a, b) = 1[a <= b] da + 1[a > b] db
    return record(
        out,
        (a, lambda g: unbroadcast(g * pick_a, _shape(ad))),
        (b, lambda g: unbroadcast(g * ~pick_a, _shape(bd))),
    )


def where(cond, a, b):
    """cond ? a : b elementwise; ``cond`` is a constant boolean array."""
    cond = data(cond)
    ad, bd = data(a), data(b)
    xp = get_xp(cond, ad, bd)
    out = xp.where(cond, ad, bd)
    # d where(c, a, b) = c da + (1 - c) db
    return record(
        out,
        (a, lambda g: unbroadcast(xp.where(cond, g, 0), _shape(ad))),
        (b, lambda g: unbroadcast(xp.where(cond, 0, g), _shape(bd))),
    )


def clip(a, lo, hi):
    """Clamp ``a`` into [lo, hi] (constant bounds); gradient passes where lo <= a <= hi."""
    ad = data(a)
    lo, hi = data(lo), data(hi)
    xp = get_xp(ad, lo, hi)
    inside = (ad >= lo) & (ad <= hi)
    # d clip(a) = 1[lo <= a <= hi] da
    return record(xp.clip(ad, lo, hi), (a, lambda g: g * inside))


# ---------------------------------------------------------------- shapes


def reshape(a, shape):
    """a viewed with a new shape."""
    ad = data(a)
    # reshape is a permutation-free relabelling: its adjoint reshapes back
    return record(ad.reshape(shape), (a, lambda g: g.reshape(ad.shape)))


def transpose(a, axes=None):
    """Permute axes (reverse them when ``axes`` is None)."""
    ad = data(a)
    axes = tuple(range(ad.ndim))[::-1] if axes is None else tuple(ax % ad.ndim for ax in axes)
    inverse = tuple(sorted(range(len(axes)), key=axes.__getitem__))
    # a permutation's adjoint is the inverse permutation
    return record(ad.transpose(axes), (a, lambda g: g.transpose(inverse)))


def swapaxes(a, i, j):
    """Exchange two axes."""
    ad = data(a)
    # a swap is its own inverse
    return record(ad.swapaxes(i, j), (a, lambda g: g.swapaxes(i, j)))


def broadcast_to(a, shape):
    """a broadcast to ``shape`` (materialised)."""
    ad = data(a)
    xp = get_xp(ad)
    # broadcasting copies values; its adjoint sums the copies
    return record(
        xp.ascontiguousarray(xp.broadcast_to(ad, shape)),
        (a, lambda g: unbroadcast(g, ad.shape)),
    )


def getitem(a, idx):
    """a[idx] for basic indices (ints, slices, None, Ellipsis)."""
    ad = data(a)
    xp = get_xp(ad)
    items = idx if isinstance(idx, tuple) else (idx,)
    if any(hasattr(i, "shape") or isinstance(i, list) for i in items):
        raise ValueError("getitem supports basic indices only; use gather for index arrays")

    def vjp(g):
        # selection's adjoint scatters into zeros (basic slices never repeat)
        dx = xp.zeros(ad.shape, dtype=g.dtype)
        dx[idx] = g
        return dx

    return record(ad[idx], (a, vjp))


def concatenate(arrays, axis=0):
    """Join arrays along ``axis``."""
    ds = [data(a) for a in arrays]
    xp = get_xp(*ds)
    out = xp.concatenate(ds, axis=axis)
    ax = axis % out.ndim
    bounds = [0]
    for d in ds:
        bounds.append(bounds[-1] + d.shape[ax])

    def piece(k):
        sl = (slice(None),) * ax + (slice(bounds[k], bounds[k + 1]),)
        # concatenation's adjoint cuts the cotangent back into pieces
        return lambda g: g[sl]

    return record(out, *[(a, piece(k)) for k, a in enumerate(arrays)])


def pad(a, width):
    """Zero-pad ``a``; ``width`` is NumPy's ((before, after), ...) per axis."""
    ad = data(a)
    xp = get_xp(ad)
    sl = tuple(slice(lo, lo + n) for (lo, _), n in zip(width, ad.shape))
    # padding's adjoint crops the padded border away
    return record(xp.pad(ad, width), (a, lambda g: g[sl]))


# ---------------------------------------------------------------- reductions


def _expand_reduced(g, shape, axis, keepdims):
    xp = get_xp(g)
    if axis is None:
        axes = tuple(range(len(shape)))
    else:
        axes = tuple(ax % len(shape) for ax in (axis if isinstance(axis, tuple) else (axis,)))
    if not keepdims:
        for ax in sorted(axes):
            g = xp.expand_dims(g, ax)
    return g


def sum(a, axis=None, keepdims=False):  # noqa: A001 - the math name
    """Sum over ``axis`` (all axes when None)."""
    ad = data(a)
    xp = get_xp(ad)
    out = ad.sum(axis=axis, keepdims=keepdims)

    def vjp(g):
        # d sum(a) = sum(da): every summand receives the full cotangent
        g = _expand_reduced(xp.asarray(g), ad.shape, axis, keepdims)
        return xp.ascontiguousarray(xp.broadcast_to(g, ad.shape))

    return record(out, (a, vjp))


def mean(a, axis=None, keepdims=False):
    """Mean over ``axis`` (all axes when None)."""
    ad = data(a)
    axes = range(ad.ndim) if axis is None else (axis if isinstance(axis, tuple) else (axis,))
    n = math.prod(ad.shape[ax] for ax in axes)
    return mul(sum(a, axis=axis, keepdims=keepdims), 1.0 / n)


def logsumexp(a, axis=-1, keepdims=False):
    """log(sum(exp(a))) over ``axis``, stabilised by the (constant) max."""
    ad = data(a)
    xp = get_xp(ad)
    m = ad.max(axis=axis, keepdims=True)
    e = xp.exp(ad - m)
    s = e.sum(axis=axis, keepdims=True)
    out = m + xp.log(s)
    soft = e / s
    if not keepdims:
        out = out.squeeze(axis)

    def vjp(g):
        # d lse(a) = softmax(a) . da
        g = g if keepdims else xp.expand_dims(g, axis)
        return g * soft

    return record(out, (a, vjp))


def gather(a, idx):
    """a[..., idx] per row: picks one entry of the last axis for each leading index.

    Shapes: a (..., K), idx (...) integer -> (...).
    """
    ad = data(a)
    idx = data(idx)
    xp = get_xp(ad, idx)
    out = xp.take_along_axis(ad, idx[..., None], axis=-1)[..., 0]
    onehot = xp.arange(ad.shape[-1]) == idx[..., None]
    # d a[i] = e_i . da, so the cotangent lands on the picked entry (one-hot)
    return record(out, (a, lambda g: unbroadcast(g[..., None] * onehot, ad.shape)))


def take(a, idx, axis: int):
    """The entries ``idx`` of ``a`` along ``axis``, repeats allowed.

    Shapes: a (..., n, ...), idx (m,) integer -> (..., m, ...).
    """
    ad = data(a)
    xp = get_xp(ad)
    axis %= ad.ndim
    out = xp.take(ad, idx, axis=axis)

    def vjp(g):
        # <g, a[idx]> = sum_r <g_r, a_idx[r]>: each picked entry collects the rows that read it
        rows = scatter_add(xp.moveaxis(g, axis, 0), idx, ad.shape[axis])
        return xp.moveaxis(rows, 0, axis)

    return record(out, (a, vjp))


def put(a, idx, v, axis: int):
    """``a`` with its entries ``idx`` along ``axis`` replaced by ``v`` (distinct indices).

    Shapes: a (..., n, ...), idx (m,), v (..., m, ...) -> like a.
    """
    ad, vd = data(a), data(v)
    axis %= ad.ndim
    spot = (slice(None),) * axis + (idx,)
    out = ad.copy()
    out[spot] = vd

    def vjp_a(g):
        # the replaced entries no longer depend on a
        ga = g.copy()
        ga[spot] = 0
        return ga

    return record(out, (a, vjp_a), (v, lambda g: unbroadcast(g[spot], vd.shape)))


# ---------------------------------------------------------------- linear algebra


def _shared(a):
    """Tell whether ``a`` has no batch axes beyond size 1 (one matrix for every entry)."""
    return math.prod(a.shape[:-2]) == 1


def _gemm_ready(a):
    """Return ``a``, or a contiguous copy when neither matrix axis has unit stride.

    BLAS reads a matrix row- or column-major; NumPy falls back to a slow loop
    for anything else (e.g. a batch-last column vector), so one copy pays off.
    """
    if a.itemsize in a.strides[-2:]:
        return a
    return get_xp(a).ascontiguousarray(a)


def _rows_major(a):
    """Tell whether the rows of ``a`` (axis -2) have unit stride: a batch-last activation."""
    return a.strides[-2] == a.itemsize and a.shape[-2] > 1


def _gemm(a, b, rows_major):
    """Multiply a (M, k) @ b (k, m) in one GEMM, with unit stride along M if ``rows_major``.

    That is the batch-last order of the convolutions: computed as (b^T a^T)^T, the
    same GEMM for BLAS, the result goes to (or comes back from) a convolution
    without a transposing copy.
    """
    if rows_major:
        return (b.T @ a.T).T
    return _gemm_ready(a) @ b


def _product(a, b):
    """Multiply batched a @ b, an inner dimension of 1 by broadcasting.

    That is an outer product (e.g. the cotangent of a per-sample matrix-vector
    product): one broadcast multiply replaces a GEMM call per batch entry, with the
    same single product in every entry.
    """
    if a.shape[-1] == 1:
        xp = get_xp(a, b)
        return xp.ascontiguousarray(a) * xp.ascontiguousarray(b)
    return get_xp(a, b).matmul(_gemm_ready(a), _gemm_ready(b))


def matmul(a, b):
    """a @ b with NumPy's batch broadcasting (both at least 2-D).

    Shapes: a (..., n, k), b (..., k, m) -> (..., n, m).
    A ``b`` without batch axes (a weight) is folded into one GEMM over all
    leading axes of ``a``. The result keeps the memory order of ``a``'s rows
    (unit stride along them for batch-last activations, see the convolutions).
    """
    ad, bd = data(a), data(b)
    xp = get_xp(ad, bd)
    if ad.ndim < 2 or bd.ndim < 2:
        raise ValueError(f"matmul needs 2-D or more, got {ad.shape} @ {bd.shape}")
    batch = np.broadcast_shapes(ad.shape[:-2], bd.shape[:-2])
    fold_b = _shared(bd) and not _shared(ad)
    if fold_b:
        b2 = bd.reshape(bd.shape[-2:])
        a2 = ad.reshape(-1, ad.shape[-1])
        out = _gemm(a2, b2, _rows_major(a2)).reshape(*batch, ad.shape[-2], -1)
    elif _rows_major(ad):
        out = xp.swapaxes(_product(xp.swapaxes(bd, -1, -2), xp.swapaxes(ad, -1, -2)), -1, -2)
    else:
        out = _product(ad, bd)

    def vjp_a(g):
        # d(a b) = da b  =>  da = g b^T
        if _shared(ad) and not _shared(g):
            # shared a: sum over the batch inside one GEMM
            gm = xp.moveaxis(g, -2, 0).reshape(g.shape[-2], -1)
            bm = xp.moveaxis(xp.broadcast_to(bd, (*g.shape[:-2], *bd.shape[-2:])), -2, 0)
            return (gm @ bm.reshape(bd.shape[-2], -1).T).reshape(ad.shape)
        if fold_b:
            # the cotangent takes a's memory order, ready for a convolution's VJP
            da = _gemm(g.reshape(-1, g.shape[-1]), b2.T, _rows_major(a2))
            return da.reshape(ad.shape)
        return unbroadcast(_product(g, xp.swapaxes(bd, -1, -2)), ad.shape)

    def vjp_b(g):
        # d(a b) = a db  =>  db = a^T g
        if fold_b:
            # shared b (a weight): sum over the batch inside one GEMM
            am = xp.broadcast_to(ad, (*g.shape[:-1], ad.shape[-1])).reshape(-1, ad.shape[-1])
            return (am.T @ g.reshape(-1, g.shape[-1])).reshape(bd.shape)
        return unbroadcast(_product(xp.swapaxes(ad, -1, -2), g), bd.shape)

    return record(out, (a, vjp_a), (b, vjp_b))


# ---------------------------------------------------------------- convolution
#
# Layout used inside conv2d / conv2d_T: the batch goes last. An activation
# (*lead, *batch, Ch, h, w) is handled as (*lead, Ch, h, w, N) with N = prod(batch),
# so im2col copies contiguous runs of N values and a convolution is one GEMM
# W (*lead, O, K) @ cols (*lead, K, L*N) with K = C*kh*kw patch entries and
# L = Ho*Wo windows, whose result (*lead, O, Ho, Wo, N) is returned as a
# (*lead, *batch, O, Ho, Wo) view without a transposing copy. Elementwise ops
# keep that memory order, so the next convolution reads it back for free.
#
# Blocking: im2col columns are several times larger than the image, and writing
# them to memory only for the GEMM to read them back is what bounds a convolution
# on a CPU. They are made one block of output rows (and population members) at a
# time, about _BLOCK_BYTES, into one reused buffer that stays in cache between the
# copy and the GEMM; the weight gradients remake them the same way instead of
# keeping them on the tape. A GPU has no such cache to fit and every block costs
# kernel launches (a padding, a copy, a GEMM; col2im's k^2 slice additions), but it
# has tens of GB of memory: there the blocks and the kept columns are as large as
# the GPU_ sizes (not yet tuned on a GPU).

_BLOCK_BYTES = 16 << 20
_KEEP_COLS_BYTES = 64 << 20
_GPU_BLOCK_BYTES = 256 << 20
_GPU_KEEP_COLS_BYTES = 1 << 30


def _block_bytes(xp) -> int:
    """Return the im2col block size on the device of ``xp``."""
    return _BLOCK_BYTES if xp is np else _GPU_BLOCK_BYTES


def _keep_cols_bytes(xp) -> int:
    """Return the most column bytes a convolution keeps for its weight gradient on ``xp``."""
    return _KEEP_COLS_BYTES if xp is np else _GPU_KEEP_COLS_BYTES


def _conv_lead(x, W):
    """Split x's shape into (lead, batch) per the population convention."""
    nl = W.ndim - 4
    if nl not in (0, 1):
        raise ValueError(f"conv weights must be (O, C, kh, kw) or (P, O, C, kh, kw), got {W.shape}")
    if nl == 1:
        if x.ndim < 5 or x.shape[0] not in (1, W.shape[0]):
            raise ValueError(
                f"population conv expects input (P or 1, *batch, C, H, W) for weights {W.shape}, "
                f"got {x.shape}"
            )
        return x.shape[:1], x.shape[1:-3]
    return (), x.shape[:-3]


def _squeeze_shared(a, lead):
    """Drop a population axis of size 1 (a shared input) for the GEMM layout."""
    if lead == (1,):
        return a[0], ()
    return a, lead


def _batch_last(a, lead, batch):
    """(*lead, *batch, Ch, h, w) -> (*lead, Ch, h, w, N) with unit stride along N.

    A view when ``a`` already has the batch-last memory order (a convolution's
    output, or an elementwise function of one); otherwise one transposing copy.
    """
    xp = get_xp(a)
    a = xp.moveaxis(a.reshape(*lead, math.prod(batch), *a.shape[-3:]), len(lead), -1)
    if a.strides[-1] != a.itemsize and a.shape[-1] > 1:
        a = contiguous(a)
    return a


def _from_last(a, lead, batch):
    """(*lead, Ch, h, w, N) -> a (*lead, *batch, Ch, h, w) view."""
    nl, nb = len(lead), len(batch)
    a = a.reshape(*a.shape[:-1], *batch)
    return get_xp(a).moveaxis(a, tuple(range(nl + 3, nl + 3 + nb)), tuple(range(nl, nl + nb)))


def _mm(Wm, cols, reduce=False, out=None):
    """Wm (*wl, R, K) @ cols (*cl, K, M) -> (*lead, R, M) in one GEMM where it can be.

    A 2-D ``cols`` under population weights (a shared input) becomes one stacked
    GEMM (P*R, K) @ (K, M). With ``reduce`` the population is summed away inside
    one GEMM (R, P*K) @ (P*K, M): the cotangent of a shared input. ``out``, where
    given, receives the product (BLAS writes it there: no copy of the result).
    """
    xp = get_xp(Wm, cols)
    if reduce:
        P, R, K = Wm.shape
        Wr = xp.moveaxis(Wm, 0, 1).reshape(R, P * K)
        return xp.matmul(Wr, cols.reshape(P * K, cols.shape[-1]), out=out)
    if cols.ndim == 2 and Wm.ndim == 3:
        P, R, K = Wm.shape
        if out is not None:
            out = out.reshape(P * R, cols.shape[-1])
        return xp.matmul(Wm.reshape(P * R, K), cols, out=out).reshape(P, R, cols.shape[-1])
    return xp.matmul(Wm, cols, out=out)


def _blocks(members, rows, row_bytes, limit):
    """Split (members, output rows) into blocks of about ``limit`` bytes (``_block_bytes``).

    Returns [(p0, p1, r0, r1)]: whole members while they fit, else bands of rows.
    """
    member_bytes = rows * row_bytes
    if member_bytes <= limit:
        step = max(1, limit // max(member_bytes, 1))
        return [(p, min(p + step, members), 0, rows) for p in range(0, members, step)]
    step = max(1, limit // max(row_bytes, 1))
    return [
        (p, p + 1, r, min(r + step, rows)) for p in range(members) for r in range(0, rows, step)
    ]


def _each_block(xl, kh, kw, stride, padding, together, out_rows, use, whole=False):
    """Call ``use(cols, p0, p1, r0, r1)`` on the im2col columns of xl, block by block.

    Shapes: xl (*xlead, C, H, W, N) -> cols (*blead, C*kh*kw, rows*Wo*N) for members
    p0..p1-1 (all of them with ``together``; xl without a population axis is one)
    and output rows r0..r1-1. ``out_rows`` (rows of the product ``use`` makes per column)
    enters the block size. ``cols`` is a reused buffer: ``use`` must not keep it, unless
    ``whole``: then there is one block, every member and row, in a buffer of its own.
    """
    xp = get_xp(xl)
    C, H, W, N = xl.shape[-4:]
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (W + 2 * padding - kw) // stride + 1
    per_member = xl.ndim == 5 and not together
    group = xl.shape[0] if xl.ndim == 5 and together else 1
    row_bytes = (group * C * kh * kw + out_rows) * Wo * N * xl.itemsize
    members = xl.shape[0] if per_member else 1
    blocks = [(0, members, 0, Ho)] if whole else _blocks(members, Ho, row_bytes, _block_bytes(xp))
    p0, p1, r0, r1 = blocks[0]
    buf = xp.empty(max(p1 - p0, group) * C * kh * kw * (r1 - r0) * Wo * N, dtype=xl.dtype)
    for p0, p1, r0, r1 in blocks:
        xb = xl[p0:p1] if per_member else xl
        shape = (*xb.shape[:-4], C, kh, kw, r1 - r0, Wo, N)
        cols = buf[: math.prod(shape)].reshape(shape)
        windows(xb, kh, kw, stride, padding, 1, rows=(r0, r1), out=cols)
        use(cols.reshape(*shape[:-6], C * kh * kw, -1), p0, p1, r0, r1)


def _band(a, p0, p1, r0, r1, per_member):
    """View rows r0..r1-1 (members p0..p1-1) of a batch-last array as a matrix.

    Shapes: a (*lead, Ch, h, w, N) -> (*lead, Ch, rows*w*N).
    """
    a = a[p0:p1] if per_member else a
    a = a[..., r0:r1, :, :]
    return a.reshape(*a.shape[:-3], -1)


def _cols_bytes(xl, kh, kw, stride, padding):
    """Bytes of the whole im2col array of xl (*xlead, C, H, W, N)."""
    H, Wi, N = xl.shape[-3:]
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (Wi + 2 * padding - kw) // stride + 1
    return math.prod(xl.shape[:-3]) * kh * kw * Ho * Wo * N * xl.itemsize


def _convolved(xl, W, stride, padding, keep=False):
    """W x in the batch-last layout.  Shapes: xl (*xlead, C, H, W, N) -> (*lead, O, Ho, Wo, N).

    With ``keep`` the columns are made whole, once, and returned too (else None):
    (out, cols), cols (*xlead, C*kh*kw, Ho*Wo*N).
    """
    O, C, kh, kw = W.shape[-4:]
    H, Wi, N = xl.shape[-3:]
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (Wi + 2 * padding - kw) // stride + 1
    Wm = W.reshape(*W.shape[:-3], C * kh * kw)
    lead = W.shape[:-4] or xl.shape[:-4]
    out = get_xp(xl, W).empty((*lead, O, Ho, Wo, N), dtype=xl.dtype)
    per_member = xl.ndim == 5

    def gemm(cols, p0, p1, r0, r1):
        dst = out[p0:p1] if per_member else out
        # the GEMM writes into the output's row band (a strided matrix BLAS takes as is)
        _mm(Wm[p0:p1] if per_member else Wm, cols, out=_band(dst, 0, 0, r0, r1, False))

    stacked = W.shape[0] if W.ndim == 5 and not per_member else 1
    kept = []

    def gemm_and_keep(cols, *block):
        kept.append(cols)
        gemm(cols, *block)

    _each_block(
        xl, kh, kw, stride, padding, False, stacked * O, gemm_and_keep if keep else gemm, keep
    )
    return out, (kept[0] if keep else None)


def _weight_grad(gl, xl, W_shape, stride, padding, cols=None):
    """dW = g cols(x)^T summed over the batch, the columns remade block by block.

    Remaking them costs one more im2col pass in cache; keeping them would put
    several times the activations' memory on the tape. ``cols``: the whole columns,
    kept by the forward pass where they are small (``_KEEP_COLS_BYTES``), used as they are.

    Shapes: gl (*glead, O, Ho, Wo, N) and xl (*xlead, C, H, W, N), both batch-last
    -> dW (*lead, O, C, kh, kw); a population axis on either side gives one.
    """
    xp = get_xp(gl, xl)
    O, C, kh, kw = W_shape[-4:]
    lead = W_shape[:-4]
    dW = xp.zeros((*lead, O, C * kh * kw), dtype=gl.dtype)
    per_member = xl.ndim == 5

    def gemm(cols, p0, p1, r0, r1):
        gm = _band(gl, p0, p1, r0, r1, per_member and gl.ndim == 5)
        if cols.ndim == 2 and gm.ndim == 3:
            # a shared input: every member's rows against the same columns, one GEMM
            P = gm.shape[0]
            dW[...] += (gm.reshape(P * O, -1) @ cols.T).reshape(P, O, -1)
        else:
            dst = dW[p0:p1] if per_member else dW
            dst += gm @ xp.swapaxes(cols, -1, -2)

    if cols is not None:
        gemm(cols, 0, xl.shape[0] if per_member else 1, 0, gl.shape[-3])
    else:
        _each_block(xl, kh, kw, stride, padding, False, 0, gemm)
    return dW.reshape(W_shape)


def _phase_weights(W, stride):
    """Split the transposed convolution's kernel by output phase (sub-pixel convolution).

    Shapes: W (*lead, O, C, k, k) -> (*lead, C*s*s, O*k'*k') with s = stride, k' = ceil(k / s).
    Math: for an input pixel h + padding = s q + r (phase r), W^T y at h is
    sum_{o, a} W[o, c, s a + r] y[o, q - a]: a stride-1 correlation of y with the
    flipped sub-kernel Wt[c, r, o, k' - 1 - a] = W[o, c, s a + r] (0 where s a + r >= k).
    """
    xp = get_xp(W)
    *lead, O, C, k, _ = W.shape
    kp = -(-k // stride)
    Wp = xp.zeros((*lead, O, C, stride * kp, stride * kp), dtype=W.dtype)
    Wp[..., :k, :k] = W
    Wp = Wp.reshape(*lead, O, C, kp, stride, kp, stride)[..., ::-1, :, ::-1, :]
    nl = len(lead)
    order = (*range(nl), nl + 1, nl + 3, nl + 5, nl, nl + 2, nl + 4)
    return Wp.transpose(order).reshape(*lead, C * stride * stride, O * kp * kp)


def _transposed(yl, W, H, Wi, stride, padding, reduce=False, method=None):
    """W^T y in the batch-last layout: the core of conv2d_T and of conv2d's input VJP.

    Shapes: yl (*ylead, O, Ho, Wo, N), W (*lead, O, C, k, k) -> (*lead, C, H, Wi, N),
    or (C, H, Wi, N) summed over the population with ``reduce``.
    Two exact ways to compute it, whichever moves less memory:
    col2im: the GEMM W^T y gives every window's contribution (C k^2 Ho Wo values per
    sample), then the overlapping windows are added onto the image (``unwindows``);
    phases: split the image by output phase (h + padding) mod stride; each phase is a
    stride-1 correlation of y with a sub-kernel (``_phase_weights``), so one im2col of
    y (O k'^2 rows) and one GEMM give all phases, which interleave without overlap.
    The second wins when O k'^2 + s^2 C is small against 2 C k^2 (e.g. 8 -> 8 channels,
    k 4, stride 2: 4x less memory traffic); the first for few input channels.
    Both run a cache-sized block of rows of y at a time (see _BLOCK_BYTES).
    ``method`` ("col2im" or "phases") overrides the choice (for tests).
    """
    xp = get_xp(yl, W)
    O, C, k, kw = W.shape[-4:]
    Ho, Wo, N = yl.shape[-3:]
    x = xp.zeros((*(() if reduce else W.shape[:-4]), C, H, Wi, N), dtype=yl.dtype)
    per_member = yl.ndim == 5 and not reduce
    stacked = W.shape[0] if W.ndim == 5 and yl.ndim == 4 else 1
    kp = -(-k // stride)
    Qh, Qw = Ho + kp - 1, Wo + kp - 1
    if method is None:
        phase_cost = (O * kp * kp + C * stride * stride) * Qh * Qw
        method = "phases" if k == kw and phase_cost < 2 * C * k * kw * Ho * Wo else "col2im"
    if method == "phases":
        Wt = _phase_weights(W, stride)

        def interleave(cols, p0, p1, r0, r1):
            Z = _mm(Wt[p0:p1] if per_member else Wt, cols, reduce)
            Z = Z.reshape(*Z.shape[:-2], C, stride, stride, r1 - r0, Qw, N)
            unwindows(
                Z, H, Wi, stride, padding, 1, rows=(r0, r1), out=x[p0:p1] if per_member else x
            )

        _each_block(yl, kp, kp, 1, kp - 1, reduce, stacked * C * stride * stride, interleave)
        return x
    Wm = xp.swapaxes(W.reshape(*W.shape[:-3], C * k * kw), -1, -2)
    row_bytes = stacked * C * k * kw * Wo * N * yl.itemsize
    members = yl.shape[0] if per_member else 1
    for p0, p1, r0, r1 in _blocks(members, Ho, row_bytes, _block_bytes(xp)):
        dcols = _mm(Wm[p0:p1] if per_member else Wm, _band(yl, p0, p1, r0, r1, per_member), reduce)
        dcols = dcols.reshape(*dcols.shape[:-2], C, k, kw, r1 - r0, Wo, N)
        unwindows(
            dcols, H, Wi, stride, padding, 1, rows=(r0, r1), out=x[p0:p1] if per_member else x
        )
    return x


def conv2d(x, W, stride=1, padding=0):
    """2-D cross-correlation (PyTorch's Conv2d without bias), im2col + GEMM.

    Shapes: x (*lead, *batch, C, H, W), W (*lead, O, C, kh, kw)
    -> (*lead, *batch, O, Ho, Wo), Ho = (H + 2 padding - kh) // stride + 1.
    Math: y[o, i, j] = sum_{c, a, b} W[o, c, a, b] x[c, s i + a - padding, s j + b - padding]
    with s = stride.
    The result is a view in the batch-last memory order (see the layout note above).
    """
    xd, Wd = data(x), data(W)
    O, C, kh, kw = Wd.shape[-4:]
    if xd.ndim < 4 or xd.shape[-3] != C:
        raise ValueError(
            f"conv2d expects input (..., {C}, H, W) for weights {Wd.shape}, got {xd.shape}"
        )
    lead, batch = _conv_lead(xd, Wd)
    H, Wi = xd.shape[-2:]
    if H + 2 * padding < kh or Wi + 2 * padding < kw:
        raise ValueError(f"conv2d kernel {kh}x{kw} larger than padded input {H}x{Wi} + {padding}")
    xs, xlead = _squeeze_shared(xd, lead)
    xl = _batch_last(xs, xlead, batch)
    out_lead = Wd.shape[:-4] if Wd.ndim == 5 else lead
    # the weight gradient needs the columns again: keep them when they are small
    keep_limit = _keep_cols_bytes(get_xp(xl))
    keep = needs_grad(W) and _cols_bytes(xl, kh, kw, stride, padding) <= keep_limit
    out, cols = _convolved(xl, Wd, stride, padding, keep)
    out = _from_last(out, out_lead, batch)

    def vjp_x(g):
        # y = W cols(x)  =>  dx = cols^T(W^T g) = conv2d_T(g, W); a shared input
        # sums the P members' contributions inside the GEMM
        gl = _batch_last(g, out_lead, batch)
        dx = _transposed(gl, Wd, H, Wi, stride, padding, reduce=xlead == () and Wd.ndim == 5)
        return _from_last(dx, xlead, batch).reshape(xd.shape)

    def vjp_W(g):
        # y = W cols(x)  =>  dW = g cols^T, summed over the batch
        gl = _batch_last(g, out_lead, batch)
        return _weight_grad(gl, xl, Wd.shape, stride, padding, cols)

    return record(out, (x, vjp_x), (W, vjp_W))


def conv2d_T(y, W, stride=1, padding=0, in_hw=None):
    """The adjoint (transpose) of ``conv2d`` in its input: x = W^T y.

    Shapes: y (*lead, *batch, O, Ho, Wo), W (*lead, O, C, kh, kw)
    -> (*lead, *batch, C, H, W) with (H, W) = ``in_hw`` (needed when the stride
    drops rows; defaults to the smallest size that gives (Ho, Wo)).
    Math: <conv2d(x, W), y> = <x, conv2d_T(y, W)> for all x. Used to
    back-substitute linear bounds through a convolution (CROWN / DeepPoly).
    The result is a view in the batch-last memory order, like conv2d's.
    """
    yd, Wd = data(y), data(W)
    O, C, kh, kw = Wd.shape[-4:]
    if yd.ndim < 4 or yd.shape[-3] != O:
        raise ValueError(
            f"conv2d_T expects (..., {O}, Ho, Wo) for weights {Wd.shape}, got {yd.shape}"
        )
    lead, batch = _conv_lead(yd, Wd)
    Ho, Wo = yd.shape[-2:]
    if in_hw is None:
        in_hw = ((Ho - 1) * stride + kh - 2 * padding, (Wo - 1) * stride + kw - 2 * padding)
    H, Wi = in_hw
    ys, ylead = _squeeze_shared(yd, lead)
    yl = _batch_last(ys, ylead, batch)
    out_lead = Wd.shape[:-4] if Wd.ndim == 5 else lead
    # a shared y meets the P weight tensors in one stacked GEMM (see _mm)
    out = _from_last(_transposed(yl, Wd, H, Wi, stride, padding), out_lead, batch)

    def vjp_y(g):
        # x = W^T y  =>  dy = W g = conv2d(g, W)
        dy = data(conv2d(g, Wd, stride, padding))
        return unbroadcast(dy, yd.shape)

    def vjp_W(g):
        # <W^T y, g> = <y, conv2d(g, W)>  =>  dW = y cols(g)^T, summed over the batch
        return _weight_grad(yl, _batch_last(g, out_lead, batch), Wd.shape, stride, padding)

    return record(out, (y, vjp_y), (W, vjp_W))


# ---------------------------------------------------------------- recomputation


def recompute(fn, *args):
    """``fn(*args)`` evaluated off the tape; its VJP replays ``fn`` on the tape.

    Gradient checkpointing (Chen et al. 2016, "Training deep nets with sublinear
    memory cost"): the tape keeps ``args`` and the output but none of ``fn``'s
    intermediates, so a computation split into chunks holds one chunk's tape at
    a time (during backward). ``fn`` must be deterministic, built from these
    primitives, and return one array; arguments that are not Tensors (arrays,
    None, numbers) pass through as constants.
    Shapes: whatever ``fn`` maps; the VJP returns one cotangent per Tensor argument.
    """
    out = fn(*[data(a) for a in args])
    grads = {}

    def replay(g):
        leaves = [Tensor(data(a), requires_grad=True) if needs_grad(a) else data(a) for a in args]
        res = fn(*leaves)
        if needs_grad(res):
            res.backward(g)
        for i, leaf in enumerate(leaves):
            if isinstance(leaf, Tensor):
                grad = leaf.grad
                grads[i] = get_xp(leaf.data).zeros_like(leaf.data) if grad is None else grad

    def vjp_of(i):
        def vjp(g):
            # d fn = J da: one replay pulls g back to every argument; the others read its cache
            if i not in grads:
                replay(g)
            return grads.pop(i)

        return vjp

    return record(out, *[(a, vjp_of(i)) for i, a in enumerate(args)])


__all__ = [
    "abs",
    "add",
    "broadcast_to",
    "clip",
    "concatenate",
    "conv2d",
    "conv2d_T",
    "div",
    "exp",
    "gather",
    "getitem",
    "log",
    "logsumexp",
    "matmul",
    "maximum",
    "mean",
    "minimum",
    "mul",
    "neg",
    "pad",
    "put",
    "recompute",
    "relu",
    "reshape",
    "sub",
    "sum",
    "swapaxes",
    "take",
    "transpose",
    "unbroadcast",
    "where",
]


# ---------------------------------------------------------------- back-substitution through a ReLU
#
# Back-substitution's coefficient arrays are the largest in the engine, and every
# elementwise pass over them is bound by memory traffic: the ReLU step is one
# fused primitive that reads A once (and its VJP reads A and the cotangent once),
# block by block in one memory order, each block's intermediates staying in cache.

_SIGN_BLOCK_BYTES = 1 << 18


def relu_backstep(A, s_pos, s_neg, i_pos, i_neg, n: int):
    """Push rows A through a relaxed ReLU: A+ s_pos + A- s_neg and <A+, i_pos> + <A-, i_neg>.

    Shapes: A (..., *shape) with len(shape) = n; s_pos, s_neg, i_pos, i_neg broadcast
    against A -> (A', shift) with A' the broadcast shape and shift that shape without
    its last n axes. i_pos or i_neg None: zero. s_pos = s_neg = None: only the shift
    (A' is None), e.g. a concretisation <A+, l> + <A-, u> over a box.
    Math: A+ = max(A, 0), A- = min(A, 0), so A+ + A- = A; the shift sums A+ i_pos +
    A- i_neg over the last n axes. Equal to the unfused products and sums up to float
    rounding. A = 0 counts as negative in the VJP, as A - relu(A) does.
    """
    Ad = data(A)
    sp, sn, ip, im = (None if x is None else data(x) for x in (s_pos, s_neg, i_pos, i_neg))
    xp = get_xp(*(x for x in (Ad, sp, sn, ip, im) if x is not None))
    shape = tuple(np.broadcast_shapes(*(x.shape for x in (Ad, sp, sn, ip, im) if x is not None)))
    if xp is np:
        out, shift = _backstep_blocks(Ad, sp, sn, ip, im, n, shape)
    else:
        out, shift = _backstep_whole(xp, Ad, sp, sn, ip, im, n, shape)
    grads = {}

    def vjp_of(key, g, pos, neg, fields):
        # d(A+ pos + A- neg) = (pos or neg by sign) dA + A+ dpos + A- dneg: one pass gives
        # every wanted cotangent, the other parents read the cache
        if key not in grads:
            wanted = [needs_grad(x) for x in (A, *fields)]
            run = _backstep_vjp_blocks if xp is np else _backstep_vjp_whole
            grads[key] = dict(zip(("A", "pos", "neg"), run(Ad, g, pos, neg, wanted, shape)))
        return lambda name: grads[key].pop(name)

    def cotangents(key, pos, neg, fields, widen):
        def vjp(name):
            return lambda g: vjp_of(key, widen(g), pos, neg, fields)(name)

        return vjp

    if out is not None:
        vjp = cotangents("out", sp, sn, (s_pos, s_neg), lambda g: g)
        out = record(out, (A, vjp("A")), (s_pos, vjp("pos")), (s_neg, vjp("neg")))
    # the shift's cotangent (..) spreads over the summed axes (.., 1, .., 1)
    vjp = cotangents("shift", ip, im, (i_pos, i_neg), lambda g: g.reshape(*g.shape, *(1,) * n))
    shift = record(shift, (A, vjp("A")), (i_pos, vjp("pos")), (i_neg, vjp("neg")))
    return out, shift


def _backstep_whole(xp, Ad, sp, sn, ip, im, n, shape):
    """relu_backstep's values by whole-array operations (CuPy, or rows shared by a batch)."""
    pos, neg = xp.fmax(Ad, 0), xp.fmin(Ad, 0)
    shift = xp.zeros(shape[: len(shape) - n], dtype=Ad.dtype)
    axes = tuple(range(-n, 0))
    for half, i in ((pos, ip), (neg, im)):
        if i is not None:
            shift = shift + (half * i).sum(axis=axes)
    return (None if sp is None else pos * sp + neg * sn), shift


def _backstep_vjp_whole(Ad, g, pos, neg, wanted, shape):
    """(dA, dpos, dneg) of A+ pos + A- neg for the cotangent g, by whole-array operations."""
    xp = get_xp(Ad, g)
    gp = g * (Ad > 0)
    gn = g - gp
    dA = None
    if wanted[0]:
        parts = [gs * f for gs, f in ((gp, pos), (gn, neg)) if f is not None]
        dA = unbroadcast(parts[0] + parts[1] if len(parts) == 2 else parts[0], Ad.shape)
    dpos = unbroadcast(g * xp.fmax(Ad, 0), pos.shape) if wanted[1] else None
    dneg = unbroadcast(g * xp.fmin(Ad, 0), neg.shape) if wanted[2] else None
    return dA, dpos, dneg


def _memory_order(a, shape):
    """Axes of ``a`` (broadcast to ``shape``) from the largest stride to the smallest.

    An axis that ``a`` broadcasts (size 1) goes right before the next axis that it has,
    so that rows shared by a batch keep the batch innermost (a convolution's batch-last
    order flattens them as one batch axis, rows outer).
    """
    a = a.reshape((1,) * (len(shape) - a.ndim) + a.shape)
    keys, nxt = [0] * len(shape), 0
    for ax in reversed(range(len(shape))):
        if a.shape[ax] > 1 and a.strides[ax]:
            nxt = a.strides[ax]
        keys[ax] = nxt
    return tuple(sorted(range(len(shape)), key=lambda ax: -keys[ax]))


class _Blocks:
    """Cache-sized blocks of a broadcast shape, walked in the memory order ``perm``.

    A prefix of the permuted axes is looped one index at a time and the next one in
    chunks, so that one block holds about _SIGN_BLOCK_BYTES.
    """

    def __init__(self, shape, perm, itemsize):
        self.shape, self.perm = shape, perm
        self.pshape = tuple(shape[ax] for ax in perm)
        inner, split = itemsize, len(self.pshape)
        while split > 0 and inner * self.pshape[split - 1] <= _SIGN_BLOCK_BYTES:
            split -= 1
            inner *= self.pshape[split]
        self.split = split
        self.lead = max(split - 1, 0)
        self.step = max(1, _SIGN_BLOCK_BYTES // inner) if split else 1
        if split:
            self.block = (min(self.step, self.pshape[self.lead]), *self.pshape[self.lead + 1 :])
        else:
            self.block = self.pshape

    def __iter__(self):
        """Yield each block's index into the permuted views."""
        for prefix in np.ndindex(*self.pshape[: self.lead]):
            if not self.split:
                yield prefix
                continue
            for j in range(0, self.pshape[self.lead], self.step):
                yield prefix + (slice(j, j + self.step),)

    def view(self, x, copy=True):
        """``x`` broadcast to the shape and permuted; a small operand copied into the order."""
        if x is None:
            return None
        x = x.reshape((1,) * (len(self.shape) - x.ndim) + x.shape).transpose(self.perm)
        return np.broadcast_to(np.ascontiguousarray(x) if copy else x, self.pshape)

    def buffer(self, dtype):
        """Return scratch of one block."""
        return np.empty(self.block, dtype=dtype)

    def target(self, reduced_shape, dtype):
        """Zeros to sum blocks into, permuted, of a shape that broadcasts to the whole."""
        full = (1,) * (len(self.shape) - len(reduced_shape)) + tuple(reduced_shape)
        return np.zeros(tuple(full[ax] for ax in self.perm), dtype=dtype)

    def add_into(self, tp, idx, vals):
        """Sum the block's values ``vals`` over the axes that ``tp`` lacks and add them in."""
        spot = tuple(
            i if tp.shape[k] > 1 else (slice(0, 1) if isinstance(i, slice) else 0)
            for k, i in enumerate(idx)
        )
        first = self.lead if self.split else 0
        axes = tuple(j for j in range(vals.ndim) if tp.shape[first + j] == 1 and vals.shape[j] > 1)
        tp[spot] += vals.sum(axis=axes, keepdims=True) if axes else vals

    def back(self, tp, shape):
        """Return a permuted array (``view``'s or ``target``'s shape) in the order ``shape``."""
        inverse = tuple(sorted(range(len(self.perm)), key=self.perm.__getitem__))
        return tp.transpose(inverse).reshape(shape)


def _backstep_blocks(Ad, sp, sn, ip, im, n, shape):
    """relu_backstep's values in cache-sized blocks of one memory order.

    The order is A's; for rows shared by a batch, the slopes' (that of the layer
    before the ReLU, whose transpose A' meets next: a convolution's batch-last order,
    a linear layer's rows), and then A's two signs are formed once, on the small A.
    """
    shared = Ad.shape != shape and sp is not None
    bl = _Blocks(shape, _memory_order(sp if shared else Ad, shape), Ad.itemsize)
    if shared:
        return _backstep_shared(bl, Ad, sp, sn, ip, im, n, shape)
    a = bl.view(Ad, copy=False)
    p, q, ipv, imv = (bl.view(x) for x in (sp, sn, ip, im))
    out = None if sp is None else np.empty(bl.pshape, dtype=Ad.dtype)
    lead_shape = shape[: len(shape) - n]
    shift = bl.target((*lead_shape, *(1,) * n), Ad.dtype)
    t, u = bl.buffer(Ad.dtype), bl.buffer(Ad.dtype)
    # max(A, 0) against an array of zeros: against the scalar 0 it runs ~3x slower
    zero = np.zeros(bl.block, dtype=Ad.dtype)
    for idx in bl:
        ab = a[idx]
        k = ab.shape[0] if bl.split else None
        tb, ub, zb = t[:k], u[:k], zero[:k]
        np.fmin(ab, zb, out=tb)
        if imv is not None:
            np.multiply(tb, imv[idx], out=ub)
            bl.add_into(shift, idx, ub)
        ob = ub if out is None else out[idx]
        np.fmax(ab, zb, out=ob)
        if ipv is not None:
            np.multiply(ob, ipv[idx], out=ub)
            bl.add_into(shift, idx, ub)
        if out is not None:
            np.multiply(tb, q[idx], out=tb)
            np.multiply(ob, p[idx], out=ob)
            ob += tb
    return (None if out is None else bl.back(out, shape)), bl.back(shift, lead_shape)


def _backstep_shared(bl, Ad, sp, sn, ip, im, n, shape):
    """_backstep_blocks for rows A shared by a batch: A+ and A- formed once, then 3 passes."""
    pos, neg = bl.view(np.fmax(Ad, 0)), bl.view(np.fmin(Ad, 0))
    p, q, ipv, imv = (bl.view(x) for x in (sp, sn, ip, im))
    out = np.empty(bl.pshape, dtype=Ad.dtype)
    lead_shape = shape[: len(shape) - n]
    shift = bl.target((*lead_shape, *(1,) * n), Ad.dtype)
    t = bl.buffer(Ad.dtype)
    for idx in bl:
        ob = out[idx]
        tb = t[: ob.shape[0]] if bl.split else t
        for half, i in ((pos, ipv), (neg, imv)):
            if i is not None:
                np.multiply(half[idx], i[idx], out=tb)
                bl.add_into(shift, idx, tb)
        np.multiply(pos[idx], p[idx], out=ob)
        np.multiply(neg[idx], q[idx], out=tb)
        ob += tb
    return bl.back(out, shape), bl.back(shift, lead_shape)


def _backstep_vjp_blocks(Ad, g, pos, neg, wanted, shape):
    """(dA, dpos, dneg) of A+ pos + A- neg for the cotangent g, in blocks.

    The blocks follow g's memory order, or A's for a cotangent spread over summed axes.
    Rows A shared by a batch (smaller than A') sum their cotangent block by block.
    """
    bl = _Blocks(shape, _memory_order(g if g.shape == shape else Ad, shape), Ad.itemsize)
    a, gv = bl.view(Ad, copy=False), bl.view(g, copy=False)
    p, q = bl.view(pos), bl.view(neg)
    shared = Ad.shape != shape
    dA = None
    if wanted[0]:
        dA = bl.target(Ad.shape, g.dtype) if shared else np.empty(bl.pshape, dtype=g.dtype)
    dpos = bl.target(pos.shape, g.dtype) if wanted[1] else None
    dneg = bl.target(neg.shape, g.dtype) if wanted[2] else None
    t, u = bl.buffer(g.dtype), bl.buffer(g.dtype)
    mask = np.empty(bl.block, dtype=bool)
    zero = np.zeros(bl.block, dtype=Ad.dtype)
    for idx in bl:
        ab, gb = a[idx], gv[idx]
        k = ab.shape[0] if bl.split else None
        tb, ub, mb, zb = t[:k], u[:k], mask[:k], zero[:k]
        if dpos is not None:
            np.fmax(ab, zb, out=tb)
            np.multiply(tb, gb, out=tb)
            bl.add_into(dpos, idx, tb)
        if dneg is not None:
            np.fmin(ab, zb, out=tb)
            np.multiply(tb, gb, out=tb)
            bl.add_into(dneg, idx, tb)
        if dA is not None:
            # g pos where A > 0, g neg elsewhere: (g 1[A > 0]) pos + (g - g 1[A > 0]) neg
            np.greater(ab, zb, out=mb)
            np.multiply(gb, mb, out=tb)
            np.subtract(gb, tb, out=ub)
            if p is not None:
                np.multiply(tb, p[idx], out=tb)
            if q is not None:
                np.multiply(ub, q[idx], out=ub)
            if p is not None and q is not None:
                np.add(tb, ub, out=tb)
            part = tb if p is not None else ub
            if shared:
                bl.add_into(dA, idx, part)
            else:
                dA[idx] = part
    return (
        None if dA is None else bl.back(dA, Ad.shape if shared else shape),
        None if dpos is None else bl.back(dpos, pos.shape),
        None if dneg is None else bl.back(dneg, neg.shape),
    )


__all__ += ["relu_backstep"]


# ---------------------------------------------------------------- patch windows


def patch_windows(m, p: int, stride: int, offset: int, rows_hw: tuple, sites=None):
    """Return the (p, p) window of every row position on a map, zero outside it.

    Shapes: m (..., C, H, W) -> (..., 1, Hk, Wk, C, p, p) with (Hk, Wk) = ``rows_hw``;
    position (i, j) reads rows i stride + offset .. i stride + offset + p - 1 (and the
    same columns), so a negative offset reads zero padding. One zero-padded copy of the
    map (small) and one copy of its strided window view into the result.
    ``sites`` (n,) distinct integers: only those windows, m (..., B, C, H, W) ->
    (..., n, 1, 1, 1, C, p, p), window r at sample b and position (i, j) where
    sites[r] = (b Hk + i) Wk + j; copied straight from the view.
    """
    md = data(m)
    xp = get_xp(md)
    Hk, Wk = rows_hw
    H, W = md.shape[-2:]
    L_h, L_w = (Hk - 1) * stride + p, (Wk - 1) * stride + p
    top = max(0, -offset)
    width = [(0, 0)] * (md.ndim - 2)
    width += [(top, max(0, offset + L_h - H)), (top, max(0, offset + L_w - W))]
    padded = md
    if any(w != (0, 0) for w in width):
        # a zeroed frame and one copy (np.pad's general path costs several times more)
        padded = xp.zeros(
            (*md.shape[:-2], top + H + width[-2][1], top + W + width[-1][1]), md.dtype
        )
        padded[..., top : top + H, top : top + W] = md
    start = offset + top
    view = patch_view(padded[..., start : start + L_h, start : start + L_w], p, stride, rows_hw)
    n = md.ndim - 3
    # (..., C, Hk, Wk, p, p) -> (..., Hk, Wk, C, p, p)
    view = xp.moveaxis(view, n, n + 2)
    if sites is None:
        out = xp.ascontiguousarray(view).reshape(*md.shape[:-3], 1, *view.shape[n:])
        full_shape = out.shape
    else:
        b, ij = sites // (Hk * Wk), sites % (Hk * Wk)
        picked = view[(Ellipsis, b, ij // Wk, ij % Wk, slice(None), slice(None), slice(None))]
        out = picked.reshape(*md.shape[:-4], len(sites), 1, 1, 1, *md.shape[-3:-2], p, p)
        full_shape = (*md.shape[:-3], 1, Hk, Wk, md.shape[-3], p, p)

    def vjp(g):
        if sites is not None:
            # the picked windows' cotangents in place, zeros at the other windows
            full = xp.zeros(full_shape[: n - 1] + (md.shape[-4], Hk, Wk) + full_shape[-3:], g.dtype)
            full[(Ellipsis, b, ij // Wk, ij % Wk, slice(None), slice(None), slice(None))] = (
                g.reshape(*g.shape[: n - 1], len(sites), *g.shape[-3:])
            )
            g = full.reshape(full_shape)
        # <g, windows(m)> sums g[i, j, c, a, b] m[c, i S + off + a, j S + off + b]: col2im of g
        # with padding -off, the taps that read the padding dropped
        g = g.reshape(full_shape[:n] + full_shape[n + 1 :])
        cols = g.transpose(*range(n), n + 2, n + 3, n + 4, n, n + 1)
        return unwindows(cols, H, W, stride, -offset)

    return record(out, (m, vjp))


__all__ += ["patch_windows"]
