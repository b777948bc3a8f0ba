"""DeepPoly / CROWN back-substitution and CROWN-IBP (paper Sec. 2.2).

A quantity y (a neuron, or a row of the specification) is bounded by linear
functions of a layer's input h,

    A_l h + b_l <= y <= A_u h + b_u,

which are walked back to the network input one layer at a time (Zhang et al.
2018, Thm. 3.2; Singh et al. 2019, Sec. 4):

- affine layer h = W x + b: A <- W^T A (``linear_T``), b_A <- b_A + <A, b>; exact.
- ReLU h = relu(v) with the relaxation s_l v + i_l <= h <= s_u v + i_u
  (``relax.deeppoly``): the lower bound takes the lower relaxation where its
  coefficient is positive and the upper one where it is negative,
  A_l <- A_l+ s_l + A_l- s_u, b_l <- b_l + <A_l+, i_l> + <A_l-, i_u>, and
  symmetrically for the upper bound.

At the input box (centre c, radius r) the bounds are concretised:
lb = A_l c - |A_l| r + b_l, ub = A_u c + |A_u| r + b_u (= A+ l + A- u, A+ u + A- l).

DeepPoly back-substitutes every ReLU input, in order, with the bounds already
found for the earlier ones, and then the output. CROWN-IBP (Zhang et al. 2020)
takes every ReLU input's bounds from IBP and back-substitutes only the output.

Memory. A has one row per bounded quantity and one column per neuron of the
layer it has reached: (*lead, B, S, *layer_shape). Rows (and, when one row of
the whole batch is too large, samples) are processed in chunks sized to a
memory budget. When the whole computation would not fit the budget on one tape,
each chunk goes through ``ops.recompute``: the tape keeps only its result, and
its intermediates are rebuilt, one chunk at a time, during backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import ops
from ..backend import Array, get_xp
from ..layers import Conv2d, Flatten, Normalize, ReLU
from ..tensor import data
from . import ibp as ibp_domain
from . import relax
from .spec import (
    Box,
    cat,
    fold_spec,
    input_shape,
    matvec,
    numel,
    plan_chunks,
    slices,
    stack,
    unstack,
)


@dataclass(frozen=True)
class LinearBounds:
    """A_l h + b_l <= y <= A_u h + b_u for every h in the set of a layer's input.

    Shapes: A_l, A_u (*lead, B or 1, S, *layer_shape); b_l, b_u (*lead, B or 1, S).
    Before the first ReLU is crossed the two sides coincide and share one array.
    A_u = b_u = None carries the lower side only (alpha-CROWN), at half the cost.
    """

    A_l: Array
    b_l: Array
    A_u: Array
    b_u: Array


def _bias_dot(A, b, out_ndim: int):
    """Sum A * b over the layer axes.  Shapes: A (..., S, *out), b (*lead, *out') -> (..., S)."""
    bd = data(b)
    ones = tuple(ax - out_ndim for ax, n in enumerate(bd.shape[bd.ndim - out_ndim :]) if n == 1)
    if ones:
        # a bias constant over some axes (a conv's (O, 1, 1)): sum A over them first
        A = ops.sum(A, axis=ones, keepdims=True)
    nlead = bd.ndim - out_ndim
    prod = ops.mul(A, ops.reshape(b, (*bd.shape[:nlead], 1, 1, *bd.shape[nlead:])))
    return ops.sum(prod, axis=tuple(range(-out_ndim, 0)))


def _dot(A, v, layer_ndim: int):
    """Compute <A[s], v> for every row s.

    Shapes: A (*lead, B or 1, S, *shape), v (*lead, B, *shape) -> (*lead, B, S).
    """
    Ad, vd = data(A), data(v)
    n = numel(Ad.shape[Ad.ndim - layer_ndim :])
    A2 = ops.reshape(A, (*Ad.shape[: Ad.ndim - layer_ndim], n))
    return matvec(A2, ops.reshape(v, (*vd.shape[: vd.ndim - layer_ndim], n)))


def affine_T(layer, p, in_shape, out_ndim: int, lin: LinearBounds) -> LinearBounds:
    """Back through an affine layer y = W x + b: A <- W^T A, b_A <- b_A + <A, b>.

    Shapes: A (*lead, B, S, *out) -> (*lead, B, S, *in).  Sound because exact.
    """
    b = layer.bias(p, lin.A_l)

    def side(A, bias):
        if b is not None:
            bias = ops.add(bias, _bias_dot(A, b, out_ndim))
        return layer.linear_T(p, A, in_shape), bias

    A_l, b_l = side(lin.A_l, lin.b_l)
    if lin.A_u is None:
        return LinearBounds(A_l, b_l, None, None)
    if lin.A_u is lin.A_l and lin.b_u is lin.b_l:
        return LinearBounds(A_l, b_l, A_l, b_l)
    A_u, b_u = side(lin.A_u, lin.b_u)
    return LinearBounds(A_l, b_l, A_u, b_u)


def relu_T(rel: relax.LinearRelaxation, layer_ndim: int, lin: LinearBounds) -> LinearBounds:
    """Back through a ReLU with the relaxation ``rel`` of its input bounds.

    Shapes: A (*lead, B or 1, S, *shape) -> (*lead, B, S, *shape); the fields of ``rel`` are
    (*lead, B, *shape), shared by the rows, except that the slopes may be (*lead, B, S, *shape),
    one per row (alpha-CROWN).
    Math: A_l <- A_l+ s_l + A_l- s_u; b_l <- b_l + <A_l+, i_l> + <A_l-, i_u>;
    A_u <- A_u+ s_u + A_u- s_l; b_u <- b_u + <A_u+, i_u> + <A_u-, i_l>.
    Sound: a positive coefficient times h is bounded below by its lower
    relaxation and above by its upper one; a negative coefficient the other way.
    """

    def rows(a):
        # (*lead, B, *shape) -> (*lead, B, 1, *shape): one value per neuron, shared by the rows
        ad = data(a)
        if ad.ndim == data(lin.A_l).ndim:
            return a
        k = ad.ndim - layer_ndim
        return ops.reshape(a, (*ad.shape[:k], 1, *ad.shape[k:]))

    s_l, s_u = rows(rel.slope_l), rows(rel.slope_u)

    def signs(A):
        A_pos = ops.relu(A)
        return A_pos, ops.sub(A, A_pos)

    def side(A_pos, A_neg, bias, s_pos, i_pos, s_neg, i_neg):
        A_new = ops.add(ops.mul(A_pos, s_pos), ops.mul(A_neg, s_neg))
        shift = ops.add(_dot(A_pos, i_pos, layer_ndim), _dot(A_neg, i_neg, layer_ndim))
        return A_new, ops.add(bias, shift)

    pos_neg_l = signs(lin.A_l)
    A_l, b_l = side(*pos_neg_l, lin.b_l, s_l, rel.icpt_l, s_u, rel.icpt_u)
    if lin.A_u is None:
        return LinearBounds(A_l, b_l, None, None)
    pos_neg_u = pos_neg_l if lin.A_u is lin.A_l else signs(lin.A_u)
    A_u, b_u = side(*pos_neg_u, lin.b_u, s_u, rel.icpt_u, s_l, rel.icpt_l)
    return LinearBounds(A_l, b_l, A_u, b_u)


def backsubstitute(
    layers, params, shapes, pre: dict, lin: LinearBounds, relaxations: dict | None = None
) -> LinearBounds:
    """Walk ``lin`` (on the output of ``layers``) back to their input.

    ``pre[i]`` is the Box of the input of ReLU layer i; ``shapes[i]`` the
    per-sample input shape of layer i (``shapes[len(layers)]`` its output).
    ``relaxations[i]``, where given, replaces DeepPoly's relaxation of ReLU i
    (alpha-CROWN's optimised lower slopes); it must be sound on ``pre[i]``.
    """
    for i in reversed(range(len(layers))):
        layer = layers[i]
        if isinstance(layer, ReLU):
            if relaxations is not None and i in relaxations:
                rel = relaxations[i]
            else:
                rel = relax.deeppoly(pre[i].lb, pre[i].ub)
            lin = relu_T(rel, len(shapes[i]), lin)
        else:
            lin = affine_T(layer, params[i], shapes[i], len(shapes[i + 1]), lin)
    return lin


def concretize(lin: LinearBounds, box: Box) -> Box:
    """Bound ``lin`` over the input ``box``: A_l c - |A_l| r + b_l, A_u c + |A_u| r + b_u.

    Shapes: A (*lead, B or 1, S, *in), box (*lead, B, *in) -> Box (*lead, B, S); its ub is
    None for a lower-only ``lin``.
    Sound: max over |x - c| <= r of A x is A c + |A| r (each coordinate at its best end).
    """
    nd = len(input_shape(box))
    c, r = box.center, box.radius
    lb = ops.add(ops.sub(_dot(lin.A_l, c, nd), _dot(ops.abs(lin.A_l), r, nd)), lin.b_l)
    if lin.A_u is None:
        return Box(lb, None)
    ub = ops.add(ops.add(_dot(lin.A_u, c, nd), _dot(ops.abs(lin.A_u), r, nd)), lin.b_u)
    return Box(lb, ub)


# ---------------------------------------------------------------- the two methods


def deeppoly(net, theta, box: Box, C=None, budget_bytes: float = 4e9):
    """DeepPoly (= CROWN) bounds on the output of ``net`` (or on C @ output) over ``box``.

    Every ReLU input is bounded by back-substitution to the input, using the
    bounds of the ReLUs before it; then the output is. A ReLU input with no ReLU
    and at most one weighted layer before it takes IBP's bounds, which equal
    back-substitution's there (``_ibp_is_exact``).
    Returns ``(out, pre)`` like ``ibp.ibp``.
    """
    relus = [k for k, layer in enumerate(net.layers) if isinstance(layer, ReLU)]
    targets = [k for k in relus if not _ibp_is_exact(net, k)] + [len(net.layers) - 1]
    recompute = _footprint(net, theta, box, C, targets) > budget_bytes
    params = net.unravel(theta)
    shapes = net.shapes(input_shape(box))
    pre = {}
    for k in relus:
        if k in targets:
            pre[k] = _backsubstituted(net, theta, box, C, pre, k, budget_bytes, recompute)
        else:
            pre[k] = box
            for i in range(k):
                pre[k] = ibp_domain.affine(net.layers[i], params[i], pre[k], shapes[i + 1])
    out = _backsubstituted(net, theta, box, C, pre, targets[-1], budget_bytes, recompute)
    return out, pre


def crown_ibp(net, theta, box: Box, C=None, budget_bytes: float = 4e9):
    """CROWN-IBP bounds: IBP for every ReLU input, back-substitution for the output.

    Returns ``(out, pre)`` like ``ibp.ibp``.
    """
    _, pre = ibp_domain.ibp(net, theta, box, C)
    k = len(net.layers) - 1
    recompute = _footprint(net, theta, box, C, [k]) > budget_bytes
    return _backsubstituted(net, theta, box, C, pre, k, budget_bytes, recompute), pre


def _ibp_is_exact(net, k: int) -> bool:
    """Tell whether IBP's bounds on the input of layer k equal back-substitution's.

    With no ReLU before k and at most one Linear/Conv2d (Flatten permutes and
    Normalize scales by positive constants), the map x -> v is M x + m with
    |M| = |W| times those factors, so IBP's c' +- |W| r is the exact range that
    back-substitution would also find, at the cost of one forward pass.
    """
    body = net.layers[:k]
    if any(isinstance(layer, ReLU) for layer in body):
        return False
    return sum(not isinstance(layer, (Flatten, Normalize)) for layer in body) <= 1


def _target_shape(net, shapes, C, k: int) -> tuple:
    """Shape of the quantities bounded at layer k: its input, or the spec rows at the end."""
    if k == len(net.layers) - 1:
        return (data(C).shape[1] if C is not None else net.layers[-1].out_features,)
    return shapes[k]


def _sizes(net, theta, box: Box):
    """(per-layer shapes, number of population axes, B, P) of a bound computation."""
    shapes = net.shapes(input_shape(box))
    nlead = data(box.lb).ndim - 4
    P = data(theta).shape[0] if data(theta).ndim == 2 else 1
    return shapes, nlead, data(box.lb).shape[nlead], P


def _footprint(net, theta, box: Box, C, targets) -> float:
    """Estimated bytes of back-substituting all ``targets`` for the whole batch on one tape."""
    shapes, _, B, P = _sizes(net, theta, box)
    itemsize = data(box.lb).dtype.itemsize
    return sum(
        numel(_target_shape(net, shapes, C, k)) * B * P * _bytes_per_row(net, shapes, k, itemsize)
        for k in targets
    )


def _backsubstituted(
    net, theta, box: Box, C, pre: dict, k: int, budget_bytes: float, recompute: bool
) -> Box:
    """Bounds on the input of layer k (a ReLU) or, for the last layer, on its spec-folded output.

    Chunked over rows (neurons or spec rows) and samples to fit ``budget_bytes``.
    With ``recompute`` each chunk is one ``ops.recompute`` node (its tape is rebuilt
    during backward); otherwise the chunks are taped as they run.
    """
    head = k == len(net.layers) - 1
    shapes, nlead, B, P = _sizes(net, theta, box)
    shape = _target_shape(net, shapes, C, k)
    item = _bytes_per_row(net, shapes, k, data(box.lb).dtype.itemsize) * P
    row_chunk, batch_chunk = plan_chunks(numel(shape), B, item, budget_bytes)
    order = sorted(pre)

    def rows_of(rows):
        def fn(theta, lo, up, C, *pre_flat):
            params = net.unravel(theta)
            bounds = {i: Box(pre_flat[2 * j], pre_flat[2 * j + 1]) for j, i in enumerate(order)}
            if head:
                hd = fold_spec(net.layers[-1], params[-1], C)
                A = ops.getitem(hd.W, (Ellipsis, rows, slice(None)))
                b = ops.getitem(hd.b, (Ellipsis, rows))
            else:
                A, b = _identity_rows(lo, nlead, shape, rows)
            lin = backsubstitute(net.layers[:k], params, shapes, bounds, LinearBounds(A, b, A, b))
            return stack(concretize(lin, Box(lo, up)))

        return fn

    parts = []
    for bs in slices(B, batch_chunk):
        args = [_take(box.lb, nlead, bs, B), _take(box.ub, nlead, bs, B)]
        args.append(None if C is None else _take(C, 0, bs, B))
        for i in order:
            axis = data(pre[i].lb).ndim - len(shapes[i]) - 1
            args += [_take(pre[i].lb, axis, bs, B), _take(pre[i].ub, axis, bs, B)]
        rows = []
        for rs in slices(numel(shape), row_chunk):
            rows.append(
                ops.recompute(rows_of(rs), theta, *args) if recompute else rows_of(rs)(theta, *args)
            )
        parts.append(cat(rows, axis=-1))
    both = cat(parts, axis=-2)
    return unstack(ops.reshape(both, (*data(both).shape[:-1], *shape)))


def _take(a, axis: int, bs: slice, B: int):
    """Select the samples ``bs`` of ``a`` along its batch axis (``a`` itself when all B)."""
    if bs == slice(0, B):
        return a
    return ops.getitem(a, (slice(None),) * axis + (bs,))


def _identity_rows(like, nlead: int, shape, rows: slice):
    """Rows ``rows`` of the identity on a layer: the start of back-substitution for its neurons.

    Shapes: -> A (*lead, 1, n, *shape), b (*lead, 1, n) with lead = (1,) in a population.
    """
    xp = get_xp(data(like))
    N = numel(shape)
    n = len(range(N)[rows])
    lead = (1,) * nlead
    eye = xp.eye(n, N, k=rows.start, dtype=data(like).dtype)
    return eye.reshape(*lead, 1, n, *shape), xp.zeros((*lead, 1, n), dtype=data(like).dtype)


def _bytes_per_row(net, shapes, k: int, itemsize: int) -> float:
    """Estimated memory of back-substituting one row of one sample from layer k to the input.

    Counts, per layer crossed, the coefficient arrays on both sides of the layer
    and a convolution's im2col columns, for both bounds, and keeps them all:
    the tape of a recomputed chunk holds every layer's arrays at once.
    """
    total = 0
    for i in range(k):
        layer = net.layers[i]
        n_in, n_out = numel(shapes[i]), numel(shapes[i + 1])
        cols = 0
        if isinstance(layer, Conv2d):
            cols = layer.in_channels * layer.kernel_size**2 * numel(shapes[i + 1][1:])
        per_side = 6 * n_in if isinstance(layer, ReLU) else n_in + n_out + cols
        total += 2 * per_side
    return float(total * itemsize)
