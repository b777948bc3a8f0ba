"""Cross-entropy on logits and its certified counterpart on margin bounds.

Both losses are built from the primitives of ``gls_np.ops`` (``logsumexp``,
``gather``, ``matmul``), so the same call is differentiable on ``Tensor``s (GRAD,
RGS, PGD) and plain arithmetic on bare arrays (PGPE fitness, evaluation).

Margins. For a target class t the margin spec has one row e_t - e_i per other
class i != t, in increasing order of i (the rows of
``gls_np.bounds.margin_spec``). A lower bound on the margins y_t - y_i is an
upper bound on the logit differences y_i - y_t, which is what the robust loss
needs (paper, eq. 2 with the bounded logit differences).
"""

from __future__ import annotations

from . import ops
from .backend import get_xp
from .tensor import data


def _check_labels(logits, y):
    shape = data(logits).shape
    if len(shape) < 2 or data(y).shape != shape[-2:-1]:
        raise ValueError(
            f"expected logits (*lead, B, K) and labels (B,), got {shape} and {data(y).shape}"
        )


def cross_entropy(logits, y, per_example=False):
    """Cross-entropy of logits against integer labels, mean over the batch.

    Parameters
    ----------
    logits : array or Tensor (*lead, B, K)
    y : int array (B,)
    per_example : bool
        Return the loss of every example instead of the batch mean.

    Returns
    -------
    array or Tensor (*lead,), or (*lead, B) with ``per_example``.

    Notes
    -----
    Shapes: logits (*lead, B, K), y (B,) -> (*lead,).
    Math: L_CE(y, t) = ln(1 + sum_{i != t} exp(y_i - y_t)) = logsumexp(y) - y_t
    (paper, eq. 2); ``logsumexp`` subtracts the max, so large logits do not overflow.
    """
    _check_labels(logits, y)
    xp = get_xp(data(logits))
    t = xp.broadcast_to(xp.asarray(data(y)), data(logits).shape[:-1])
    loss = ops.sub(ops.logsumexp(logits, axis=-1), ops.gather(logits, t))
    return loss if per_example else ops.mean(loss, axis=-1)


def robust_cross_entropy(margin_lb, per_example=False):
    """Cross-entropy of the upper bounds on the logit differences (certified training loss).

    Parameters
    ----------
    margin_lb : array or Tensor (*lead, B, K-1)
        Lower bounds on the margins y_t - y_i, i != t (margin-spec rows e_t - e_i).
    per_example : bool
        Return the loss of every example instead of the batch mean.

    Returns
    -------
    array or Tensor (*lead,), or (*lead, B) with ``per_example``.

    Notes
    -----
    Shapes: margin_lb (*lead, B, K-1) -> (*lead,).
    Math: with the upper bounds ub_i = -margin_lb_i on y_i - y_t,
    L = ln(1 + sum_i exp(ub_i)) = logsumexp([0, -margin_lb]) (paper, eq. 2).
    It upper-bounds the worst-case CE over the input set because L_CE is
    increasing in every difference y_i - y_t; with exact margins (eps = 0) it is
    the cross-entropy of the logits.
    """
    md = data(margin_lb)
    if md.ndim < 2:
        raise ValueError(f"expected margin_lb (*lead, B, K-1), got {md.shape}")
    xp = get_xp(md)
    zero = xp.zeros((*md.shape[:-1], 1), dtype=md.dtype)
    loss = ops.logsumexp(ops.concatenate([zero, ops.neg(margin_lb)], axis=-1), axis=-1)
    return loss if per_example else ops.mean(loss, axis=-1)


def logit_margins(logits, y):
    """Compute the exact margins y_t - y_i for i != t, in margin-spec order.

    Parameters
    ----------
    logits : array or Tensor (*lead, B, K)
    y : int array (B,)

    Returns
    -------
    array or Tensor (*lead, B, K-1)

    Notes
    -----
    Shapes: logits (*lead, B, K), y (B,) -> (*lead, B, K-1).
    Math: m = C y with the rows e_t - e_i of the margin spec C (B, K-1, K),
    one matmul so that it stays on the tape.
    """
    _check_labels(logits, y)
    ld = data(logits)
    xp = get_xp(ld)
    K = ld.shape[-1]
    t = xp.asarray(data(y))[:, None]
    others = xp.arange(K - 1)[None, :]
    others = others + (others >= t)
    classes = xp.arange(K)
    C = (classes == t[..., None]).astype(ld.dtype) - (classes == others[..., None]).astype(ld.dtype)
    m = ops.matmul(C, ops.reshape(logits, (*ld.shape, 1)))
    return ops.reshape(m, (*ld.shape[:-1], K - 1))


def accuracy(logits, y):
    """Fraction of examples whose top logit is the label.

    Shapes: logits (*lead, B, K), y (B,) -> (*lead,). Ties count as correct only
    when the label is the first maximiser (NumPy's argmax).
    """
    ld = data(logits)
    _check_labels(ld, y)
    xp = get_xp(ld)
    return (xp.argmax(ld, axis=-1) == xp.asarray(data(y))).mean(axis=-1)


def certified(margin_lb):
    """Flag the examples whose margin lower bounds are all positive (certified).

    Shapes: margin_lb (*lead, B, K-1) -> bool (*lead, B). A positive lower bound
    on every y_t - y_i proves that class t wins on the whole input set.
    """
    md = data(margin_lb)
    if md.ndim < 2:
        raise ValueError(f"expected margin_lb (*lead, B, K-1), got {md.shape}")
    return (md > 0).all(axis=-1)
