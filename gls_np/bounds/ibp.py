"""Interval bound propagation (Gowal et al. 2018; paper Sec. 2.2).

The abstract value is a ``Box``. An affine layer maps its centre and radius,
c' = W c + b and r' = |W| r (the tightest box around the image of a box), and a
ReLU maps the bounds themselves, [relu(l), relu(u)] (relu is monotone).
"""

from __future__ import annotations

from .. import ops
from ..backend import get_xp, np, to_host
from ..layers import Flatten, Normalize, ReLU, with_batch_axes
from ..tensor import data
from .spec import Box, add_bias, fold_spec, input_shape, matvec


def affine(layer, p, box: Box, out_shape) -> Box:
    """Bound an affine layer's image of ``box`` by a box.

    Shapes: (*lead, B, *in) -> (*lead, B, *out).  Math: c' = W c + b, r' = |W| r.
    Sound: for |v - c| <= r elementwise, |W v - W c| <= |W| |v - c| <= |W| r.
    The halves of c = (l + u) / 2 and r = (u - l) / 2 are folded into W (exact in
    floating point: a power of two), which saves two passes over the activations.
    A Flatten or Normalize is increasing in every coordinate, so it maps the
    bounds themselves: [f(l), f(u)] is its exact image.
    """
    if isinstance(layer, (Flatten, Normalize)):
        return Box(layer.forward(p, box.lb), layer.forward(p, box.ub))
    half = {**p, "weight": ops.mul(p["weight"], 0.5)}
    s, d = ops.add(box.lb, box.ub), ops.sub(box.ub, box.lb)
    c = add_bias(layer.linear(half, s), layer.bias(p, box.lb), len(out_shape))
    r = layer.linear_abs(half, d)
    return Box(ops.sub(c, r), ops.add(c, r))


def relu(box: Box) -> Box:
    """[relu(l), relu(u)]: exact for a monotone elementwise map.  Shapes: unchanged."""
    return Box(ops.relu(box.lb), ops.relu(box.ub))


def head(hd, box: Box) -> Box:
    """Bound the spec-folded last layer out = W' h + b' (per-sample W') by a box.

    Shapes: box (*lead, B, N), W' (*lead, B or 1, S, N) -> (*lead, B, S).
    """
    # the halves of the centre and radius are applied to the small (B, S) results
    c = ops.add(ops.mul(matvec(hd.W, ops.add(box.lb, box.ub)), 0.5), hd.b)
    r = ops.mul(matvec(ops.abs(hd.W), ops.sub(box.ub, box.lb)), 0.5)
    return Box(ops.sub(c, r), ops.add(c, r))


def distinct_rows(M):
    """Return the distinct rows of M and where each row of M is among them (np.unique's pair).

    Shapes: M (N, K) host array -> rows (U, K), inv (N,) with rows[inv] == M.
    Rows are first told apart by one random projection (a 1-D sort, where
    np.unique(axis=0) sorts whole rows: ~20 ms for a 512-sample margin spec); the
    answer is checked exactly, and a projection collision falls back to np.unique.
    """
    key = M.astype(np.float64) @ np.random.default_rng(0).random(M.shape[1])
    _, first, inv = np.unique(key, return_index=True, return_inverse=True)
    rows = M[first]
    if not np.array_equal(rows[inv], M):
        rows, inv = np.unique(M, axis=0, return_inverse=True)
    return rows, inv.reshape(-1)


def _spec_head(layer, p, box: Box, C):
    """Bound C (W h + b), the specification on the last Linear layer, by a box; or None.

    Shapes: box (*lead, B, N), W (*lead, K, N), C (B, S, K) -> Box (*lead, B, S).
    Math: c' = C (W c + b), r' = |C W| r: what ``head`` computes on the folded layer,
    without the (*lead, B, S, N) matrices C W and |C W| per sample. The rows of C
    repeat (a margin spec has at most K (K - 1) distinct ones), so with its U
    distinct rows C_u, |C_u W| (U, N) @ r^T (N, B) gives every |C[b, s] W| r[b] in
    one GEMM. Returns None when C has too many distinct rows for that to pay.
    Sound because exact, as ``head``.
    """
    xp = get_xp(data(box.lb))
    B, S, K = data(C).shape
    rows, inv = distinct_rows(to_host(C).reshape(-1, K))
    if len(rows) > 32 * S:
        return None
    nl = data(p["weight"]).ndim - 2
    half = {"weight": ops.mul(p["weight"], 0.5)}
    s, d = ops.add(box.lb, box.ub), ops.sub(box.ub, box.lb)
    z = ops.add(layer.linear(half, s), with_batch_axes(p["bias"], nl, 1))
    c = matvec(C, z)
    Wu = ops.abs(ops.matmul(xp.asarray(rows, dtype=data(z).dtype), half["weight"]))
    E = ops.swapaxes(ops.matmul(Wu, ops.swapaxes(d, -1, -2)), -1, -2)
    idx = xp.asarray(inv.reshape((1,) * nl + (B, S)))
    r = ops.gather(ops.reshape(E, (*data(E).shape[:-1], 1, len(rows))), idx)
    return Box(ops.sub(c, r), ops.add(c, r))


def ibp(net, theta, box: Box, C=None):
    """IBP bounds on the output of ``net`` (or on C @ output) over the input ``box``.

    Parameters
    ----------
    net : Sequential
        Ends in a Linear layer (the spec is folded into it).
    theta : array or Tensor, (D,) or (P, D)
    box : Box
        The input set, (B, *in) or (1, B, *in) with a population.
    C : array (B, S, K), optional

    Returns
    -------
    out : Box (*lead, B, S)
    pre : dict {layer index: Box}
        The bounds on every ReLU's input.
    """
    params = net.unravel(theta)
    shapes = net.shapes(input_shape(box))
    pre = {}
    for i, (layer, p) in enumerate(zip(net.layers[:-1], params[:-1])):
        if isinstance(layer, ReLU):
            pre[i] = box
            box = relu(box)
        else:
            box = affine(layer, p, box, shapes[i + 1])
    out = None if C is None else _spec_head(net.layers[-1], params[-1], box, C)
    if out is None:
        out = head(fold_spec(net.layers[-1], params[-1], C), box)
    return out, pre
