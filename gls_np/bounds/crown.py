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

Structure (docs/relaxations.md, "Back-substitution through convolutions: patches" and
"Skipping stable neurons"): the rows
of a conv layer's neurons travel as patches, their receptive-field windows only
(``patches.py``), while that is smaller than the map they reach; a convolution on
a small map is crossed by one GEMM with its matrix; and a neuron that one
back-substitution step already proves stable is not back-substituted further
(``_one_step``). All three give the same bounds as dense rows.

Memory. A has one row per bounded quantity and one column per neuron of the
layer it has reached: (*lead, S, B, *layer_shape), rows first, so that a
convolution's batch-last memory order (C, H, W, S, B) keeps the samples
innermost and the relaxation's per-sample fields broadcast over the rows as
whole contiguous runs (docs/relaxations.md, "Memory passes"). Rows (and, when one row of
the whole batch is too large, samples) are processed in chunks sized to a
memory budget. The targets are taped in order while their estimated bytes
(``_tape_bytes``, counting only the rows DeepPoly picks) still fit the budget; past
that, each chunk goes through ``ops.recompute``: the tape keeps only its result, and
its intermediates are rebuilt, one chunk at a time, during backward.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import ops
from ..backend import Array, get_xp
from ..layers import Conv2d, Flatten, Normalize, ReLU
from ..tensor import data, needs_grad
from . import ibp as ibp_domain
from . import patches, relax
from .patches import Patches
from .spec import (
    Box,
    cat,
    fold_spec,
    input_shape,
    numel,
    plan_chunks,
    slices,
    stack,
    unstack,
)

# DeepPoly back-substitutes only the picked rows (``_unstable_picks``: a conv map's sites and
# channels, a dense layer's neurons per sample) when they are at most this fraction of all;
# above it, picking costs about as much as it saves.
SITE_FRACTION = 0.5


