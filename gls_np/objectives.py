"""Training objectives (``--relax``): the loss L(theta; x, y, eps) each optimizer minimises.

Every objective takes ``theta`` as one parameter vector ``[D]`` (an array, or a
Tensor for GRAD and RGS) or a population ``[P, D]`` (bare arrays, for PGPE),
and returns the batch-mean loss: a scalar, or ``[P]`` for a population.

- ``none``: cross-entropy of the logits (paper eq. 1-2).
- ``pgd``: cross-entropy at the PGD point (adversarial training, Madry et al. 2018).
- ``ibp``, ``hbox``, ``crown-ibp``, ``deeppoly``: robust cross-entropy of that
  relaxation's margin bounds over the eps-box (paper eq. 2 with the upper bound
  on y_i - y_t).
- ``sabr``: IBP robust cross-entropy over a small box of radius lambda*eps
  around the PGD point, shifted to lie inside the eps-box (Mueller et al. 2023).
- ``mtl-ibp``: alpha * IBP loss + (1 - alpha) * adversarial loss (De Palma et al. 2023).

Adversarial points are searched with the centre network ``center`` (the
current theta; for a population, the PGPE mean): a population shares them.

Memory: ``max_memory_gb`` is the budget of one loss evaluation. ``BOUND_SHARE`` of it
is what ``bounds.compute`` plans its own chunks in (HBox's batch, back-substitution's
rows and samples); the rest holds the per-member forward arrays, which
``population_chunk`` sizes a PGPE population chunk by.
"""

from __future__ import annotations

import math

from . import attacks, bounds, ops
from .backend import get_xp, np
from .layers import Conv2d, ReLU
from .losses import cross_entropy, robust_cross_entropy
from .memory import budget_gb
from .tensor import data

CERTIFIED = ("ibp", "hbox", "crown-ibp", "deeppoly")
# the relaxations whose bounds.compute chunks its work under the budget it is told
SELF_CHUNKED = ("hbox", "crown-ibp", "deeppoly")
BOUND_SHARE = 0.5
# Back-substitution scores a population fastest a few members at a time: with about
# BACKSUB_IMAGES network-images per call its coefficient arrays stay near the cache,
# where a whole population's stream through memory. Measured on CNN3, 2 threads:
# DeepPoly, batch 512, P = 8: 496 network-images/s in one call, 1,074 one member at a
# time; batch 128, P = 16: 765 vs 1,070 four at a time; CROWN-IBP 4,137 vs 5,634 (IBP
# is the other way round: P = 256 at batch 512 in one call is 1.64x a loop).
BACKSUB = ("crown-ibp", "deeppoly")
BACKSUB_IMAGES = 512


def logits(net, theta, x):
    """Logits [B, K] for theta [D], or [P, B, K] for theta [P, D]."""
    return net.forward(x, theta)


def margin_lower_bounds(net, theta, lower, upper, y, method, max_memory_gb=4.0):
    """Lower bounds on y_t - y_i (i != t) over the box: [B, K-1], or [P, B, K-1] for theta [P, D]."""
    C = bounds.margin_spec(y, net.layers[-1].out_features, dtype=net.dtype)
    single = data(theta).ndim == 1
    params = ops.reshape(theta, (1, data(theta).shape[0])) if single else theta
    lb, _ = bounds.compute(
        net,
        lower,
        upper,
        method,
        C=C,
        params=params,
        max_memory_gb=max_memory_gb,
        lower_only=True,
    )
    return ops.getitem(lb, 0) if single else lb


def eps_box(x, eps):
    """The eps-ball around x clipped to the pixel range [0, 1]."""
    box = bounds.linf_box(x, eps)
    return box.lb, box.ub


def sabr_box(x, x_adv, eps, lam):
    """SABR's small box: radius lam*eps around x_adv, its centre shifted into the eps-ball.

    Math: c = clip(x_adv, x - (1 - lam) eps, x + (1 - lam) eps); box = [c - lam eps, c + lam eps]
    clipped to [0, 1]. It lies inside the eps-box, so its bounds under-approximate
    the worst case over the eps-box (SABR is not a sound certificate; it is a training loss).
    """
    xp = get_xp(x)
    c = xp.clip(x_adv, x - (1 - lam) * eps, x + (1 - lam) * eps)
    return xp.clip(c - lam * eps, 0.0, 1.0), xp.clip(c + lam * eps, 0.0, 1.0)


