"""Randomized Gradient Smoothing (Duchi et al., 2012): the paper's cheap approximation of GLS.

RGS averages backprop gradients at n Gaussian-perturbed copies of theta:
g = (1/n) sum_i grad L(theta + eps_i), eps_i ~ N(0, sigma^2 I). For a continuous L that is
differentiable almost everywhere (e.g. Lipschitz) this is unbiased for grad L_sigma, but jumps of L
contribute nothing (App. B.3): on a staircase every gradient is 0 while grad L_sigma is not.

``rgs_gradient`` draws the n points from one generator; ``rgs_share`` draws point i from its own
generator ``rng_of(i)``, so any subset of the points can be evaluated anywhere (an MPI rank)
and the shares of a partition of range(n) sum to the whole estimate.
"""

from __future__ import annotations

from collections.abc import Callable

from ..backend import Array, get_xp, np


def rgs_points(theta: Array, sigma, n: int, rng: np.random.Generator) -> Array:
    """Draw n Gaussian perturbations theta + sigma z_i, z_i ~ N(0, I), from the host ``rng``.

    Shapes: theta [D], sigma float or [D] -> [n, D] (device and dtype of theta).
    The noise is drawn on the host so a seed gives the same points on CPU and GPU.
    """
    if theta.ndim != 1:
        raise ValueError(f"expected a flat parameter vector theta [D], got shape {theta.shape}")
    if n < 1:
        raise ValueError(f"RGS needs n >= 1 samples, got {n}")
    z = rng.standard_normal((n, theta.shape[0]), dtype=theta.dtype)
    return theta + sigma * get_xp(theta).asarray(z)


def rgs_gradient(
    grad_fn: Callable, theta: Array, sigma, n: int, rng: np.random.Generator
) -> tuple[Array, Array]:
    """Estimate by RGS: the mean loss and mean gradient over n perturbed points (paper Sec. 3.4).

    Parameters
    ----------
    grad_fn : callable
        ``grad_fn(theta [D]) -> (loss scalar, grad [D])``, e.g. built on ``tensor.value_and_grad``.
    theta : array [D]
    sigma : float or array [D]
        Perturbation standard deviation (a hyperparameter here; see ``sigma_schedule``).
    n : int
        Number of perturbed points (the paper uses 2).
    rng : numpy Generator

    Returns
    -------
    (loss, grad)
        (1/n) sum_i L(theta + eps_i), an unbiased estimate of L_sigma(theta), and
        (1/n) sum_i grad L(theta + eps_i).

    Notes
    -----
    Shapes: theta [D] -> (scalar, [D]).  Unbiased for grad L_sigma only when L has no jumps
    (App. B.3); for certified losses with discontinuous bounds it is an approximation.
    """
    loss_sum, grad_sum = 0.0, None
    for point in rgs_points(theta, sigma, n, rng):
        loss, grad = grad_fn(point)
        loss_sum = loss_sum + loss
        grad_sum = grad if grad_sum is None else grad_sum + grad
    return loss_sum / n, grad_sum / n


def rgs_share(
    grad_fn: Callable, theta: Array, sigma, n: int, samples, rng_of: Callable
) -> tuple[float, Array]:
    """Sum the RGS terms of the points in ``samples``: (1/n) sum_i (L_i, grad L_i).

    Parameters
    ----------
    grad_fn : callable
        ``grad_fn(theta [D], rng) -> (loss scalar, grad [D])``; ``rng`` serves the point's other
        random draws (PGD's starts), so they too depend only on the point's index.
    theta : array [D]
    sigma : float or array [D]
    n : int
        Number of points of the whole estimate (the 1/n of the mean).
    samples : iterable of int
        The point indices in range(n) evaluated here.
    rng_of : callable
        ``rng_of(i)`` -> a fresh numpy Generator for point i; z_i is its first draw.

    Returns
    -------
    (loss, grad)
        (1/n) sum_{i in samples} L(theta + sigma z_i) and the same sum of gradients
        (0 and zeros for no samples).

    Notes
    -----
    Shapes: theta [D] -> (scalar, [D]).  Summed over a partition of range(n) this is exactly
    the RGS mean of ``rgs_gradient`` (with per-point generators), whatever the partition.
    """
    loss_sum, grad_sum = 0.0, get_xp(theta).zeros_like(theta)
    for i in samples:
        if not 0 <= i < n:
            raise ValueError(f"expected point indices in [0, {n}), got {i}")
        rng = rng_of(i)
        loss, grad = grad_fn(rgs_points(theta, sigma, 1, rng)[0], rng)
        loss_sum = loss_sum + float(loss)
        grad_sum = grad_sum + grad
    return loss_sum / n, grad_sum / n


def sigma_schedule(sigma0: float, lr_schedule: Callable) -> Callable:
    """sigma(epoch) = sigma0 lr(epoch) / lr(0): sigma decays whenever and by as much as the lr.

    With ``step_decay`` learning rates (the paper's, App. E.3) this multiplies sigma by the decay
    factor at every lr milestone, as in Sec. 4 ("decay it at the same time steps as the lr").
    """
    lr0 = lr_schedule(0)
    if lr0 <= 0:
        raise ValueError(f"sigma_schedule needs lr_schedule(0) > 0, got {lr0}")

    def schedule(epoch: float) -> float:
        return sigma0 * lr_schedule(epoch) / lr0

    return schedule
