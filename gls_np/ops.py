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

from .backend import get_xp, unwindows, windows
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
    xp = get_xp(ad)
    mask = ad > 0
    # d relu(a) = 1[a > 0] da
    return record(xp.where(mask, ad, 0).astype(ad.dtype, copy=False), (a, lambda g: g * mask))


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


# ---------------------------------------------------------------- linear algebra


def matmul(a, b):
    """a @ b with NumPy's batch broadcasting (both at least 2-D).

    Shapes: a (..., n, k), b (..., k, m) -> (..., n, m).
    A 2-D ``b`` is folded into one GEMM over all leading axes of ``a``.
    """
    ad, bd = data(a), data(b)
    xp = get_xp(ad, bd)
    if ad.ndim < 2 or bd.ndim < 2:
        raise ValueError(f"matmul needs 2-D or more, got {ad.shape} @ {bd.shape}")
    if bd.ndim == 2 and ad.ndim > 2:
        out = (ad.reshape(-1, ad.shape[-1]) @ bd).reshape(*ad.shape[:-1], bd.shape[-1])
    else:
        out = xp.matmul(ad, bd)

    def vjp_a(g):
        # d(a b) = da b  =>  da = g b^T
        if ad.ndim == 2 and g.ndim > 2:
            # shared a: sum over the batch inside one GEMM
            gm = xp.moveaxis(g, -2, 0).reshape(g.shape[-2], -1)
            bm = xp.moveaxis(xp.broadcast_to(bd, (*g.shape[:-2], *bd.shape[-2:])), -2, 0)
            return gm @ bm.reshape(bd.shape[-2], -1).T
        return unbroadcast(xp.matmul(g, xp.swapaxes(bd, -1, -2)), ad.shape)

    def vjp_b(g):
        # d(a b) = a db  =>  db = a^T g
        if bd.ndim == 2 and g.ndim > 2:
            # shared b (a weight): sum over the batch inside one GEMM
            am = xp.broadcast_to(ad, (*g.shape[:-1], ad.shape[-1])).reshape(-1, ad.shape[-1])
            return am.T @ g.reshape(-1, g.shape[-1])
        return unbroadcast(xp.matmul(xp.swapaxes(ad, -1, -2), g), bd.shape)

    return record(out, (a, vjp_a), (b, vjp_b))


# ---------------------------------------------------------------- convolution
#
# Matrix layout used inside conv2d / conv2d_T: an activation (*lead, *batch, Ch, h, w)
# is handled as (*lead, Ch, N*h*w) with N = prod(batch), so that a convolution is
# W (*lead, O, K) @ cols (*lead, K, N*L) with K = C*kh*kw patch entries and
# L = Ho*Wo windows per image.


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


def _im2col(x, kh, kw, stride, padding, lead, batch):
    """(*lead, *batch, C, H, W) -> cols (*lead, K, N*L) and (Ho, Wo); one copy."""
    cols = windows(x, kh, kw, stride, padding)
    Ho, Wo = cols.shape[-2:]
    n = math.prod(batch)
    cols = cols.reshape(*lead, n, -1, Ho * Wo)
    cols = get_xp(x).moveaxis(cols, -3, -2)
    return cols.reshape(*lead, cols.shape[-3], n * Ho * Wo), (Ho, Wo)


def _col2im(cols, C, kh, kw, H, W, Ho, Wo, stride, padding, lead, batch):
    """Adjoint of _im2col: cols (*lead, K, N*L) -> (*lead, *batch, C, H, W)."""
    xp = get_xp(cols)
    n = math.prod(batch)
    cols = cols.reshape(*lead, C * kh * kw, n, Ho * Wo)
    cols = xp.moveaxis(cols, -3, -2).reshape(*lead, *batch, C, kh, kw, Ho, Wo)
    return unwindows(cols, H, W, stride, padding)


def _to_mat(y, lead, batch):
    """(*lead, *batch, Ch, h, w) -> (*lead, Ch, N*h*w)."""
    xp = get_xp(y)
    Ch, h, w = y.shape[-3:]
    m = y.reshape(*lead, math.prod(batch), Ch, h * w)
    return xp.moveaxis(m, -2, -3).reshape(*lead, Ch, -1)


def _from_mat(m, lead, batch, hw):
    """(*lead, Ch, N*h*w) -> (*lead, *batch, Ch, h, w)."""
    xp = get_xp(m)
    Ch = m.shape[-2]
    m = m.reshape(*lead, Ch, math.prod(batch), hw[0] * hw[1])
    return xp.ascontiguousarray(xp.moveaxis(m, -3, -2)).reshape(*lead, *batch, Ch, *hw)


def _mm(Wm, cols):
    """Wm (*wl, O, K) @ cols (*cl, K, M) -> (*lead, O, M); a 2-D ``cols`` under
    population weights becomes one stacked GEMM (P*O, K) @ (K, M)."""
    if cols.ndim == 2 and Wm.ndim == 3:
        P, O, K = Wm.shape
        return (Wm.reshape(P * O, K) @ cols).reshape(P, O, cols.shape[-1])
    return Wm @ cols


