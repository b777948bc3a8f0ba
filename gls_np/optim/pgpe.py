"""PGPE (Sehnke et al., 2010) as ask/tell pieces: gradients of the Gaussian-smoothed loss.

Sign convention (the one place it is stated): gls_np MINIMISES losses. ``pgpe_tell`` takes the
population's losses (lower is better), ``pgpe_grads`` returns estimates of the *gradient* of the
smoothed loss (ascent direction on the loss), and the centre optimiser, a ``Transform`` such as
``adam()`` or ``clipup()``, turns it into a descent step exactly as for a backprop gradient.

Smoothed loss: L_sigma(theta) = E_{eps ~ N(0, diag(sigma^2))} L(theta + eps)   (paper Sec. 3.1).

Noise: member pair i at step t uses z_i = ``member_noise(seed, t, i, D)``, standard normal, and
eps_i = sigma * z_i. It is a pure function of (seed, t, i), so every MPI rank can regenerate any
member's noise, splitting the population differently never changes it, and a run resumed from a
checkpoint (which stores t) draws the same noise it would have drawn.

State (a dict of arrays and an int, stored as-is by checkpoints):
``{"center": theta [D], "sigma": sigma [D], "opt": centre-optimiser state, "t": step count}``.

Population order: thetas [P, D] = [theta + eps_1, ..., theta + eps_n, theta - eps_1, ...,
theta - eps_n] with n = P / 2, so losses[:n] are r+ and losses[n:] are r-.

Splitting over ranks (``docs/mpi.md``): ``pgpe_ask(..., pairs=s)`` returns only the pairs in the
slice s, ``pgpe_grads(z_s, losses, sigma, pairs=s)`` their share of the estimates (the shares of
disjoint slices sum to the whole), and ``pgpe_update`` applies summed estimates; ``pgpe_tell`` is
``pgpe_grads`` over every pair followed by ``pgpe_update``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..backend import Array, get_xp, np
from .transforms import Transform, adam


def member_noise(seed: int, step: int, i: int, D: int, dtype=np.float64) -> np.ndarray:
    """Standard-normal noise z of member pair ``i`` at ``step``, on the host.

    Shapes: -> [D].  Same (seed, step, i, D, dtype), same z, on any machine and any MPI rank.
    """
    return np.random.default_rng([seed, step, i]).standard_normal(D, dtype=dtype)


def pgpe_noise(seed: int, step: int, n: int, like: Array, start: int = 0) -> Array:
    """Stack the noise of member pairs start..start+n-1 at ``step``, on ``like``'s device and dtype.

    Shapes: like [D] -> z [n, D]; row k equals ``member_noise(seed, step, start + k, D)``.
    """
    D = like.shape[-1]
    z = np.empty((n, D), dtype=like.dtype)
    for k in range(n):
        np.random.default_rng([seed, step, start + k]).standard_normal(dtype=z.dtype, out=z[k])
    return get_xp(like).asarray(z)


def centered_ranks(losses):
    """Centred-rank fitness shaping (Salimans et al., 2017; evotorch's "centered").

    Shapes: losses [P] -> u [P].  Math: u = rank / (P - 1) - 0.5, rank 0 for the lowest loss, so
    the best member gets -0.5 and the worst +0.5 (u replaces the loss: same orientation).
    NOTE: tied losses get the mean of their ranks. Ordinal tie-breaking would hand a systematic
    gradient to plateaus (every tie would favour whichever half of the population comes first).
    NaN and +inf losses rank as the worst.
    """
    xp = get_xp(losses)
    P = losses.shape[0]
    s = xp.sort(losses)
    lo = xp.searchsorted(s, losses, side="left")
    hi = xp.searchsorted(s, losses, side="right") - 1
    return (lo + hi) / (2.0 * (P - 1)) - 0.5


def _pairs(pairs: slice | None, n: int) -> slice:
    """Check and return the pair slice: all n pairs by default, else a slice inside range(n)."""
    if pairs is None:
        return slice(0, n)
    start, stop = pairs.start or 0, n if pairs.stop is None else pairs.stop
    if pairs.step not in (None, 1) or not 0 <= start <= stop <= n:
        raise ValueError(f"expected a contiguous slice of the {n} pairs, got {pairs}")
    return slice(start, stop)


def pgpe_grads(z, losses, sigma, rank: bool = True, pairs: slice | None = None):
    """PGPE's gradient estimates for the centre and the per-parameter standard deviation.

    Parameters
    ----------
    z : array [m, D]
        Standard-normal noise of the pairs in ``pairs``; eps_i = sigma * z_i.
    losses : array [2 n]
        Losses of the whole population: r+ = losses[:n] = L(theta + eps_i),
        r- = losses[n:] = L(theta - eps_i).
    sigma : array [D] or float
        The standard deviation the noise was drawn with.
    rank : bool
        Replace the losses by ``centered_ranks(losses)`` (fitness shaping) before estimating.
    pairs : slice, optional
        The pairs z belongs to (default: all n). The result is then their share: the terms
        i in ``pairs`` of the sums below, so the shares of a partition of the pairs add up to
        the whole estimate (this is how ranks split the population).

    Returns
    -------
    g_center : array [D]
        (1/n) sum_i eps_i (r_i+ - r_i-) / (2 sigma^2) = (1/n) sum_i z_i (r_i+ - r_i-) / (2 sigma).
    g_sigma : array [D]
        (1/n) sum_i ((r_i+ + r_i-)/2 - b) (eps_i^2 - sigma^2) / sigma, b = mean(losses) (Sec. 3.1).

    Notes
    -----
    Shapes: z [m, D], losses [2n], sigma [D] -> ([D], [D]).
    Without shaping, E[g_center] = grad L_sigma(theta) exactly (Lemma 3.1): grad L_sigma(theta) =
    E[eps L(theta + eps)] / sigma^2 (Stein's lemma, App. B.1), and the antithetic pair only removes
    the even part of L, which has zero correlation with eps. E[g_sigma] = (1 - 1/n) sigma^2
    dL_sigma/dsigma: the sigma^2 factor (Sehnke's scaling) makes sigma - sigma_lr g_sigma a
    relative step, and (1 - 1/n) is the share of each pair not absorbed by the baseline.
    With shaping, r is replaced by u in [-0.5, 0.5]: the estimates become those of the smoothed
    rank utility, invariant to any increasing transform of the loss, with |r+ - r-| <= 1, so
    g_center's scale is about 1/sigma whatever the loss scale (Adam and ClipUp ignore it anyway).
    The shaping and the baseline b always use the whole population's losses, so a share
    computed on one rank is exactly its terms of the one-process sums.
    """
    xp = get_xp(z)
    m, D = z.shape
    losses = xp.asarray(losses)
    if pairs is None and losses.shape != (2 * m,):
        raise ValueError(f"expected losses of shape ({2 * m},) for {m} pairs, got {losses.shape}")
    if losses.ndim != 1 or losses.shape[0] % 2:
        raise ValueError(f"expected losses of shape (2 n,), got {losses.shape}")
    n = losses.shape[0] // 2
    own = _pairs(pairs, n)
    if own.stop - own.start != m:
        raise ValueError(f"expected the noise of the {own.stop - own.start} pairs {own}, got {m}")
    if rank:
        u = centered_ranks(losses)
    else:
        if not bool(xp.all(xp.isfinite(losses))):
            raise ValueError("PGPE without rank shaping needs finite losses, got NaN or inf")
        u = losses
    u = xp.asarray(u, dtype=z.dtype)
    up, um = u[own], u[n + own.start : n + own.stop]
    g_center = (z.T @ ((up - um) / (2 * n))) / sigma
    w = ((up + um) / 2 - xp.mean(u)) / n
    g_sigma = ((z * z).T @ w - xp.sum(w)) * sigma
    return g_center, g_sigma


def pgpe_init(theta, sigma0=1e-3, center_opt: Transform | None = None) -> dict:
    """Make a fresh PGPE state centred at ``theta`` with standard deviation ``sigma0`` everywhere.

    Shapes: theta [D]; sigma0 float or [D].  ``center_opt`` defaults to ``adam()``.
    """
    xp = get_xp(theta)
    if theta.ndim != 1:
        raise ValueError(f"expected a flat parameter vector theta [D], got shape {theta.shape}")
    sigma = xp.broadcast_to(xp.asarray(sigma0, dtype=theta.dtype), theta.shape).copy()
    if not bool(xp.all(sigma > 0)):
        raise ValueError(f"PGPE needs sigma0 > 0, got {sigma0}")
    opt = (center_opt or adam()).init(theta)
    return {"center": theta.copy(), "sigma": sigma, "opt": opt, "t": 0}


def pgpe_ask(state: dict, seed: int, popsize: int, pairs: slice | None = None):
    """Return the members to evaluate at step ``state["t"]``, and their noise.

    Shapes: -> thetas [2m, D] (order: theta + eps_i for i in pairs, then theta - eps_i for i in
    pairs), z [m, D]; m = P/2 when ``pairs`` is None (all), else the length of the slice.
    The state is unchanged: the noise is a function of (seed, t, i), not of an RNG state.
    """
    if popsize < 2 or popsize % 2:
        raise ValueError(f"PGPE needs an even popsize >= 2 (antithetic pairs), got {popsize}")
    own = _pairs(pairs, popsize // 2)
    center, sigma = state["center"], state["sigma"]
    z = pgpe_noise(seed, int(state["t"]), own.stop - own.start, center, start=own.start)
    eps = sigma * z
    xp = get_xp(center)
    return xp.concatenate([center + eps, center - eps]), z


def pgpe_update(
    state: dict,
    g_center,
    g_sigma,
    lr: float,
    center_opt: Transform | None = None,
    sigma_lr: float = 0.1,
    max_change: float = 0.2,
) -> dict:
    """Apply the estimates of ``pgpe_grads``: one PGPE step, t incremented.

    Shapes: g_center, g_sigma [D] -> state with center, sigma [D].
    Math: center <- center + center_opt(g_center, lr);
    sigma <- clip(sigma - sigma_lr g_sigma, (1 - max_change) sigma, (1 + max_change) sigma).
    """
    if not 0.0 < max_change < 1.0:
        raise ValueError(f"max_change must be in (0, 1) to keep sigma positive, got {max_change}")
    sigma = state["sigma"]
    xp = get_xp(sigma)
    step, opt = (center_opt or adam()).update(g_center, state["opt"], lr)
    new_sigma = xp.clip(
        sigma - sigma_lr * g_sigma, (1 - max_change) * sigma, (1 + max_change) * sigma
    )
    return {
        "center": state["center"] + step,
        "sigma": new_sigma,
        "opt": opt,
        "t": int(state["t"]) + 1,
    }


def pgpe_tell(
    state: dict,
    z,
    losses,
    lr: float,
    center_opt: Transform | None = None,
    sigma_lr: float = 0.1,
    max_change: float = 0.2,
    rank: bool = True,
) -> dict:
    """One PGPE update from the losses of the population ``pgpe_ask`` returned.

    Parameters
    ----------
    state : dict
        The state ``pgpe_ask`` was called with.
    z : array [n, D]
        The noise ``pgpe_ask`` returned (all pairs).
    losses : array [2 n]
        Losses of the members, in ``pgpe_ask``'s order (lower is better).
    lr : float
        Centre learning rate, handed to ``center_opt``.
    center_opt : Transform or None
        The centre optimiser (must be the one the state was made with); defaults to ``adam()``.
    sigma_lr : float
        Step size of sigma <- sigma - sigma_lr g_sigma (evotorch's stdev_learning_rate).
    max_change : float
        Cap on sigma's relative change per step, in (0, 1); keeps sigma > 0.
    rank : bool
        Centred-rank fitness shaping (see ``pgpe_grads``).

    Returns
    -------
    dict
        The new state, with t incremented.

    Notes
    -----
    Shapes: z [n, D], losses [2n] -> state with center, sigma [D].
    ``pgpe_update(state, *pgpe_grads(z, losses, sigma, rank), lr, ...)``.
    """
    g_center, g_sigma = pgpe_grads(z, losses, state["sigma"], rank)
    return pgpe_update(state, g_center, g_sigma, lr, center_opt, sigma_lr, max_change)


@dataclass(frozen=True)
class PGPE:
    """PGPE's hyperparameters bound to ``init``/``ask``/``tell`` (defaults: paper Sec. 4, evotorch).

    A loop reads ``thetas, z = pgpe.ask(state); state = pgpe.tell(state, z, L(thetas), lr)``.
    """

    popsize: int = 256
    sigma0: float = 1e-3
    sigma_lr: float = 0.1
    max_change: float = 0.2
    rank: bool = True
    center_opt: Transform = field(default_factory=adam)
    seed: int = 0

    def __post_init__(self):
        if self.popsize < 2 or self.popsize % 2:
            raise ValueError(f"PGPE needs an even popsize >= 2, got {self.popsize}")
        if not 0.0 < self.max_change < 1.0:
            raise ValueError(f"max_change must be in (0, 1), got {self.max_change}")

    def init(self, theta) -> dict:
        """``pgpe_init(theta, sigma0, center_opt)``."""
        return pgpe_init(theta, self.sigma0, self.center_opt)

    def ask(self, state: dict, pairs: slice | None = None):
        """``pgpe_ask(state, seed, popsize, pairs)`` -> (thetas [2m, D], z [m, D])."""
        return pgpe_ask(state, self.seed, self.popsize, pairs)

    def grads(self, z, losses, sigma, pairs: slice | None = None):
        """``pgpe_grads(z, losses, sigma, rank, pairs)`` -> (g_center [D], g_sigma [D])."""
        return pgpe_grads(z, losses, sigma, self.rank, pairs)

    def update(self, state: dict, g_center, g_sigma, lr: float) -> dict:
        """``pgpe_update`` with this object's hyperparameters."""
        return pgpe_update(
            state, g_center, g_sigma, lr, self.center_opt, self.sigma_lr, self.max_change
        )

    def tell(self, state: dict, z, losses, lr: float) -> dict:
        """``pgpe_tell`` with this object's hyperparameters."""
        return pgpe_tell(
            state, z, losses, lr, self.center_opt, self.sigma_lr, self.max_change, self.rank
        )