@dataclass(frozen=True)
class LinearBounds:
    """A_l h + b_l <= y <= A_u h + b_u for every h in the set of a layer's input.

    Shapes: A_l, A_u (*lead, S, B or 1, *layer_shape); b_l, b_u (*lead, S, B or 1).
    Or, for rows that are the neurons of a conv layer, A_l and A_u are ``Patches``
    (only each row's window, ``patches.py``) and b_l, b_u (*lead, B or 1, O, Hk, Wk).
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
        A = _sum_in_memory_order(A, ones)
    nlead = bd.ndim - out_ndim
    prod = ops.mul(A, ops.reshape(b, (*bd.shape[:nlead], 1, 1, *bd.shape[nlead:])))
    return ops.sum(prod, axis=tuple(range(-out_ndim, 0)))


def _sum_in_memory_order(A, axes):
    """Sum A over ``axes`` (keeping them, size 1), taped so that the cotangent keeps A's layout.

    ``ops.sum`` spreads its cotangent as a C-contiguous array; summed in A's memory
    order (a transposed view), that array has A's own layout (a convolution's
    batch-last one), and adding it to A's other cotangent needs no transposing pass.
    """
    Ad = data(A)
    axes = tuple(ax % Ad.ndim for ax in axes)
    order = tuple(sorted(range(Ad.ndim), key=lambda ax: -Ad.strides[ax]))
    summed = ops.sum(
        ops.transpose(A, order), axis=tuple(order.index(ax) for ax in axes), keepdims=True
    )
    return ops.transpose(summed, tuple(order.index(ax) for ax in range(Ad.ndim)))


def affine_T(layer, p, in_shape, out_shape, lin: LinearBounds) -> LinearBounds:
    """Back through an affine layer y = W x + b: A <- W^T A, b_A <- b_A + <A, b>.

    Shapes: A (*lead, S, B, *out) -> (*lead, S, B, *in), or patches on the layer's
    output map -> patches on its input (``patches.conv_T``). Sound because exact.
    """
    b = layer.bias(p, lin.b_l)
    if isinstance(lin.A_l, Patches):

        def side(P, bias):
            if isinstance(layer, Conv2d):
                P_in, shift = patches.conv_T(layer, p, P, out_shape)
                return P_in, ops.add(bias, shift)
            # a Normalize: W^T scales each channel, (C, 1, 1) against the patch's (C, p, p)
            bias = ops.add(bias, patches.bias_dot(P, b, out_shape))
            return P.with_A(layer.linear_T(p, P.A)), bias

    elif isinstance(layer, Conv2d) and patches.gemm_pays(layer, out_shape[-2:], in_shape[-2:]):

        def side(A, bias):
            # a small map: W^T and the bias dot as one GEMM with the conv's matrix
            weight, stride, pad = p["weight"], layer.stride, layer.padding
            A_in, shift = patches.conv_T_gemm(A, weight, b, stride, pad, in_shape[-2:])
            return A_in, ops.add(bias, shift)

    else:

        def side(A, bias):
            if b is not None:
                bias = ops.add(bias, _bias_dot(A, b, len(out_shape)))
            return layer.linear_T(p, A, in_shape), bias

    return _each_side(lin, side)


def _each_side(lin: LinearBounds, side) -> LinearBounds:
    """Apply ``side(A, b) -> (A', b')`` to both bounds, once when they share their arrays."""
    A_l, b_l = side(lin.A_l, lin.b_l)
    if lin.A_u is None:
        return LinearBounds(A_l, b_l, None, None)
    if lin.A_u is lin.A_l and lin.b_u is lin.b_l:
        return LinearBounds(A_l, b_l, A_l, b_l)
    A_u, b_u = side(lin.A_u, lin.b_u)
    return LinearBounds(A_l, b_l, A_u, b_u)


def relu_T(rel: relax.LinearRelaxation, layer_ndim: int, lin: LinearBounds) -> LinearBounds:
    """Back through a ReLU with the relaxation ``rel`` of its input bounds.

    Shapes: A (*lead, S, B or 1, *shape) -> (*lead, S, B, *shape); the fields of ``rel`` are
    (*lead, B, *shape), shared by the rows, except that the slopes may be (*lead, S, B, *shape),
    one per row (alpha-CROWN). Patches take each row's window of the fields.
    Math: A_l <- A_l+ s_l + A_l- s_u; b_l <- b_l + <A_l+, i_l> + <A_l-, i_u>;
    A_u <- A_u+ s_u + A_u- s_l; b_u <- b_u + <A_u+, i_u> + <A_u-, i_l>.
    Sound: a positive coefficient times h is bounded below by its lower
    relaxation and above by its upper one; a negative coefficient the other way.
    """
    if isinstance(lin.A_l, Patches):
        P = lin.A_l
        if data(rel.slope_l).ndim != data(rel.icpt_l).ndim:
            raise ValueError("per-row slopes (alpha-CROWN) need dense rows, not patches")

        windows = {}

        def view(a):
            if id(a) not in windows:
                windows[id(a)] = patches.window(a, P)
            return windows[id(a)]

        def wrap(A):
            return P.with_A(A, clean=True)

        A_l, A_u = P.A, None if lin.A_u is None else lin.A_u.A
    else:

        def view(a):
            # (*lead, B, *shape) -> (*lead, 1, B, *shape): one value per neuron, shared by the rows
            ad = data(a)
            if ad.ndim == data(lin.A_l).ndim:
                return a
            k = ad.ndim - layer_ndim - 1
            return ops.reshape(a, (*ad.shape[:k], 1, *ad.shape[k:]))

        def wrap(A):
            return A

        A_l, A_u = lin.A_l, lin.A_u

    # the layer axes of a row: a patch's (C, p, p), or the layer's own
    n = 3 if isinstance(lin.A_l, Patches) else layer_ndim
    # a patch shared by every sample and position dots with a whole map by a convolution
    by_conv = isinstance(lin.A_l, Patches) and patches.shared(P, data(P.A).ndim - 7)
    s_l, s_u = view(rel.slope_l), view(rel.slope_u)
    # DeepPoly's lower intercepts are 0: their dots would add exact zeros
    i_l = None if _is_zero(rel.icpt_l) else rel.icpt_l
    i_u = None if _is_zero(rel.icpt_u) else rel.icpt_u
    if not by_conv:
        i_l, i_u = (None if i is None else view(i) for i in (i_l, i_u))

    def side(A, bias, s_pos, i_pos, s_neg, i_neg):
        if by_conv:
            A_new, _ = ops.relu_backstep(A, s_pos, s_neg, None, None, n)
            A_pos = ops.relu(A)
            for half, i in ((A_pos, i_pos), (ops.sub(A, A_pos), i_neg)):
                if i is not None:
                    bias = ops.add(bias, patches.dot(P.with_A(half), i))
            return wrap(A_new), bias
        # one fused pass (ops.relu_backstep): A+ s_pos + A- s_neg and <A+, i_pos> + <A-, i_neg>
        A_new, shift = ops.relu_backstep(A, s_pos, s_neg, i_pos, i_neg, n)
        if i_pos is not None or i_neg is not None:
            bias = ops.add(bias, shift)
        return wrap(A_new), bias

    new_A_l, b_l = side(A_l, lin.b_l, s_l, i_l, s_u, i_u)
    if A_u is None:
        return LinearBounds(new_A_l, b_l, None, None)
    new_A_u, b_u = side(A_u, lin.b_u, s_u, i_u, s_l, i_l)
    return LinearBounds(new_A_l, b_l, new_A_u, b_u)


def _is_zero(a) -> bool:
    """Tell whether ``a`` is a constant array of zeros (not on the tape): its products vanish.

    A broadcast constant (every stride 0, as ``relax.deeppoly``'s lower intercept) is
    checked by its one stored value instead of a pass over the whole array.
    """
    if needs_grad(a):
        return False
    ad = data(a)
    if ad.size and not any(ad.strides):
        return not bool(ad[(0,) * ad.ndim])
    return not bool(get_xp(ad).any(ad))


def backsubstitute(
    layers, params, shapes, pre: dict, lin: LinearBounds, relaxations: dict | None = None
) -> LinearBounds:
    """Walk ``lin`` (on the output of ``layers``) back to their input.

    ``pre[i]`` is the Box of the input of ReLU layer i; ``shapes[i]`` the
    per-sample input shape of layer i (``shapes[len(layers)]`` its output).
    ``relaxations[i]``, where given, replaces DeepPoly's relaxation of ReLU i
    (alpha-CROWN's optimised lower slopes); it must be sound on ``pre[i]``.
    Patches stay patches while a row's window is smaller than the map it lies on
    (``patches_pay``) and become dense rows (``to_dense``) from the first layer where not.
    """
    for i in reversed(range(len(layers))):
        layer = layers[i]
        if isinstance(lin.A_l, Patches) and not patches_pay(layer, lin.A_l.size, shapes[i]):
            lin = to_dense(lin, shapes[i + 1])
        if isinstance(layer, ReLU):
            if relaxations is not None and i in relaxations:
                rel = relaxations[i]
            else:
                rel = relax.deeppoly(pre[i].lb, pre[i].ub)
            lin = relu_T(rel, len(shapes[i]), lin)
        else:
            lin = affine_T(layer, params[i], shapes[i], shapes[i + 1], lin)
    return lin


def patches_pay(layer, size: int, in_shape) -> bool:
    """Tell whether patches of side ``size`` should cross ``layer`` as patches.

    Patches cross convolutions, Normalize and ReLUs; they pay while the window on the
    layer's input, p' x p' (p' = (p - 1) s + k after a convolution), has fewer entries
    than the map H x W there: then each row costs C p'^2 numbers instead of C H W.
    """
    if isinstance(layer, (ReLU, Normalize)):
        return True
    if not isinstance(layer, Conv2d):
        return False
    side = patches.grown(layer, size)
    return side * side < in_shape[-2] * in_shape[-1]


def to_dense(lin: LinearBounds, map_shape) -> LinearBounds:
    """Patches on a map (C, H, W) -> the same rows as dense coefficients (exact).

    Shapes: rows (*lead, B or 1, O, Hk, Wk) -> dense rows first, (*lead, O Hk Wk, B or 1, ...).
    """
    rows_hw = lin.A_l.rows_hw

    def side(P, bias):
        A = ops.swapaxes(patches.to_dense(P, map_shape), -5, -4)
        return A, ops.swapaxes(patches.dense_bias(bias, rows_hw), -1, -2)

    return _each_side(lin, side)


def concretize(lin: LinearBounds, box: Box) -> Box:
    """Bound ``lin`` over the input ``box``: A_l+ l + A_l- u + b_l, A_u+ u + A_u- l + b_u.

    Shapes: A (*lead, S, B or 1, *in), box (*lead, B, *in) -> Box (*lead, B, S); its ub is
    None for a lower-only ``lin``. Patches (rows (O, Hk, Wk)) give S = O Hk Wk.
    Sound: each coordinate of x in [l, u] is at its worst end for A x: l where the
    coefficient is positive, u where negative (= A c - |A| r with centre c, radius r).
    """
    if isinstance(lin.A_l, Patches):
        # as A c -+ |A| r: a shared patch dots by a convolution, others by their windows
        c, r = box.center, box.radius
        rows_hw, sites = lin.A_l.rows_hw, lin.A_l.sites
        windows = {}

        def dot(P, v):
            # both sides read the same windows of c and r
            if not patches.shared(P, data(P.A).ndim - 7) and id(v) not in windows:
                windows[id(v)] = patches.window(v, P)
            return patches.dot(P, v, windows.get(id(v)))

        def bound(P, b, sign):
            spread = dot(P.with_A(ops.abs(P.A)), r)
            center = dot(P, c)
            value = ops.add(center, spread) if sign > 0 else ops.sub(center, spread)
            return patches.dense_bias(ops.add(value, b), rows_hw, sites)

    else:
        n = len(input_shape(box))
        # (*lead, B, *in) -> (*lead, 1, B, *in): one box for every row
        ends = tuple(
            ops.reshape(e, (*data(e).shape[: -n - 1], 1, *data(e).shape[-n - 1 :]))
            for e in (box.lb, box.ub)
        )

        def bound(A, b, sign):
            lo, hi = ends if sign < 0 else ends[::-1]
            # one fused pass: <A+, lo> + <A-, hi> (ops.relu_backstep without its slopes)
            _, value = ops.relu_backstep(A, None, None, lo, hi, n)
            return ops.swapaxes(ops.add(value, b), -1, -2)

    lb = bound(lin.A_l, lin.b_l, -1)
    if lin.A_u is None:
        return Box(lb, None)
    return Box(lb, bound(lin.A_u, lin.b_u, +1))


# ---------------------------------------------------------------- the two methods


def deeppoly(
    net,
    theta,
    box: Box,
    C=None,
    budget_bytes: float = 4e9,
    *,
    use_patches: bool = True,
    skip_stable: bool = True,
    upper: bool = True,
):
    """DeepPoly (= CROWN) bounds on the output of ``net`` (or on C @ output) over ``box``.

    Every ReLU input is bounded by back-substitution to the input, using the
    bounds of the ReLUs before it; then the output is. A ReLU input with no ReLU
    and at most one weighted layer before it takes IBP's bounds, which equal
    back-substitution's there (``_ibp_is_exact``).
    ``use_patches``: the neurons of a conv layer are back-substituted as patches
    (``patches.py``) where that is cheaper; the same bounds as dense rows.
    ``skip_stable``: a neuron that one back-substitution step already proves stable
    (``_one_step``) is not back-substituted further: the same output bounds (full
    back-substitution would prove it stable too, so its relaxation is the same exact
    line), but ``pre`` holds the one-step bounds for those neurons. What is skipped
    (``_unstable_picks``): channels of a conv map stable everywhere, and (sample,
    position) sites with no unstable neuron (``_sites_bounds``); each sample's stable
    neurons of a dense layer.
    ``upper=False`` back-substitutes only the lower side of the output (a loss needs no
    more), at about half the cost of that last step; ``out.ub`` is then None.
    Returns ``(out, pre)`` like ``ibp.ibp``.
    """
    relus = [k for k, layer in enumerate(net.layers) if isinstance(layer, ReLU)]
    targets = [k for k in relus if not _ibp_is_exact(net, k)] + [len(net.layers) - 1]
    room = [budget_bytes]  # what the tape may still hold (``_recompute``)
    params = net.unravel(theta)
    shapes = net.shapes(input_shape(box))
    pre = {}
    for k in relus:
        if k not in targets:
            pre[k] = box
            for i in range(k):
                pre[k] = ibp_domain.affine(net.layers[i], params[i], pre[k], shapes[i + 1])
            continue
        if skip_stable and any(i < k for i in pre):
            pre[k] = _skipping_stable(net, theta, box, C, pre, k, budget_bytes, room, use_patches)
            continue
        recompute = _recompute(room, _tape_bytes(net, theta, box, C, k, use_patches))
        args = (net, theta, box, C, pre, k, budget_bytes, recompute, use_patches)
        pre[k] = _backsubstituted(*args)
    k = targets[-1]
    recompute = _recompute(room, _tape_bytes(net, theta, box, C, k, use_patches))
    out = _backsubstituted(
        net, theta, box, C, pre, k, budget_bytes, recompute, use_patches, upper=upper
    )
    return out, pre


def _skipping_stable(net, theta, box, C, pre, k, budget_bytes, room, use_patches) -> Box:
    """Bounds on the input of ReLU k, back-substituting only what one step leaves unstable.

    The picked neurons (``_unstable_picks``) get back-substitution's bounds, the others
    keep ``_one_step``'s (they are stable, so their relaxation is the same). ``room``:
    the tape's remaining budget (``_recompute``).
    """
    params, shapes = net.unravel(theta), net.shapes(input_shape(box))
    one_step = _one_step(net, params, shapes, pre, k)
    patched = use_patches and _patched(net, k)
    sites = patched and _patches_reach_input(net, shapes, k)
    pick = _unstable_picks(one_step, shapes[k], patched, sites)
    if pick is not None and not pick.rows.size:
        return one_step
    items = None if pick is None else pick.flat.size
    recompute = _recompute(room, _tape_bytes(net, theta, box, C, k, use_patches, items))
    args = (net, theta, box, C, pre, k, budget_bytes, recompute, use_patches)
    if pick is None:
        return _backsubstituted(*args)
    if pick.sites is not None:
        found = _sites_bounds(net, theta, box, pre, k, budget_bytes, recompute, pick)
    else:
        found = _backsubstituted(*args, slots=pick.rows)
    return _merged(one_step, found, pick.flat)


def crown_ibp(net, theta, box: Box, C=None, budget_bytes: float = 4e9, upper: bool = True):
    """CROWN-IBP bounds: IBP for every ReLU input, back-substitution for the output.

    Returns ``(out, pre)`` like ``ibp.ibp``; ``upper=False`` back-substitutes only the
    lower side of the output (``out.ub`` is None).
    """
    _, pre = ibp_domain.ibp(net, theta, box)
    k = len(net.layers) - 1
    recompute = _tape_bytes(net, theta, box, C, k, False) > budget_bytes
    out = _backsubstituted(net, theta, box, C, pre, k, budget_bytes, recompute, False, upper=upper)
    return out, pre


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


def _tape_bytes(net, theta, box: Box, C, k: int, use_patches: bool, items=None) -> float:
    """Estimated bytes of back-substituting target k on one tape.

    ``items``: the (sample, neuron) rows picked (``Picks.flat.size``); all of them when None.
    """
    shapes, _, B, P = _sizes(net, theta, box)
    if items is None:
        items = numel(_target_shape(net, shapes, C, k)) * B
    patched = use_patches and _patched(net, k)
    itemsize = data(box.lb).dtype.itemsize
    return items * P * _bytes_per_row(net, shapes, k, itemsize, patched, taped=True)


def _recompute(room: list, nbytes: float) -> bool:
    """Tell whether a target of ``nbytes`` must be recomputed: it no longer fits ``room[0]``.

    A target that fits is taped and its bytes are taken from the room, so that the targets
    taped together stay within the budget.
    """
    if nbytes > room[0]:
        return True
    room[0] -= nbytes
    return False


def _backsubstituted(
    net,
    theta,
    box: Box,
    C,
    pre: dict,
    k: int,
    budget_bytes: float,
    recompute: bool,
    use_patches: bool,
    upper: bool = True,
    slots=None,
) -> Box:
    """Bounds on the input of layer k (a ReLU) or, for the last layer, on its spec-folded output.

    Chunked over rows (neurons or spec rows; whole channels for patches) and samples to
    fit ``budget_bytes``. With ``recompute`` each chunk is one ``ops.recompute`` node (its
    tape is rebuilt during backward); otherwise the chunks are taped as they run.
    ``upper=False`` carries only the lower side (its ub is None).
    ``slots`` (B, m) or (m,): sample b bounds only the neurons slots[b] (or slots),
    distinct; for patches (m,) channels. The result is then (*lead, B, m) (times H W for
    channels: (*lead, B, m H W)).
    """
    head = k == len(net.layers) - 1
    shapes, nlead, B, P = _sizes(net, theta, box)
    shape = _target_shape(net, shapes, C, k)
    patched = use_patches and _patched(net, k)
    # patches start a whole channel of a conv map at a time (rows (O, Hk, Wk))
    unit = numel(shape[1:]) if patched else 1
    item = _bytes_per_row(net, shapes, k, data(box.lb).dtype.itemsize, patched) * P * unit
    n_units = numel(shape) // unit if slots is None else slots.shape[-1]
    unit_chunk, batch_chunk = plan_chunks(n_units, B, item, budget_bytes)
    order = sorted(pre)

    def rows_of(units):
        def fn(theta, lo, up, C, *pre_flat):
            params = net.unravel(theta)
            bounds = _pre_boxes(order, pre_flat)
            if head:
                hd = fold_spec(net.layers[-1], params[-1], C)
                A = _rows_first(ops.getitem(hd.W, (Ellipsis, units, slice(None))), 1)
                b = _rows_first(ops.getitem(hd.b, (Ellipsis, units)), 0)
            elif patched:
                A, b = patches.eye(lo, nlead, shape, units)
            else:
                A, b = _identity_rows(lo, nlead, shape, units)
            start = LinearBounds(A, b, A, b) if upper else LinearBounds(A, b, None, None)
            out = concretize(
                backsubstitute(net.layers[:k], params, shapes, bounds, start), Box(lo, up)
            )
            return stack(out) if upper else ops.reshape(out.lb, (1, *data(out.lb).shape))

        return fn

    parts = []
    for bs in slices(B, batch_chunk):
        lo, up, *pre_flat = _batch_args(box, pre, order, shapes, bs)
        args = [lo, up, None if C is None else _take(C, 0, bs, B), *pre_flat]
        rows = []
        for us in slices(n_units, unit_chunk):
            if slots is not None:
                us = slots[us] if slots.ndim == 1 else slots[bs, us]
            fn = rows_of(us)
            rows.append(ops.recompute(fn, theta, *args) if recompute else fn(theta, *args))
        parts.append(cat(rows, axis=-1))
    both = cat(parts, axis=-2)
    if slots is None:
        both = ops.reshape(both, (*data(both).shape[:-1], *shape))
    return unstack(both) if upper else Box(ops.getitem(both, 0), None)


def _one_step(net, params, shapes, pre: dict, k: int) -> Box:
    """Bounds on the input of ReLU k from one back-substitution step, to find stable neurons.

    With j the last ReLU before k: back through the affine layers j+1..k-1 and ReLU j
    (DeepPoly's relaxation on pre[j]), then concretised over pre[j] itself. A row
    shared by all samples concretises to the affine layers' image of the box
    [s_l l + i_l, s_u u + i_u] (each line at its worst end of [l, u]), computed here by
    IBP (exact for one weighted layer, looser for several).
    Sound, and never tighter than full back-substitution: concretising the rows of
    ReLU j's input over their own DeepPoly bounds can only lose (docs/relaxations.md,
    "Skipping stable neurons"), so a neuron stable here is stable for DeepPoly too.
    """
    j = max(i for i in pre if i < k)
    rel = relax.deeppoly(pre[j].lb, pre[j].ub)
    lo = ops.add(ops.mul(rel.slope_l, pre[j].lb), rel.icpt_l)
    up = ops.add(ops.mul(rel.slope_u, pre[j].ub), rel.icpt_u)
    out = Box(lo, up)
    for i in range(j + 1, k):
        out = ibp_domain.affine(net.layers[i], params[i], out, shapes[i + 1])
    return out


@dataclass(frozen=True)
class Picks:
    """The neurons of one layer that DeepPoly back-substitutes (``_unstable_picks``).

    ``rows``: for a conv map (C, H, W) its picked channels (m,); for dense rows, each
    sample's neurons (B, m), or (m,) for every sample. ``sites``: None, or the picked
    (sample, position) sites (n,) of a conv map, sorted flat indices into (B, H, W).
    ``flat``: where the found bounds go in the layer's bounds flattened per sample,
    (B *shape), in the order of the found ones: (n, m) for sites, (B, m H W) for
    channels, (B, m) for dense rows.
    """

    rows: Array
    sites: Array | None
    flat: Array


def _unstable_picks(one_step: Box, shape: tuple, patched: bool, sites: bool):
    """Pick the neurons to back-substitute: those that ``one_step`` leaves unstable.

    A neuron counts when unstable for any population member. For patches (conv map
    (C, H, W)): the channels with an unstable neuron anywhere and, when ``sites`` and
    they are at most SITE_FRACTION of the B H W, the (sample, position) sites with one. For
    dense rows: each sample's unstable neurons, padded with stable ones to the most any
    sample has, or the neurons unstable for any sample when they are fewer.
    Shapes: one_step (*lead, B, *shape) -> ``Picks``, or None for every neuron.
    """
    lb, ub = data(one_step.lb), data(one_step.ub)
    xp = get_xp(lb)
    B = lb.shape[lb.ndim - len(shape) - 1]
    unstable = ((lb < 0) & (ub > 0)).reshape(-1, B, *shape).any(axis=0)
    N = numel(shape)
    if patched:
        C, L = shape[0], numel(shape[1:])
        unstable = unstable.reshape(B, C, L)
        channels = xp.flatnonzero(unstable.any(axis=(0, 2)))
        at = xp.flatnonzero(unstable.any(axis=1))
        if sites and len(at) <= SITE_FRACTION * B * L:
            # site (b, l), channel c: flat index b C L + c L + l
            flat = (at // L * N + at % L)[:, None] + channels * L
            return Picks(channels, at, flat)
        if len(channels) == C:
            return None
        flat = xp.arange(B)[:, None] * N + (channels[:, None] * L + xp.arange(L)).ravel()
        return Picks(channels, None, flat)
    unstable = unstable.reshape(B, N)
    m = int(unstable.sum(axis=1).max())
    anywhere = xp.flatnonzero(unstable.any(axis=0))
    if min(m, len(anywhere)) > SITE_FRACTION * N:
        return None
    if len(anywhere) <= m:
        # the neurons unstable for some sample are no more rows than the busiest sample's,
        # and rows shared by the batch cross the layers before the first ReLU once
        rows = anywhere
    else:
        # int8 keys (not bools, on either backend): any sort puts the unstable neurons (0) first
        rows = xp.argsort((~unstable).astype(xp.int8), axis=1)[:, :m]
    return Picks(rows, None, xp.arange(B)[:, None] * N + rows)


def _patches_reach_input(net, shapes, k: int) -> bool:
    """Tell whether patches started at the input of layer k stay patches down to the input."""
    size = 1
    for i in reversed(range(k)):
        layer = net.layers[i]
        if not patches_pay(layer, size, shapes[i]):
            return False
        if isinstance(layer, Conv2d):
            size = patches.grown(layer, size)
    return True


def _sites_bounds(net, theta, box: Box, pre: dict, k: int, budget_bytes, recompute, pick) -> Box:
    """Back-substituted bounds on the input of ReLU k, a conv map, at the picked sites only.

    ``pick.sites`` (sorted) are (sample, position) pairs of the map (C, H, W), each
    back-substituted with its ``pick.rows`` channels as patches (``Patches.sites``).
    Shapes: -> Box (*lead, n, m).
    Chunked over the sites to fit ``budget_bytes``; a chunk takes only the samples it
    covers. ``recompute`` as in ``_backsubstituted``.
    """
    shapes, nlead, B, P = _sizes(net, theta, box)
    shape = shapes[k]
    per_sample = numel(shape[1:])
    item = _bytes_per_row(net, shapes, k, data(box.lb).dtype.itemsize, True) * P * len(pick.rows)
    order = sorted(pre)

    def rows_of(picked):
        def fn(theta, lo, up, *pre_flat):
            params = net.unravel(theta)
            bounds = _pre_boxes(order, pre_flat)
            A, b = patches.eye(lo, nlead, shape, pick.rows, picked)
            lin = backsubstitute(net.layers[:k], params, shapes, bounds, LinearBounds(A, b, A, b))
            return stack(concretize(lin, Box(lo, up)))

        return fn

    parts = []
    for s in slices(len(pick.sites), max(1, int(budget_bytes // item))):
        picked = pick.sites[s]
        first, last = int(picked[0]) // per_sample, int(picked[-1]) // per_sample
        args = _batch_args(box, pre, order, shapes, slice(first, last + 1))
        fn = rows_of(picked - first * per_sample)
        parts.append(ops.recompute(fn, theta, *args) if recompute else fn(theta, *args))
    return unstack(cat(parts, axis=-2))


def _merged(one_step: Box, found: Box, flat) -> Box:
    """The back-substituted bounds ``found`` at ``flat``, the one-step bounds elsewhere.

    Shapes: one_step (*lead, B, *shape); found (*lead, *F) with ``flat`` (F) its places
    in (B *shape) (``Picks.flat``) -> like one_step.
    """
    nl = data(found.lb).ndim - flat.ndim

    def side(o, f):
        od, fd = data(o), data(f)
        whole = ops.reshape(o, (*od.shape[:nl], -1))
        values = ops.reshape(f, (*fd.shape[:nl], -1))
        return ops.reshape(ops.put(whole, flat.ravel(), values, -1), od.shape)

    return Box(side(one_step.lb, found.lb), side(one_step.ub, found.ub))


def _patched(net, k: int) -> bool:
    """Tell whether the neurons of the input of layer k start back-substitution as patches.

    They do when they are a convolution's outputs (each depends on a window only).
    """
    return k < len(net.layers) - 1 and isinstance(net.layers[k - 1], Conv2d)


def _batch_args(box: Box, pre: dict, order, shapes, bs: slice) -> list:
    """The samples ``bs`` of the input box and of the ReLU bounds ``pre[i]``, i in ``order``.

    Returns [lb, ub, pre[i].lb, pre[i].ub, ...]: a chunk's arguments (``ops.recompute``
    takes arrays, not boxes); ``_pre_boxes`` turns the tail back into boxes.
    """
    nlead = data(box.lb).ndim - len(input_shape(box)) - 1
    B = data(box.lb).shape[nlead]
    args = [_take(box.lb, nlead, bs, B), _take(box.ub, nlead, bs, B)]
    for i in order:
        axis = data(pre[i].lb).ndim - len(shapes[i]) - 1
        args += [_take(pre[i].lb, axis, bs, B), _take(pre[i].ub, axis, bs, B)]
    return args


def _pre_boxes(order, pre_flat) -> dict:
    """{i: Box} from ``_batch_args``' flat tail [pre[i].lb, pre[i].ub, ...], i in ``order``."""
    return {i: Box(pre_flat[2 * j], pre_flat[2 * j + 1]) for j, i in enumerate(order)}


