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
"""

from __future__ import annotations

from . import attacks, bounds, ops
from .backend import get_xp
from .losses import cross_entropy, robust_cross_entropy
from .tensor import data

CERTIFIED = ("ibp", "hbox", "crown-ibp", "deeppoly")


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


def make(relax: str, net, *, pgd_steps=8, sabr_lambda=0.4, mtl_alpha=0.5, max_memory_gb=4.0):
    """The objective ``loss(theta, x, y, eps, center, rng)`` for ``--relax relax``.

    ``center`` is the theta [D] adversarial points are searched with; ``rng``
    draws PGD's random starts.
    """

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
                margin_lower_bounds(net, theta, lower, upper, y, method, max_memory_gb)
            )

        return loss

    def standard(theta, x, y, eps, center, rng):
        return cross_entropy(logits(net, theta, x), y)

    def adversarial(theta, x, y, eps, center, rng):
        return cross_entropy(logits(net, theta, adversarial_point(x, y, eps, center, rng)), y)

    def sabr(theta, x, y, eps, center, rng):
        lower, upper = sabr_box(x, adversarial_point(x, y, eps, center, rng), eps, sabr_lambda)
        return robust_cross_entropy(
            margin_lower_bounds(net, theta, lower, upper, y, "ibp", max_memory_gb)
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
