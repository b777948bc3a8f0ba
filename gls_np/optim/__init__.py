"""Optimisers as small (init, update) pieces, and learning-rate schedules."""

from .schedules import step_decay
from .transforms import Transform, adam, chain, clip_by_global_norm, sgd

__all__ = ["Transform", "adam", "chain", "clip_by_global_norm", "sgd", "step_decay"]
