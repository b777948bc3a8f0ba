"""Optimisers as small (init, update) pieces, PGPE and RGS, and schedules."""

from .clipup import clipup
from .pgpe import (
    PGPE,
    centered_ranks,
    member_noise,
    pgpe_ask,
    pgpe_grads,
    pgpe_init,
    pgpe_noise,
    pgpe_tell,
)
from .schedules import smooth_ramp, step_decay
from .smoothing import rgs_gradient, rgs_points, sigma_schedule
from .transforms import Transform, adam, chain, clip_by_global_norm, sgd

__all__ = [
    "PGPE",
    "Transform",
    "adam",
    "centered_ranks",
    "chain",
    "clip_by_global_norm",
    "clipup",
    "member_noise",
    "pgpe_ask",
    "pgpe_grads",
    "pgpe_init",
    "pgpe_noise",
    "pgpe_tell",
    "rgs_gradient",
    "rgs_points",
    "sgd",
    "sigma_schedule",
    "smooth_ramp",
    "step_decay",
]