def _squeeze_shared(a, lead):
    """Drop a population axis of size 1 (a shared input) for the GEMM layout."""
    if lead == (1,):
        return a[0], ()
    return a, lead


def conv2d(x, W, stride=1, padding=0):
    """2-D cross-correlation (PyTorch's Conv2d without bias), im2col + GEMM.

    Shapes: x (*lead, *batch, C, H, W), W (*lead, O, C, kh, kw)
    -> (*lead, *batch, O, Ho, Wo), Ho = (H + 2 padding - kh) // stride + 1.
    Math: y[o, i, j] = sum_{c, a, b} W[o, c, a, b] x[c, stride i + a - padding, stride j + b - padding].
    """
    xd, Wd = data(x), data(W)
    xp = get_xp(xd, Wd)
    O, C, kh, kw = Wd.shape[-4:]
    if xd.ndim < 4 or xd.shape[-3] != C:
        raise ValueError(
            f"conv2d expects input (..., {C}, H, W) for weights {Wd.shape}, got {xd.shape}"
        )
    lead, batch = _conv_lead(xd, Wd)
    H, Wi = xd.shape[-2:]
    xs, xlead = _squeeze_shared(xd, lead)
    cols, (Ho, Wo) = _im2col(xs, kh, kw, stride, padding, xlead, batch)
    Wm = Wd.reshape(*Wd.shape[:-3], C * kh * kw)
    out_lead = Wd.shape[:-4] if Wd.ndim == 5 else lead
    out = _from_mat(_mm(Wm, cols), out_lead, batch, (Ho, Wo))

    def vjp_x(g):
        # y = W cols(x)  =>  dx = cols^T(W^T g) = conv2d_T(g, W)
        gm = _to_mat(g, out_lead, batch)
        if xlead == () and Wd.ndim == 5:
            # shared input: the stacked GEMM sums the P members' contributions
            dcols = Wm.reshape(-1, Wm.shape[-1]).T @ gm.reshape(-1, gm.shape[-1])
        else:
            dcols = xp.swapaxes(Wm, -1, -2) @ gm
        dx = _col2im(dcols, C, kh, kw, H, Wi, Ho, Wo, stride, padding, xlead, batch)
        return dx.reshape(xd.shape)

    def vjp_W(g):
        # y = W cols(x)  =>  dW = g cols^T, summed over the batch
        return _weight_grad(_to_mat(g, out_lead, batch), cols, Wd.shape)

    return record(out, (x, vjp_x), (W, vjp_W))


def _weight_grad(gm, cols, W_shape):
    """dW (*lead, O, C, kh, kw) from cotangent rows gm (*lead, O, M) and cols (*cl, K, M)."""
    xp = get_xp(gm, cols)
    if cols.ndim == 2 and gm.ndim == 3:
        P, O, M = gm.shape
        return (gm.reshape(P * O, M) @ cols.T).reshape(W_shape)
    return (gm @ xp.swapaxes(cols, -1, -2)).reshape(W_shape)


def conv2d_T(y, W, stride=1, padding=0, in_hw=None):
    """The adjoint (transpose) of ``conv2d`` in its input: x = W^T y.

    Shapes: y (*lead, *batch, O, Ho, Wo), W (*lead, O, C, kh, kw)
    -> (*lead, *batch, C, H, W) with (H, W) = ``in_hw`` (needed when the stride
    drops rows; defaults to the smallest size that gives (Ho, Wo)).
    Math: <conv2d(x, W), y> = <x, conv2d_T(y, W)> for all x. Used to
    back-substitute linear bounds through a convolution (CROWN / DeepPoly).
    """
    yd, Wd = data(y), data(W)
    xp = get_xp(yd, Wd)
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
    ym = _to_mat(ys, ylead, batch)
    Wm = Wd.reshape(*Wd.shape[:-3], C * kh * kw)
    WmT = xp.swapaxes(Wm, -1, -2)
    out_lead = Wd.shape[:-4] if Wd.ndim == 5 else lead
    if ylead == () and Wd.ndim == 5:
        # shared y: the P transposed weights form one stacked GEMM (P*K, O) @ (O, N*L)
        P = Wd.shape[0]
        dcols = (WmT.reshape(P * WmT.shape[-2], O) @ ym).reshape(P, WmT.shape[-2], -1)
    else:
        dcols = WmT @ ym
    out = _col2im(dcols, C, kh, kw, H, Wi, Ho, Wo, stride, padding, out_lead, batch)

    def vjp_y(g):
        # x = W^T y  =>  dy = W g = conv2d(g, W)
        dy = data(conv2d(g, Wd, stride, padding))
        return unbroadcast(dy, yd.shape)

    def vjp_W(g):
        # <W^T y, g> = <y, conv2d(g, W)>  =>  dW = y cols(g)^T, summed over the batch
        gcols, _ = _im2col(g, kh, kw, stride, padding, out_lead, batch)
        return _weight_grad(ym, gcols, Wd.shape)

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
    "recompute",
    "relu",
    "reshape",
    "sub",
    "sum",
    "swapaxes",
    "transpose",
    "unbroadcast",
    "where",
]
