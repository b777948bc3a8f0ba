"""Bounds on a network's outputs over an input box, in four relaxations (paper Sec. 2.2).

``compute(net, lower, upper, method, C=None, params=None)`` returns ``(lb, ub)``
with lb <= f(x) <= ub (or lb <= C f(x) <= ub) for every x with
lower <= x <= upper, where ``method`` is

- ``"ibp"``: interval bound propagation (``ibp.py``),
- ``"hbox"``: the hybrid box zonotope (``hbox.py``),
- ``"crown-ibp"``: IBP for hidden layers, back-substitution for the output (``crown.py``),
- ``"deeppoly"`` (alias ``"crown"``): back-substitution everywhere (``crown.py``).

All four are built from the differentiable primitives of ``gls_np.ops``: given
Tensors for ``params`` or the box, the bounds are on the tape.
"""

from __future__ import annotations

from .. import ops
from ..backend import get_xp
from ..layers import Linear
from ..tensor import Tensor, data
from . import crown, hbox, ibp
from .spec import Box, linf_box, margin_spec

METHODS = ("ibp", "hbox", "crown-ibp", "deeppoly")
ALIASES = {"crown": "deeppoly"}


def compute(
    net,
    lower,
    upper,
    method: str,
    C=None,
    params=None,
    *,
    max_memory_gb: float = 4.0,
    lower_only: bool = False,
):
    """Sound bounds on the logits (or on C @ logits) of ``net`` over the box [lower, upper].

    Parameters
    ----------
    net : Sequential
        A network ending in a Linear layer; its Normalize layer, if any, is part of it.
    lower, upper : array or Tensor, (B, C, H, W)
        The input box (the caller clips x +- eps to the data range, e.g. ``linf_box``).
    method : {"ibp", "hbox", "crown-ibp", "deeppoly", "crown"}
    C : array, (B, S, K), optional
        A linear specification, folded into the last layer (e.g. ``margin_spec``).
    params : array or Tensor, (P, n_params), optional
        A population of parameter vectors, bounded in one vectorised pass;
        default: the network's own ``theta``.
    max_memory_gb : float
        Budget for one chunk of HBox / back-substitution work (neurons and
        samples are chunked to fit). When a taped computation would not fit on
        one tape, chunks are recomputed during backward (``ops.recompute``).
    lower_only : bool
        Return ``(lb, None)``: CROWN-IBP and DeepPoly then back-substitute only the
        lower side of the output (what a robust loss needs), about half the work.

    Returns
    -------
    lb, ub : (B, K), (B, S) with C, with a leading P axis given ``params``.

    Shapes: lower, upper (B, C, H, W); C (B, S, K); params (P, D) -> lb, ub ([P,] B, S or K).
    Sound: every domain over-approximates each layer's image of its input set
    (the "Sound:" line of each step in ibp.py, hbox.py, crown.py and relax.py).
    """
    method, box, theta, C = _validated(net, lower, upper, method, C, params)
    budget = float(max_memory_gb) * 1e9
    if method == "ibp":
        out, _ = ibp.ibp(net, theta, box, C)
    elif method == "hbox":
        out = hbox.hbox_bounds(net, theta, box, C, budget)
    elif method == "crown-ibp":
        out, _ = crown.crown_ibp(net, theta, box, C, budget, upper=not lower_only)
    else:
        out, _ = crown.deeppoly(net, theta, box, C, budget, upper=not lower_only)
    return out.lb, None if lower_only else out.ub


def intermediate_bounds(net, lower, upper, method: str, params=None, *, max_memory_gb: float = 4.0):
    """Return the bounds ``method`` finds on the input of every ReLU layer.

    Returns ``{layer index: Box}`` with each Box ([P,] B, *layer_shape). CROWN-IBP's
    are IBP's. HBox is not chunked over the batch here (a diagnostic, for small batches).
    """
    method, box, theta, _ = _validated(net, lower, upper, method, None, params)
    budget = float(max_memory_gb) * 1e9
    if method in ("ibp", "crown-ibp"):
        _, pre = ibp.ibp(net, theta, box)
    elif method == "hbox":
        _, pre = hbox.hbox(net, theta, box)
    else:
        _, pre = crown.deeppoly(net, theta, box, None, budget)
    return pre


def _validated(net, lower, upper, method, C, params):
    """Check and convert the arguments of ``compute``; returns (method, box, theta, C)."""
    method = ALIASES.get(method, method)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {[*METHODS, *ALIASES]}")
    if not net.layers or not isinstance(net.layers[-1], Linear):
        raise ValueError("the network must end in a linear layer (the spec is folded into it)")
    lower, upper = _as_net_dtype(net, lower), _as_net_dtype(net, upper)
    lo, up = data(lower), data(upper)
    if lo.ndim != 4 or lo.shape != up.shape:
        raise ValueError(
            f"lower and upper must both be (B, C, H, W), got {lo.shape} and {up.shape}"
        )
    if net.input_shape is not None and tuple(lo.shape[1:]) != net.input_shape:
        raise ValueError(f"the input box must be (B, *{net.input_shape}), got {lo.shape}")
    if bool(get_xp(lo, up).any(lo > up)):
        raise ValueError("lower must be <= upper everywhere")
    K = net.layers[-1].out_features
    if C is not None:
        C = _as_net_dtype(net, C)
        if data(C).ndim != 3 or data(C).shape[0] != lo.shape[0] or data(C).shape[2] != K:
            raise ValueError(f"C must be (B={lo.shape[0]}, S, K={K}), got {data(C).shape}")
    theta = net.theta
    if params is not None:
        theta = _as_net_dtype(net, params)
        if data(theta).ndim != 2 or data(theta).shape[1] != net.n_params:
            raise ValueError(f"params must be (P, {net.n_params}), got {data(theta).shape}")
        # a shared input box carries a population axis of size 1
        lower = ops.reshape(lower, (1, *lo.shape))
        upper = ops.reshape(upper, (1, *up.shape))
    return method, Box(lower, upper), theta, C


def _as_net_dtype(net, a):
    """Arrays in the network's dtype and array module (Tensors are left as they are)."""
    if isinstance(a, Tensor):
        return a
    return get_xp(net.theta).asarray(a, dtype=net.dtype)


__all__ = ["ALIASES", "METHODS", "Box", "compute", "intermediate_bounds", "linf_box", "margin_spec"]