def _take(a, axis: int, bs: slice, B: int):
    """Select the samples ``bs`` of ``a`` along its batch axis (``a`` itself when all B)."""
    if bs == slice(0, B):
        return a
    return ops.getitem(a, (slice(None),) * axis + (bs,))


def _rows_first(a, layer_ndim: int):
    """(*lead, B, S, *shape) -> (*lead, S, B, *shape), in the memory order (*lead, *shape, S, B).

    The spec's rows W' = C W come out of their GEMM sample-major; a convolution before the
    last ReLU wants the samples innermost, so they are copied once here (small: S rows
    of the last hidden layer) rather than read across cache lines in every later pass.
    """
    ad = data(a)
    nb = ad.ndim - layer_ndim - 2
    rows = ops.swapaxes(a, nb, nb + 1)
    if layer_ndim == 0 or ad.shape[nb] == 1:
        return rows
    order = (*range(nb), *range(nb + 2, ad.ndim), nb, nb + 1)
    moved = ops.transpose(rows, order)
    copied = ops.broadcast_to(moved, data(moved).shape)  # a C-contiguous copy
    inverse = tuple(sorted(range(ad.ndim), key=order.__getitem__))
    return ops.transpose(copied, inverse)


def _identity_rows(like, nlead: int, shape, rows):
    """Rows ``rows`` of the identity on a layer: the start of back-substitution for its neurons.

    ``rows`` is a slice or an index array of neurons, the same for every sample, or
    (B, m) indices, row s of sample b being neuron rows[b, s].
    Shapes: -> A (*lead, n, 1, *shape) or (*lead, m, B, *shape), b (*lead, n, 1) or
    (*lead, m, B), with lead = (1,) in a population.
    """
    xp = get_xp(data(like))
    N = numel(shape)
    lead = (1,) * nlead
    dtype = data(like).dtype
    if getattr(rows, "ndim", 1) == 2:
        B, m = rows.shape
        eye = xp.zeros((m, B, N), dtype=dtype)
        eye[xp.arange(m)[:, None], xp.arange(B), rows.T] = 1
        return eye.reshape(*lead, m, B, *shape), xp.zeros((*lead, m, B), dtype=dtype)
    picked = xp.arange(N)[rows]
    eye = xp.zeros((len(picked), N), dtype=dtype)
    eye[xp.arange(len(picked)), picked] = 1
    return eye.reshape(*lead, len(picked), 1, *shape), xp.zeros(
        (*lead, len(picked), 1), dtype=dtype
    )


