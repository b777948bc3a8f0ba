"""Interval bound propagation (Gowal et al. 2018; paper Sec. 2.2).

The abstract value is a ``Box``. An affine layer maps its centre and radius,
c' = W c + b and r' = |W| r (the tightest box around the image of a box), and a
ReLU maps the bounds themselves, [relu(l), relu(u)] (relu is monotone).
"""

from __future__ import annotations

from .. import ops
from ..layers import ReLU
from .spec import Box, add_bias, fold_spec, input_shape, matvec


def affine(layer, p, box: Box, out_shape) -> Box:
    """Bound an affine layer's image of ``box`` by a box.

    Shapes: (*lead, B, *in) -> (*lead, B, *out).  Math: c' = W c + b, r' = |W| r.
    Sound: for |v - c| <= r elementwise, |W v - W c| <= |W| |v - c| <= |W| r.
    """
    c = add_bias(layer.linear(p, box.center), layer.bias(p, box.lb), len(out_shape))
    r = layer.linear_abs(p, box.radius)
    return Box(ops.sub(c, r), ops.add(c, r))


def relu(box: Box) -> Box:
    """[relu(l), relu(u)]: exact for a monotone elementwise map.  Shapes: unchanged."""
    return Box(ops.relu(box.lb), ops.relu(box.ub))


def head(hd, box: Box) -> Box:
    """Bound the spec-folded last layer out = W' h + b' (per-sample W') by a box.

    Shapes: box (*lead, B, N), W' (*lead, B or 1, S, N) -> (*lead, B, S).
    """
    c = ops.add(matvec(hd.W, box.center), hd.b)
    r = matvec(ops.abs(hd.W), box.radius)
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
    return head(fold_spec(net.layers[-1], params[-1], C), box), pre
