"""Hybrid box (HBox), an instance of the hybrid zonotope (Mirman et al. 2018; paper Sec. 2.2).

The abstract value is v = c + sum_g e_g E[g] + r * d with e in [-1, 1]^G and
d in [-1, 1]^N: a zonotope with one generator per input dimension (G = C*H*W,
the input box's radii on the diagonal) plus a box of radius r. Affine layers
are exact on the zonotope part (E' = W E) and map the box part like IBP
(r' = |W| r). A ReLU keeps stable neurons exact and turns an unstable neuron
into the box [0, u]: its generators are dropped and c = r = u / 2, so the
number of generators stays G at every depth.
"""

from __future__ import annotations

from dataclasses import dataclass

from .. import ops
from ..backend import Array, get_xp
from ..layers import Conv2d, ReLU
from ..tensor import data
from . import relax
from .spec import (
    Box,
    add_bias,
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
class HBox:
    """{c + E^T e + r * d : e in [-1, 1]^G, d in [-1, 1]^N}, per sample.

    Shapes: c, r (*lead, B, *layer_shape); E (*lead, B, G, *layer_shape).
    """

    c: Array
    r: Array
    E: Array

    def concretize(self, layer_ndim: int) -> Box:
        """Return the interval hull c +- (sum_g |E[g]| + r), exact for this set."""
        radius = ops.add(ops.sum(ops.abs(self.E), axis=-(layer_ndim + 1)), self.r)
        return Box(ops.sub(self.c, radius), ops.add(self.c, radius))


def input_zonotope(layers, params, shapes, box: Box) -> HBox:
    """Build the input box as a zonotope (E = diag(r), no box part) after the affine ``layers``.

    Shapes: box (*lead, B, *in) -> HBox with E (*lead, B, G, *out), G = prod(in).
    ``layers`` are the affine layers before the first ReLU. Since
    W diag(r) = (W I) diag(r), the identity basis goes through them once for the
    whole batch (a batch axis of size 1) and is scaled per sample afterwards.
    """
    r = box.radius
    rd = data(r)
    xp = get_xp(rd)
    G = numel(shapes[0])
    nbatch = rd.ndim - len(shapes[0])  # population and batch axes
    basis = xp.eye(G, dtype=rd.dtype).reshape(*(1,) * nbatch, G, *shapes[0])
    hb = HBox(box.center, xp.zeros_like(rd), basis)
    for i, layer in enumerate(layers):
        hb = affine(layer, params[i], hb, shapes[i + 1])
    scale = ops.reshape(r, (*rd.shape[:nbatch], G, *(1,) * len(shapes[len(layers)])))
    return HBox(hb.c, hb.r, ops.mul(hb.E, scale))


def affine(layer, p, hb: HBox, out_shape) -> HBox:
    """Affine layer: c' = W c + b, E' = W E, r' = |W| r.

    Shapes: (*lead, B, [G,] *in) -> (*lead, B, [G,] *out).
    Sound: W (c + E^T e + r d) + b = c' + (W E)^T e + W (r d), and |W (r d)| <= |W| r.
    """
    c = add_bias(layer.linear(p, hb.c), layer.bias(p, hb.c), len(out_shape))
    return HBox(c, layer.linear_abs(p, hb.r), layer.linear(p, hb.E))


def relu(hb: HBox, pre: Box, layer_ndim: int) -> HBox:
    """ReLU given the pre-activation hull ``pre``: exact when stable, box [0, u] when not.

    Shapes: unchanged.  Sound: active neurons are the identity, inactive ones are 0,
    and an unstable neuron's output lies in [0, u] = u/2 +- u/2.
    """
    active, unstable = relax.split(pre.lb, pre.ub)
    half_u = ops.mul(pre.ub, 0.5)
    c = ops.where(active, hb.c, ops.where(unstable, half_u, 0.0))
    r = ops.where(active, hb.r, ops.where(unstable, half_u, 0.0))
    keep = get_xp(active).expand_dims(active, -(layer_ndim + 1))
    return HBox(c, r, ops.where(keep, hb.E, 0.0))


def head(hd, hb: HBox) -> Box:
    """Apply the spec-folded last layer out = W' h + b' and concretise.

    Shapes: c (*lead, B, N), E (*lead, B, G, N), W' (*lead, B or 1, S, N) -> Box (*lead, B, S).
    Exact on the set, like ``affine``: c' = W' c + b', E' = E W'^T, r' = |W'| r.
    """
    c = ops.add(matvec(hd.W, hb.c), hd.b)
    E = ops.matmul(hb.E, ops.swapaxes(hd.W, -1, -2))
    r = matvec(ops.abs(hd.W), hb.r)
    return HBox(c, r, E).concretize(1)


def hbox(net, theta, box: Box, C=None):
    """HBox bounds on the output of ``net`` (or on C @ output) over the input ``box``.

    Returns ``(out, pre)`` like ``ibp.ibp``: the output Box (*lead, B, S) and the
    bounds on every ReLU's input as {layer index: Box}.
    """
    params = net.unravel(theta)
    shapes = net.shapes(input_shape(box))
    body = net.layers[:-1]
    first = next((i for i, layer in enumerate(body) if isinstance(layer, ReLU)), len(body))
    hb = input_zonotope(body[:first], params, shapes, box)
    pre = {}
    for i in range(first, len(body)):
        if isinstance(body[i], ReLU):
            pre[i] = hb.concretize(len(shapes[i]))
            hb = relu(hb, pre[i], len(shapes[i]))
        else:
            hb = affine(body[i], params[i], hb, shapes[i + 1])
    return head(fold_spec(net.layers[-1], params[-1], C), hb), pre


def hbox_bounds(net, theta, box: Box, C=None, budget_bytes: float = 4e9) -> Box:
    """``hbox``'s output bounds, computed over chunks of the batch that fit ``budget_bytes``.

    Each chunk is one ``ops.recompute`` node, so a taped call keeps one chunk's
    generators alive at a time (during backward).
    """
    shapes = net.shapes(input_shape(box))
    nlead = data(box.lb).ndim - 4
    B = data(box.lb).shape[nlead]
    P = data(theta).shape[0] if data(theta).ndim == 2 else 1
    per_sample = _bytes_per_sample(net, shapes, data(box.lb).dtype.itemsize) * P
    _, batch_chunk = plan_chunks(1, B, per_sample, budget_bytes)
    if batch_chunk == B:
        return hbox(net, theta, box, C)[0]

    def fn(theta, lo, up, Cb):
        return stack(hbox(net, theta, Box(lo, up), Cb)[0])

    parts = []
    for bs in slices(B, batch_chunk):
        at = (slice(None),) * nlead + (bs,)
        Cb = None if C is None else ops.getitem(C, bs)
        parts.append(ops.recompute(fn, theta, ops.getitem(box.lb, at), ops.getitem(box.ub, at), Cb))
    return unstack(cat(parts, axis=-2))


def _bytes_per_sample(net, shapes, itemsize: int) -> float:
    """Estimated memory of one sample's generators through every layer (all kept on a tape)."""
    G = numel(shapes[0])
    total = 0
    for i, layer in enumerate(net.layers):
        cols = 0
        if isinstance(layer, Conv2d):
            cols = layer.in_channels * layer.kernel_size**2 * numel(shapes[i + 1][1:])
        total += 2 * (numel(shapes[i]) + numel(shapes[i + 1])) + cols
    return float(G * total * itemsize)
