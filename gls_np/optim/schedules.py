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


def smooth_ramp(
    eps: float, warmup: float = 0.0, ramp: float = 0.0, beta: float = 4.0, mid: float = 0.25
):
    """eps(epoch): 0 during ``warmup`` epochs, then Shi et al.'s (2021) smooth ramp to ``eps``.

    Over the ``ramp`` epochs after the warmup the value grows as a power
    t^beta for the first ``mid`` fraction of the ramp, then linearly, joined
    with a continuous slope (auto_LiRPA's SmoothedScheduler); ``eps`` afterwards.
    ``ramp = 0`` gives eps from the first step after the warmup.
    """
    start, end = float(warmup), float(warmup) + float(ramp)
    turn = start + mid * (end - start)

    def schedule(epoch: float) -> float:
        if epoch < start:
            return 0.0
        if epoch >= end:
            return eps
        # a (t - start)^beta up to the turn, then a straight line of the same slope to (end, eps)
        a = eps / ((turn - start) ** (beta - 1) * (beta * (end - turn) + (turn - start)))
        at_turn = a * (turn - start) ** beta
        if epoch <= turn:
            return a * (epoch - start) ** beta
        return min(at_turn + (eps - at_turn) * (epoch - turn) / (end - turn), eps)

    return schedule