def make(relax: str, net, *, pgd_steps=8, sabr_lambda=0.4, mtl_alpha=0.5, max_memory_gb=0.0):
    """The objective ``loss(theta, x, y, eps, center, rng)`` for ``--relax relax``.

    ``center`` is the theta [D] adversarial points are searched with; ``rng``
    draws PGD's random starts. ``max_memory_gb`` is the budget of one evaluation, of
    which ``bounds.compute`` is told ``BOUND_SHARE``; 0 picks it from free memory now
    (``memory.budget_gb``). A budget too small for a taped back-substitution makes it
    recompute its chunks during backward (``ops.recompute``): slower, so the default is
    not a fixed guess (CNN3 DeepPoly + gradient at batch 512 ran 1.7x slower at 2 GB).
    """
    bound_gb = budget_gb(max_memory_gb) * BOUND_SHARE

    def adversarial_point(x, y, eps, center, rng):
        if eps == 0 or pgd_steps == 0:
            return x
        return attacks.pgd(
            net, x, y, eps, steps=pgd_steps, rng=rng, params=data(center), objective="ce"
        )

    def certified(method):
        def loss(theta, x, y, eps, center, rng):
            lower, upper = eps_box(x, eps)
            return robust_cross_entropy(
                margin_lower_bounds(net, theta, lower, upper, y, method, bound_gb)
            )

        return loss

    def standard(theta, x, y, eps, center, rng):
        return cross_entropy(logits(net, theta, x), y)

    def adversarial(theta, x, y, eps, center, rng):
        return cross_entropy(logits(net, theta, adversarial_point(x, y, eps, center, rng)), y)

    def sabr(theta, x, y, eps, center, rng):
        lower, upper = sabr_box(x, adversarial_point(x, y, eps, center, rng), eps, sabr_lambda)
        return robust_cross_entropy(
            margin_lower_bounds(net, theta, lower, upper, y, "ibp", bound_gb)
        )

    def mtl_ibp(theta, x, y, eps, center, rng):
        return ops.add(
            ops.mul(certified("ibp")(theta, x, y, eps, center, rng), mtl_alpha),
            ops.mul(adversarial(theta, x, y, eps, center, rng), 1 - mtl_alpha),
        )

    table = {"none": standard, "pgd": adversarial, "sabr": sabr, "mtl-ibp": mtl_ibp}
    table.update({m: certified(m) for m in CERTIFIED})
    if relax not in table:
        raise ValueError(f"unknown relaxation {relax!r}; expected one of {sorted(table)}")
    return table[relax]


def member_bytes(net, relax: str, x_shape) -> float:
    """Budget bytes one population member's loss takes on a batch of shape ``x_shape``.

    Shapes: x_shape (B, C, H, W). With w the itemsize and, per layer l, n_in and n_out its
    input and output entries per sample and q its im2col columns (C_in k^2 Ho Wo for a
    conv, else 0), the entries per (member, sample) are

        forward  f = max_l (n_in + q + n_out)            (one layer's input, windows, output)
        IBP      f = kept + max_l 2 (n_in + q + 2 n_out)  (lb + ub and ub - lb in, their
                                                          windows; centre, radius, lb, ub out)
        row      r = sum_l 2 (n_in + n_out + q)          (one back-substituted row, both sides,
                                                          every layer's arrays on its tape)

    where kept = sum over ReLU layers of 2 n_in, the bounds on every ReLU's input, which
    live to the end. none and pgd take w B f_forward of the whole budget, and ibp, sabr,
    mtl-ibp w B f_IBP. crown-ibp, deeppoly and hbox keep IBP-like bounds outside
    ``bounds.compute`` and must fit its smallest chunk, m = w r (one row of one sample) or,
    for hbox, m = w G r (one sample's G = C H W generators, as hbox plans them), into its
    share s = BOUND_SHARE: max(w B f_IBP / (1 - s), m / s).
    """
    if relax not in ("none", "pgd", "sabr", "mtl-ibp", *CERTIFIED):
        raise ValueError(f"unknown relaxation {relax!r}")
    B, *in_shape = x_shape
    shapes = net.shapes(tuple(in_shape))
    fwd = ibp = kept = row = 0
    for i, layer in enumerate(net.layers):
        n_in, n_out = math.prod(shapes[i]), math.prod(shapes[i + 1])
        q = 0
        if isinstance(layer, Conv2d):
            q = layer.in_channels * layer.kernel_size**2 * math.prod(shapes[i + 1][1:])
        if isinstance(layer, ReLU):
            kept += 2 * n_in
        fwd = max(fwd, n_in + q + n_out)
        ibp = max(ibp, 2 * (n_in + q + 2 * n_out))
        row += 2 * (n_in + n_out + q)
    w = np.dtype(net.dtype).itemsize
    if relax in ("none", "pgd"):
        return float(w * B * fwd)
    ibp += kept
    if relax not in SELF_CHUNKED:
        return float(w * B * ibp)
    smallest = w * row * (math.prod(shapes[0]) if relax == "hbox" else 1)
    return max(w * B * ibp / (1 - BOUND_SHARE), smallest / BOUND_SHARE)


def population_chunk(net, relax: str, x_shape, members: int, max_memory_gb: float) -> int:
    """How many population members one call of ``make(relax, ...)``'s loss may evaluate.

    Math: clip(floor(max_memory_gb 1e9 / member_bytes(net, relax, x_shape)), 1, members),
    and for crown-ibp and deeppoly at most max(1, BACKSUB_IMAGES // B) members.
    Members are independent (each loss is its own network's), so any split of the
    population gives the same losses, pairs included; at least one member is always taken.
    """
    fit = int(max_memory_gb * 1e9 // member_bytes(net, relax, x_shape))
    if relax in BACKSUB:
        fit = min(fit, max(1, BACKSUB_IMAGES // x_shape[0]))
    return max(1, min(members, fit))
