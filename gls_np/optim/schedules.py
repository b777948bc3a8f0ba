"""Learning-rate schedules: pure functions of the (fractional) epoch."""

from __future__ import annotations


def step_decay(lr: float, milestones=(), factor: float = 0.2):
    """lr(epoch) = lr * factor^(number of milestones <= epoch).

    The paper's App. E.1 schedule on MNIST is ``step_decay(5e-4, (50, 60), 0.2)``.
    """
    milestones = sorted(float(m) for m in milestones)

    def schedule(epoch: float) -> float:
        return lr * factor ** sum(epoch >= m for m in milestones)

    return schedule
