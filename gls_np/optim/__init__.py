"""Optimisers as small (init, update) pieces, and learning-rate schedules."""

from .schedules import step_decay
from .transforms import Transform, adam, chain, clip_by_global_norm, sgd

__all__ = ["Transform", "adam", "chain", "clip_by_global_norm", "sgd", "step_decay"]

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
from .smoothing import rgs_gradient, rgs_points, sigma_schedule

__all__ += [
    "PGPE",
    "centered_ranks",
    "clipup",
    "member_noise",
    "pgpe_ask",
    "pgpe_grads",
    "pgpe_init",
    "pgpe_noise",
    "pgpe_tell",
    "rgs_gradient",
    "rgs_points",
    "sigma_schedule",
]
