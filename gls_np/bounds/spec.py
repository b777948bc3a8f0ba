"""The verification problem: the input set, the output specification, memory plans.

- ``Box(lb, ub)``: an axis-aligned box, the input set of every domain (the L-inf
  ball ``clip(x +- eps, 0, 1)``, see ``linf_box``) and IBP's abstract value.
- ``margin_spec(y, K)``: the rows e_y - e_j (j != y) of the robustness
  specification: the network is certified on x when every margin is positive.
- ``fold_spec``: the specification C folded into the last linear layer,
  W' = C W and b' = C b. Bounding C z with z = W h + b through (W', b') is
  tighter than combining bounds on the logits z (the dependence between logits
  cancels), and it is how auto_LiRPA's reference numbers are defined.
- ``plan_chunks``: how many neurons and samples to process at once under a
  memory budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .. import ops
from ..backend import Array, get_xp, np
from ..layers import Linear, with_batch_axes
from ..tensor import data


@dataclass(frozen=True)
class Box:
    """The interval lb <= v <= ub, elementwise.  Shapes: lb, ub (*lead, B, *layer_shape)."""

    lb: Array
    ub: Array

    @property
    def center(self):
        """Return the centre c = (lb + ub) / 2."""
        return ops.mul(ops.add(self.lb, self.ub), 0.5)

    @property
    def radius(self):
        """Return the radius r = (ub - lb) / 2."""
        return ops.mul(ops.sub(self.ub, self.lb), 0.5)


def input_shape(box: Box) -> tuple:
    """Return the per-sample shape (C, H, W) of an input box (B, C, H, W) or (1, B, C, H, W)."""
    return tuple(data(box.lb).shape[-3:])


def linf_box(x, eps: float, lo: float = 0.0, hi: float = 1.0) -> Box:
    """Build the L-inf ball of radius ``eps`` around ``x``, clipped to the data range [lo, hi].

    Shapes: x (B, C, H, W) -> Box of (B, C, H, W).
    """
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    xd = data(x)
    return Box(get_xp(xd).clip(xd - eps, lo, hi), get_xp(xd).clip(xd + eps, lo, hi))


def margin_spec(y, num_classes: int, dtype="float64") -> Array:
    """Build the margin specification C with rows e_y - e_j for every class j != y, j increasing.

    Shapes: y (B,) integer -> C (B, K - 1, K).
    (C z)[b, i] = z[y_b] - z[j_i] > 0 for all i means class y_b wins at the logits z.
    """
    xp = get_xp(y)
    y = xp.asarray(y)
    K = int(num_classes)
    if y.ndim != 1 or y.dtype.kind not in "iu":
        raise ValueError(
            f"labels y must be a 1-D integer array, got shape {y.shape} dtype {y.dtype}"
        )
    if K < 2:
        raise ValueError(f"num_classes must be >= 2, got {K}")
    if y.size and (int(y.min()) < 0 or int(y.max()) >= K):
        raise ValueError(f"labels must lie in [0, {K}), got range [{int(y.min())}, {int(y.max())}]")
    rows = xp.arange(K - 1)
    others = rows[None, :] + (rows[None, :] >= y[:, None])  # the classes j != y, in order
    classes = xp.arange(K)
    own = classes[None, None, :] == y[:, None, None]
    other = classes[None, None, :] == others[:, :, None]
    return own.astype(np.dtype(dtype)) - other.astype(np.dtype(dtype))


@dataclass(frozen=True)
class Head:
    """The last linear layer with the specification folded in: out = W h + b per sample.

    Shapes: W (*lead, B or 1, S, N), b (*lead, B or 1, S); S = K without a spec.
    """

    W: Array
    b: Array


def fold_spec(layer, p, C=None) -> Head:
    """W' = C W, b' = C b for the network's last layer (W, b), or (W, b) itself when C is None.

    Shapes: W (*lead, K, N), b (*lead, K), C (B, S, K) -> Head with W' (*lead, B, S, N).
    Sound because exact: C (W h + b) = (C W) h + C b.
    """
    if not isinstance(layer, Linear):
        raise ValueError(f"the network must end in a linear layer, got {layer.type!r}")
    W, b = p["weight"], p["bias"]
    Wd = data(W)
    lead = Wd.shape[:-2]
    W = ops.reshape(W, (*lead, 1, *Wd.shape[-2:]))
    b = ops.reshape(b, (*lead, 1, 1, Wd.shape[-2]))
    if C is None:
        return Head(W, ops.reshape(b, (*lead, 1, Wd.shape[-2])))
    Wc = ops.matmul(C, W)
    bc = ops.matmul(b, ops.swapaxes(C, -1, -2))
    return Head(Wc, ops.reshape(bc, data(bc).shape[:-2] + data(bc).shape[-1:]))


def add_bias(y, b, out_ndim: int):
    """Add b to y, broadcast over y's batch axes; b may be None (a Flatten).

    Shapes: y (*lead, *batch, *out), b (*lead, *out) or broadcastable -> y's shape.
    """
    if b is None:
        return y
    bd = data(b)
    return ops.add(y, with_batch_axes(b, bd.ndim - out_ndim, data(y).ndim - bd.ndim))


def matvec(W, v):
    """W v per sample.  Shapes: W (*lead, B or 1, S, N), v (*lead, B, N) -> (*lead, B, S)."""
    Wd = data(W)
    if Wd.shape[-3] == 1:
        # one matrix for the whole batch: a single GEMM v W^T instead of B products
        Wm = ops.reshape(W, (*Wd.shape[:-3], *Wd.shape[-2:]))
        return ops.matmul(v, ops.swapaxes(Wm, -1, -2))
    out = ops.matmul(W, ops.reshape(v, (*data(v).shape, 1)))
    return ops.reshape(out, data(out).shape[:-1])


def plan_chunks(rows: int, batch: int, bytes_per_item: float, budget_bytes: float):
    """Chunk sizes (row_chunk, batch_chunk) so that one chunk fits the budget.

    An item is one (row, sample) pair, e.g. one neuron's back-substitution for one
    input. Rows are split first (the batch stays whole, so GEMMs stay large); the
    batch only when a single row of the whole batch does not fit.
    """
    per_row = bytes_per_item * batch
    if per_row <= budget_bytes:
        return max(1, min(rows, int(budget_bytes // per_row))), batch
    return 1, max(1, min(batch, int(budget_bytes // bytes_per_item)))


def slices(n: int, size: int) -> list:
    """[slice(0, size), slice(size, 2 size), ...] covering range(n)."""
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def cat(parts, axis: int):
    """Concatenate chunk results (a single part passes through untouched)."""
    return parts[0] if len(parts) == 1 else ops.concatenate(parts, axis=axis)


def stack(box: Box):
    """Stack lb and ub into one array (2, ...): the single output ``ops.recompute`` needs."""
    lb, ub = box.lb, box.ub
    return ops.concatenate(
        [ops.reshape(lb, (1, *data(lb).shape)), ops.reshape(ub, (1, *data(ub).shape))], axis=0
    )


def unstack(both) -> Box:
    """Inverse of ``stack``."""
    return Box(ops.getitem(both, 0), ops.getitem(both, 1))


def numel(shape) -> int:
    """Count the entries of a per-sample shape."""
    return math.prod(shape)
