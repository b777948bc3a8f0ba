"""Gradient transformations in the optax style: ``init(theta) -> state`` and
``update(grad, state, lr) -> (step, state)``; the caller applies ``theta += step``.

States are flat dicts of arrays and ints so that checkpoints store them as they
are (``checkpoint.save(..., optimizer=state)``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..backend import get_xp


@dataclass(frozen=True)
class Transform:
    """A pair of pure functions: ``init(theta) -> state``, ``update(g, state, lr) -> (step, state)``."""

    init: Callable
    update: Callable


def sgd(momentum: float = 0.0) -> Transform:
    """SGD with heavy-ball momentum: v <- mu v + g; step = -lr v."""

    def init(theta):
        return {"v": get_xp(theta).zeros_like(theta)}

    def update(g, state, lr):
        v = momentum * state["v"] + g
        return -lr * v, {"v": v}

    return Transform(init, update)


def adam(b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8) -> Transform:
    """Adam (Kingma and Ba, 2015), PyTorch's formulation.

    Math: m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;  t <- t + 1;
    step = -lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps).
    """

    def init(theta):
        xp = get_xp(theta)
        return {"m": xp.zeros_like(theta), "v": xp.zeros_like(theta), "t": 0}

    def update(g, state, lr):
        xp = get_xp(g)
        t = int(state["t"]) + 1
        m = b1 * state["m"] + (1 - b1) * g
        v = b2 * state["v"] + (1 - b2) * g * g
        m_hat = m / (1 - b1**t)
        v_hat = v / (1 - b2**t)
        step = -lr * m_hat / (xp.sqrt(v_hat) + eps)
        return step.astype(g.dtype, copy=False), {"m": m, "v": v, "t": t}

    return Transform(init, update)


def clip_by_global_norm(max_norm: float) -> Transform:
    """Rescale g to norm at most ``max_norm`` (PyTorch's clip_grad_norm_); stateless."""

    def init(theta):
        return {}

    def update(g, state, lr):
        xp = get_xp(g)
        norm = float(xp.sqrt(xp.sum(g * g)))
        if norm > max_norm:
            g = g * (max_norm / (norm + 1e-6))
        return g, state

    return Transform(init, update)


def chain(*transforms: Transform) -> Transform:
    """Apply transforms in order; every one but the last passes a transformed gradient on.

    The state is ``{"0": state_0, "1": state_1, ...}``.
    """

    def init(theta):
        return {str(i): t.init(theta) for i, t in enumerate(transforms)}

    def update(g, state, lr):
        new = {}
        for i, t in enumerate(transforms):
            g, new[str(i)] = t.update(g, state[str(i)], lr)
        return g, new

    return Transform(init, update)
