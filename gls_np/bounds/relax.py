"""ReLU relaxations: the one file to audit for soundness.

Every domain asks this file how a ReLU ``y = max(v, 0)`` behaves on a neuron
whose input is known to lie in ``[l, u]``:

- ``split(l, u)``: the stability masks. A neuron is *active* when l >= 0 (y = v
  on the whole interval), *inactive* when u <= 0 (y = 0), *unstable* otherwise
  (l < 0 < u). The boundary cases l = 0 and u = 0 are stable, so every division
  below is by u - l > 0.
- ``deeppoly(l, u)``: the linear relaxation of DeepPoly (Singh et al. 2019) =
  CROWN (Zhang et al. 2018), Figure 2b of the paper:
  lambda v <= relu(v) <= u (v - l) / (u - l) on unstable neurons, with
  lambda = 1 where u > -l else 0; stable neurons are exact (slope 1 or 0).

Masks and lambda are piecewise-constant functions of (l, u); they are computed
from the bare arrays and enter the tape as constants. The upper slope
u / (u - l) and intercept -l u / (u - l) are built from the primitives and are
differentiated through l and u, as in auto_LiRPA.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import ops
from ..backend import Array, get_xp
from ..tensor import data, needs_grad


@dataclass(frozen=True)
class LinearRelaxation:
    """Per-neuron linear bounds of a ReLU on [l, u].

    slope_l v + icpt_l <= relu(v) <= slope_u v + icpt_u for every v in [l, u].
    Shapes: each field like l (``(*lead, B, *layer_shape)``).
    """

    slope_l: Array
    icpt_l: Array
    slope_u: Array
    icpt_u: Array


def split(lb, ub) -> tuple[Array, Array]:
    """Return the stability masks (active, unstable) of neurons with inputs in [lb, ub].

    Shapes: lb, ub (...) -> two boolean arrays (...). Inactive = neither.
    NOTE: l = 0 counts as active and u = 0 as inactive: both are exact there.
    """
    l, u = data(lb), data(ub)
    active = l >= 0
    unstable = (l < 0) & (u > 0)
    return active, unstable


def deeppoly(lb, ub) -> LinearRelaxation:
    """DeepPoly's ReLU relaxation on [lb, ub] (Singh et al. 2019, Sec. 4; paper Sec. 2.2).

    Shapes: lb, ub (*lead, B, *layer_shape) -> LinearRelaxation of that shape.
    Math: unstable (l < 0 < u): upper chord slope s = u / (u - l), intercept -s l;
    lower lambda v with lambda = 1[u > -l], intercept 0. Active: y = v. Inactive: y = 0.
    Sound: on [l, u] relu is convex, so it lies below its chord through (l, 0) and
    (u, u), and above both 0 and v, hence above lambda v for lambda in {0, 1}.
    """
    l, u = data(lb), data(ub)
    xp = get_xp(l)
    active, unstable = split(l, u)
    lam = active | (unstable & (u > -l))
    slope_l = lam.astype(l.dtype)
    # one stored zero, broadcast: consumers see that the intercept vanishes without a pass
    icpt_l = xp.broadcast_to(xp.zeros((), dtype=l.dtype), l.shape)
    if needs_grad(lb) or needs_grad(ub):
        # the chord is only formed where it is defined; elsewhere the masks pick the exact line
        width = ops.where(unstable, ops.sub(ub, lb), 1.0)
        chord = ops.div(ops.where(unstable, ub, 0.0), width)
        slope_u = ops.where(active, 1.0, chord)
        icpt_u = ops.neg(ops.mul(chord, ops.where(unstable, lb, 0.0)))
        return LinearRelaxation(slope_l, icpt_l, slope_u, icpt_u)
    # the same values off the tape, with the masks as 0/1 factors (where() branches per
    # element): x * 1 = x and x * 0 = 0 exactly, so only the sign of a zero can differ
    m = unstable.astype(l.dtype)
    chord = u * m
    chord /= (u - l) * m + (1 - m)
    slope_u = chord + active
    icpt_u = chord * l
    xp.negative(icpt_u, out=icpt_u)
    return LinearRelaxation(slope_l, icpt_l, slope_u, icpt_u)