def _bytes_per_row(
    net, shapes, k: int, itemsize: int, patched: bool = False, taped: bool = False
) -> float:
    """Estimated memory of back-substituting one row of one sample from layer k to the input.

    Counts, per layer crossed, the coefficient arrays on both sides of the layer
    and a convolution's im2col columns, for both bounds, and keeps them all:
    the tape of a recomputed chunk holds every layer's arrays at once. A row that
    is a patch counts its window C p^2 instead of the map C H W while it stays one.
    ``taped``: only what a tape keeps once the chunk is done: each layer's input
    coefficients and about as much again for its VJP (a ReLU step's fields, a patch's
    windows); the columns and the other temporaries are gone by then. Measured on CNN5
    (batch 8, gradient in theta) the tape held about 1.5x the input coefficients.
    """
    total = 0
    size = 1 if patched else None
    for i in reversed(range(k)):
        layer = net.layers[i]
        if size is not None and not patches_pay(layer, size, shapes[i]):
            size = None
        if size is not None:
            C_out = shapes[i + 1][0]
            n_out = C_out * size * size
            if isinstance(layer, Conv2d):
                size = patches.grown(layer, size)
            n_in = shapes[i][0] * size * size
            # a patch's transposed convolution holds its input and output (and as much again)
            per_side = 6 * n_in if isinstance(layer, ReLU) else n_out + 2 * n_in
        else:
            n_in, n_out = numel(shapes[i]), numel(shapes[i + 1])
            cols = 0
            if isinstance(layer, Conv2d):
                cols = layer.in_channels * layer.kernel_size**2 * numel(shapes[i + 1][1:])
            per_side = 6 * n_in if isinstance(layer, ReLU) else n_in + n_out + cols
        total += 2 * (2 * n_in if taped else per_side)
    return float(total * itemsize)
