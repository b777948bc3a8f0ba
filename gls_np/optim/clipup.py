"""ClipUp (Toklu et al., 2020): normalised-gradient momentum with a speed limit.

An optax-style ``Transform`` like those in ``transforms.py``; evotorch's PGPE uses it on the centre.
"""

from __future__ import annotations

from ..backend import get_xp
from .transforms import Transform


def clipup(momentum: float = 0.9, max_speed: float | None = None) -> Transform:
    """ClipUp: v <- m v + lr g / ||g||;  v <- v min(1, max_speed / ||v||);  step = -v.

    Parameters
    ----------
    momentum : float
        m in [0, 1); evotorch's PGPE default is 0.9.
    max_speed : float or None
        Cap on ||v|| (hence on ||step||). None means 2 lr at every update (evotorch's default),
        so the cap follows a learning-rate schedule.

    Returns
    -------
    Transform
        State ``{"v": velocity}``.

    Notes
    -----
    Shapes: g, v, step [D].
    Only the gradient's direction is used, so the step size is lr however the gradient is scaled
    (e.g. by PGPE's fitness shaping); the clip bounds the speed momentum can build up to.
    A zero gradient adds nothing to the velocity.

    References
    ----------
    Toklu, Liskowski, Srivastava (2020), "ClipUp: a simple and powerful optimizer for
    distribution-based policy evolution", PPSN XVI.
    """
    if not 0.0 <= momentum < 1.0:
        raise ValueError(f"clipup momentum must be in [0, 1), got {momentum}")
    if max_speed is not None and max_speed <= 0:
        raise ValueError(f"clipup max_speed must be positive or None, got {max_speed}")

    def init(theta):
        return {"v": get_xp(theta).zeros_like(theta)}

    def update(g, state, lr):
        xp = get_xp(g)
        speed = 2.0 * lr if max_speed is None else max_speed
        g_norm = float(xp.sqrt(xp.sum(g * g)))
        v = momentum * state["v"]
        if g_norm > 0:
            v = v + (lr / g_norm) * g
        v_norm = float(xp.sqrt(xp.sum(v * v)))
        if v_norm > speed:
            v = v * (speed / v_norm)
        return (-v).astype(g.dtype, copy=False), {"v": v}

    return Transform(init, update)
