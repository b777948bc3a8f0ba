"""alpha-CROWN with fixed intermediate bounds: DeepPoly with optimised lower ReLU slopes.

On an unstable neuron (l < 0 < u) every line alpha v with 0 <= alpha <= 1 lies
below relu(v) on [l, u] (relu(v) >= 0 and relu(v) >= v, and alpha v is a convex
combination of 0 and v), so back-substitution is sound for ANY such alpha.
DeepPoly picks alpha = 1[u > -l] once per neuron; alpha-CROWN (Xu et al. 2021)
treats the lower bound lb(alpha) as a function of the slopes and climbs it by
projected gradient ascent (Adam, then clip to [0, 1]).

- Per spec row: lb of row s only depends on the slopes used for row s, so each
  row gets its own alpha, shape (B, S, *layer_shape) per ReLU, and one backward
  pass of sum(lb) gives every row its own gradient.
- Fixed intermediate bounds: the ReLU input bounds ``pre`` (DeepPoly's by default)
  are not re-optimised (auto_LiRPA's default too, ``fix_interm_bounds``); only the
  output is back-substituted, lower side only, so a step costs about one CROWN-IBP
  pass plus its backward. Optimising every hidden neuron's bound as well would
  cost one DeepPoly pass, with backward, per step.
- The result is the elementwise max over every iterate's bound: each iterate is
  a sound lower bound (its alpha lies in [0, 1]), so their max is one too, and
  iterate 0 is DeepPoly's bound, so the result is never looser than DeepPoly.

Only the slopes are on the tape: the result is a plain array, not differentiable
in the parameters or the input box (a certification tool, not a training loss).
"""

from __future__ import annotations

from .. import ops
from ..backend import get_xp
from ..layers import ReLU
from ..optim import adam
from ..tensor import Tensor, data
from . import _validated, crown, relax
from .spec import Box, fold_spec, input_shape, plan_chunks, slices


