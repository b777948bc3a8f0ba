"""l-infinity PGD: the adversarial (lower-bound) side of robustness.

Projected gradient descent (Madry et al., 2018) searches the input set
B = {x' : |x' - x|_inf <= eps, lower <= x' <= upper} for a point that breaks
the classifier. It ascends an attack objective by signed input-gradient steps
and projects back onto B after each step. The input gradients come from the
same tape as training (``tensor.value_and_grad`` over the input, theta fixed);
the per-example objectives are summed over the batch, and since example b's
objective depends only on input b, one backward pass yields every example's
gradient.

A found point is a certificate of *non*-robustness; failing to find one proves
nothing. Certified bounds (``gls_np.bounds``) give the opposite side, so on
every example: certified lower bound <= true min margin <= PGD margin.
"""

from __future__ import annotations

from . import ops
from .backend import get_xp, make_rng, to_host
from .losses import cross_entropy
from .tensor import data, value_and_grad

OBJECTIVES = ("margin", "ce")


def _min_margin(logits, y):
    """Compute y_t - max_{i != t} y_i per example, on the tape.

    Shapes: logits (B, K), y (B,) -> (B,). The runner-up class is picked on the
    values (a constant index), so the gradient is the subgradient of the max.
    NOTE: ties between runners-up send the gradient to the first of them.
    """
    ld = data(logits)
    xp = get_xp(ld)
    t = xp.asarray(y)
    others = xp.where(xp.arange(ld.shape[-1]) == t[:, None], -xp.inf, ld)
    return ops.sub(ops.gather(logits, t), ops.gather(logits, xp.argmax(others, axis=-1)))


def _attack_score(logits, y, objective):
    """Score what the attacker maximises: -margin or CE.  Shapes: (B, K) -> (B,)."""
    if objective == "margin":
        return ops.neg(_min_margin(logits, y))
    return cross_entropy(logits, y, per_example=True)


def _theta(net, params):
    if params is None:
        return net.theta
    if data(params).ndim != 1 or data(params).shape[0] != net.n_params:
        raise ValueError(
            f"params must be one parameter vector ({net.n_params},), got {data(params).shape}"
        )
    return params


def pgd(
    net,
    x,
    y,
    eps,
    *,
    steps=40,
    step_size=None,
    restarts=1,
    random_start=True,
    objective="margin",
    lower=0.0,
    upper=1.0,
    rng=None,
    params=None,
):
    """Adversarial inputs by l-infinity projected sign-gradient ascent.

    Parameters
    ----------
    net : gls_np.model.Sequential
    x : array (B, *in)
        Clean inputs, on the network's device or on the host.
    y : int array (B,)
        Labels, likewise.
    eps : float
        Radius of the l-infinity ball.
    steps : int
        Gradient steps per restart.
    step_size : float, optional
        Step length per coordinate; default 2.5 * eps / steps, so one restart can
        cross the ball's diameter 2 eps with room to spare.
    restarts : int
        Independent runs; each example keeps its best point over all of them.
    random_start : bool
        Start each restart uniformly at random in the input set (else at x).
    objective : {"margin", "ce"}
        "margin" minimises y_t - max_{i != t} y_i; "ce" maximises cross-entropy.
    lower, upper : float
        The data range the input set is clipped to.
    rng : numpy Generator or int, optional
        Random starts are drawn from it (an int seeds a new one).
    params : array (D,), optional
        Parameters to attack instead of ``net.theta``.

    Returns
    -------
    array like x (same shape, dtype and device): the best point found per example.

    Notes
    -----
    Shapes: x (B, *in), y (B,) -> (B, *in).
    Math: x <- clip(x + step_size * sign(grad_x score(x)), lo, hi) with
    lo = max(x - eps, lower), hi = min(x + eps, upper); the projection onto a box
    is coordinate-wise clipping. The best iterate (the clean x included) is
    kept per example, so the returned score is never worse than the clean one.
    """
    if objective not in OBJECTIVES:
        raise ValueError(f"objective must be one of {OBJECTIVES}, got {objective!r}")
    if eps < 0 or steps < 0 or restarts < 1:
        raise ValueError(
            f"need eps >= 0, steps >= 0, restarts >= 1; got {eps}, {steps}, {restarts}"
        )
    theta = _theta(net, params)
    # on the network's device; a host batch is copied over and its result copied back
    xp, host = get_xp(theta), x
    x, y = xp.asarray(x), xp.asarray(y)
    if x.ndim < 2 or y.shape != x.shape[:1]:
        raise ValueError(f"expected x (B, *in) and y (B,), got {x.shape} and {y.shape}")
    step = 2.5 * eps / max(steps, 1) if step_size is None else float(step_size)
    rng = rng if hasattr(rng, "random") else make_rng(rng)

    lo = xp.clip(x.astype(net.dtype) - eps, lower, upper)
    hi = xp.clip(x.astype(net.dtype) + eps, lower, upper)
    # NOTE: a clean x outside [lower, upper] starts from its projection, so the
    # result always lies in the input set
    x0 = xp.clip(x.astype(net.dtype), lo, hi)
    expand = (slice(None),) + (None,) * (x.ndim - 1)
    last = {}

    def objective_sum(xt):
        s = _attack_score(net.forward(xt, theta), y, objective)
        last["score"] = data(s)
        return ops.sum(s)

    def score(xa):
        return data(_attack_score(net.forward(xa, theta), y, objective))

    best_x, best = x0.copy(), score(x0)

    def keep_best(xa, s):
        better = s > best
        best_x[...] = xp.where(better[expand], xa, best_x)
        best[...] = xp.where(better, s, best)

    for _ in range(restarts):
        if random_start:
            u = xp.asarray(rng.random(x.shape), dtype=net.dtype)
            xa = lo + u * (hi - lo)
        else:
            xa = x0.copy()
        for _ in range(steps):
            _, (g,) = value_and_grad(objective_sum, xa)
            keep_best(xa, last["score"])
            xa = xp.clip(xa + step * xp.sign(g), lo, hi)
        keep_best(xa, score(xa))
    best_x = best_x.astype(x.dtype)
    return best_x if get_xp(host) is xp else to_host(best_x)


def adversarial_accuracy(net, x, y, eps, **kwargs):
    """Fraction of examples classified correctly both at x and at PGD's point.

    Parameters
    ----------
    net, x, y, eps
        As for ``pgd``.
    **kwargs
        Passed on to ``pgd`` (steps, restarts, objective, rng, params, ...).

    Returns
    -------
    float: an upper bound on the true robust accuracy at radius eps.

    Notes
    -----
    Shapes: x (B, *in), y (B,) -> scalar.
    """
    xp = get_xp(x)
    y = xp.asarray(y)
    theta = _theta(net, kwargs.get("params"))
    x_adv = pgd(net, x, y, eps, **kwargs)
    clean = xp.argmax(net.forward(x, theta), axis=-1) == y
    adv = xp.argmax(net.forward(x_adv, theta), axis=-1) == y
    return float((clean & adv).mean())