def alpha_crown(
    net,
    lower,
    upper,
    C=None,
    *,
    steps: int = 20,
    lr: float = 0.1,
    pre: dict | None = None,
    theta=None,
    max_memory_gb: float = 4.0,
):
    """alpha-CROWN lower bounds on C @ f(x) (or on the logits) over the box [lower, upper].

    Parameters
    ----------
    net : Sequential
        A network ending in a Linear layer.
    lower, upper : array, (B, C, H, W)
        The input box.
    C : array, (B, S, K), optional
        A linear specification (e.g. ``margin_spec``); None bounds the K logits.
    steps : int
        Adam steps on the slopes; 0 gives DeepPoly's bound (with ``pre``).
        auto_LiRPA's default is 20 iterations.
    lr : float
        Adam's learning rate on the slopes (which live in [0, 1]). auto_LiRPA
        uses 0.5 with a 0.98 per-step decay; on our cnn3 nets 0.1 and 0.5 give
        improvements within 1% of each other (docs/relaxations.md, "alpha-CROWN").
    pre : dict, optional
        ``{ReLU layer index: Box}`` of every ReLU input, (B, *layer_shape), e.g.
        ``intermediate_bounds(net, lower, upper, "deeppoly")``; computed with
        DeepPoly when None. Must be sound for the box: the slopes are only sound
        relaxations on [pre.lb, pre.ub].
    theta : array, (D,), optional
        One parameter vector; default the network's own.
    max_memory_gb : float
        Budget for one chunk of (sample, spec row) pairs, optimised independently.

    Returns
    -------
    lb : array, (B, S), or (B, K) when C is None
        lb <= C f(x) for every x in the box, and lb >= DeepPoly's lower bound.
    pre : dict
        The intermediate bounds used.

    Shapes: lower, upper (B, C, H, W); C (B, S, K) -> lb (B, S), pre {i: Box (B, *shape_i)}.
    Sound: every iterate back-substitutes through lower lines alpha v, 0 <= alpha <= 1,
    which lie below relu on [l, u]; the max of sound lower bounds is sound.

    References
    ----------
    K. Xu et al., Fast and complete: enabling complete neural network verification with
    rapid and massively parallel incomplete verifiers, ICLR 2021, Sec. 3.1.
    """
    if int(steps) != steps or steps < 0:
        raise ValueError(f"steps must be an integer >= 0, got {steps}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    _, box, _, C = _validated(net, data(lower), data(upper), "deeppoly", data(C), None)
    xp = get_xp(data(box.lb))
    theta = _checked_theta(net, theta)
    budget = float(max_memory_gb) * 1e9
    if pre is None:
        _, pre = crown.deeppoly(net, theta, box, None, budget)
    pre = _checked_pre(net, box, pre)
    B = data(box.lb).shape[0]
    K = net.layers[-1].out_features
    if C is None:
        C = xp.broadcast_to(xp.eye(K, dtype=net.dtype), (B, K, K))
    S = C.shape[1]
    shapes = net.shapes(input_shape(box))
    # the estimate counts both sides; the lower side alone leaves room for alpha and Adam's state
    item = crown._bytes_per_row(net, shapes, len(net.layers) - 1, net.theta.dtype.itemsize)
    row_chunk, batch_chunk = plan_chunks(S, B, item, budget)
    lb = xp.empty((B, S), dtype=net.dtype)
    for bs in slices(B, batch_chunk):
        box_b = Box(box.lb[bs], box.ub[bs])
        pre_b = {i: Box(b.lb[bs], b.ub[bs]) for i, b in pre.items()}
        for rs in slices(S, row_chunk):
            lb[bs, rs] = _optimise(net, theta, box_b, C[bs, rs], pre_b, int(steps), float(lr))
    return lb, pre


def initial_slopes(pre: dict, S: int) -> dict:
    """DeepPoly's lower slopes lambda = 1[u > -l] (1 active, 0 inactive), one copy per spec row.

    Shapes: pre {i: Box (B, *shape_i)} -> {i: alpha (B, S, *shape_i)}.
    """
    out = {}
    for i, b in pre.items():
        lam = relax.deeppoly(b.lb, b.ub).slope_l
        xp = get_xp(lam)
        out[i] = xp.repeat(xp.expand_dims(lam, 1), S, axis=1)
    return out


def lower_bound(net, theta, box: Box, C, pre: dict, alpha: dict):
    """Back-substitution's lower bound on C f(x) with lower slopes ``alpha`` on unstable neurons.

    Stable neurons keep their exact slope (1 active, 0 inactive) whatever ``alpha``
    says; upper lines are DeepPoly's chords on ``pre``. Differentiable in ``alpha``
    (given Tensors) through the primitives of ``gls_np.ops``.

    Shapes: box (B, *in); C (B, S, K); pre {i: Box (B, *shape_i)};
    alpha {i: (B, S, *shape_i)} -> lb (B, S).
    Sound for every alpha in [0, 1] (the module docstring); not checked here.
    """
    params = net.unravel(theta)
    rels = {}
    for i, b in pre.items():
        rel = relax.deeppoly(b.lb, b.ub)
        _, unstable = relax.split(b.lb, b.ub)
        # back-substitution holds rows first: alpha (B, S, *shape) -> (S, B, *shape), and
        # (1, B, *shape) masks and exact slopes, broadcast over its rows
        slope_l = ops.where(unstable[None], ops.swapaxes(alpha[i], 0, 1), rel.slope_l[None])
        rels[i] = relax.LinearRelaxation(slope_l, rel.icpt_l, rel.slope_u, rel.icpt_u)
    head = fold_spec(net.layers[-1], params[-1], C)
    lin = crown.LinearBounds(ops.swapaxes(head.W, 0, 1), ops.swapaxes(head.b, 0, 1), None, None)
    shapes = net.shapes(input_shape(box))
    lin = crown.backsubstitute(net.layers[:-1], params, shapes, pre, lin, rels)
    return crown.concretize(lin, box).lb


def _optimise(net, theta, box: Box, C, pre: dict, steps: int, lr: float):
    """Projected Adam ascent on the slopes of one chunk; the max bound over all iterates.

    Shapes: box (b, *in); C (b, s, K); pre {i: Box (b, *shape_i)} -> lb (b, s).
    """
    xp = get_xp(data(box.lb))
    alpha = initial_slopes(pre, C.shape[1])
    opt = adam()
    state = {i: opt.init(a) for i, a in alpha.items()}
    best = None
    for t in range(steps + 1):
        taped = t < steps and bool(alpha)
        leaves = {i: Tensor(a, requires_grad=True) for i, a in alpha.items()} if taped else alpha
        lb = lower_bound(net, theta, box, C, pre, leaves)
        best = data(lb) if best is None else xp.maximum(best, data(lb))
        if not taped:
            break
        ops.sum(lb).backward()
        for i, leaf in leaves.items():
            # ascent: Adam descends on -grad
            step, state[i] = opt.update(-leaf.grad, state[i], lr)
            alpha[i] = xp.clip(alpha[i] + step, 0.0, 1.0)
    return best


def _checked_theta(net, theta):
    """Check ``theta`` and return it as one vector (D,) in the net's dtype (its own when None)."""
    if theta is None:
        return net.theta
    theta = data(theta)
    if theta.shape != (net.n_params,):
        raise ValueError(f"theta must be one parameter vector ({net.n_params},), got {theta.shape}")
    return get_xp(net.theta).asarray(theta, dtype=net.dtype)


def _checked_pre(net, box: Box, pre: dict) -> dict:
    """Check ``pre`` and return it as bare arrays, one Box (B, *shape_i) per ReLU layer.

    Arrays from the host are copied to the box's device, as the box's own ends are.
    """
    relus = [i for i, layer in enumerate(net.layers) if isinstance(layer, ReLU)]
    if sorted(pre) != relus:
        raise ValueError(f"pre must bound the inputs of the ReLU layers {relus}, got {sorted(pre)}")
    shapes = net.shapes(input_shape(box))
    B = data(box.lb).shape[0]
    xp, out = get_xp(data(box.lb)), {}
    for i in relus:
        lb, ub = (xp.asarray(data(e), dtype=net.dtype) for e in (pre[i].lb, pre[i].ub))
        if lb.shape != (B, *shapes[i]) or ub.shape != lb.shape:
            raise ValueError(
                f"pre[{i}] must be (B, *shape) = {(B, *shapes[i])}, got {lb.shape} and {ub.shape}"
            )
        out[i] = Box(lb, ub)
    return out


__all__ = ["alpha_crown", "initial_slopes", "lower_bound"]
