"""Complete verification of a ReLU network on one input box, by mixed-integer programming.

The last stage of the certification cascade: when the relaxations (IBP, DeepPoly)
neither prove a specification row nor an attack breaks it, the exact minimum of
c . f(x) over the box decides. The network is encoded exactly as a MILP (Tjeng,
Xiao and Tedrake 2019) and solved by HiGHS through ``scipy.optimize.milp``:

- one continuous variable per input pixel, bounded by the box;
- every affine-like layer (Linear, Conv2d, Normalize, Flatten) is composed into a
  sparse affine expression of the variables, never a dense matrix (a convolution
  becomes sparse rows by index arithmetic, ``affine_map``);
- at each ReLU, a variable v per neuron that is not stably inactive, tied to its
  expression by an equality row and bounded by the neuron's intermediate bounds
  [l, u]; then, per neuron:
  u <= 0 (stable inactive): output 0, no variable;
  l >= 0 (stable active): output v;
  l < 0 < u (unstable): output h with a binary a and
  h >= v, h >= 0, h <= u a, h <= v - l (1 - a).
  With a in {0, 1} this is exactly h = max(v, 0) for l <= v <= u;
- the objective c . (head z + head_bias) is linear in the variables z, so all spec
  rows share one constraint matrix and only the objective changes.

Everything is float64 on the host, whatever the network's dtype.

Soundness. The encoding is exact provided [l, u] really bound each ReLU input.
They come from DeepPoly and IBP run in float64 (or from the caller), and are
widened outward by a small slack for rounding (``PRE_SLACK``). HiGHS works with
feasibility tolerances (about 1e-7 to 1e-6) and no safe rounding, so

- a row counts as proven only when its minimum is shown to exceed ``margin``
  (1e-5 by default), not merely 0: a bound that is positive but within solver
  tolerance of 0 is not trusted (conservative side: not certified). A proof
  is HiGHS finding no x with c . f(x) <= margin (every branch-and-bound node's
  LP infeasible or above the margin), or a sound relaxation bound > margin;
- a candidate counterexample is accepted only after a forward pass of the real
  network, in float64 and in the network's own dtype, confirms c . f(x) < 0; a
  candidate that fails this check (a tolerance artefact, e.g. a binary at 1e-6
  letting h leak through a big-M row) leaves its row undecided.

References
----------
V. Tjeng, K. Xiao, R. Tedrake, Evaluating robustness of neural networks with
mixed integer programming, ICLR 2019.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import scipy.sparse as sp
from scipy.optimize import Bounds, LinearConstraint, milp

from ..backend import get_xp, np, to_host
from ..bounds import crown, ibp
from ..bounds.spec import Box
from ..layers import Conv2d, Flatten, Linear, Normalize, ReLU
from ..model import Sequential
from ..tensor import data

STATUSES = ("certified", "counterexample", "timeout")

# Outward widening of intermediate bounds, relative: slack * (1 + |bound|), by the
# dtype they were computed in. Float64 back-substitution rounds at ~1e-13 here;
# float32 at ~1e-6 of the magnitudes summed, so 1e-5 covers a few hundred terms.
PRE_SLACK = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-9}

# HiGHS status codes as scipy.optimize.milp reports them
_OPTIMAL, _LIMIT, _INFEASIBLE = 0, 1, 2


@dataclass(frozen=True)
class MILPResult:
    """The verdict of ``verify`` on one sample.

    Attributes
    ----------
    status : {"certified", "counterexample", "timeout"}
        "certified": every row's minimum is proven > ``margin`` (skipped rows are
        taken as proven by the caller). "counterexample": ``x`` violates a row,
        checked by a forward pass. "timeout": neither; the time ran out, or some
        row's answer lies within solver tolerance of 0 (see ``rows``).
    lower : (S,) float64
        A proven lower bound on each row's minimum of c . f(x): the best of the
        relaxation bounds (``prior`` and those computed here), raised to
        ``margin`` for rows the MILP proved; skipped rows keep ``prior`` (else
        the computed relaxation bound). ``minimum`` gives exact values.
    value : (S,) float64
        The objective at the row's candidate counterexample (+inf where none).
    x : (C, H, W) float64 or None
        The validated counterexample.
    seconds : float
        Wall-clock time, encoding included.
    rows : tuple of str, length S
        Per row: "skipped", "proven", "violated", "open" (time ran out, or not
        reached after a counterexample) or "undecided" (the solver's candidate
        failed validation: its value lies within tolerance of 0, or it is a
        tolerance artefact; or HiGHS failed).
    """

    status: str
    lower: np.ndarray
    value: np.ndarray
    x: np.ndarray | None
    seconds: float
    rows: tuple = ()


@dataclass(frozen=True)
class Encoding:
    """The MILP of one network on one box, shared by every spec row.

    The output logits are ``head @ z + head_bias`` for the variable vector z, whose
    first ``n_inputs`` entries are the flattened input x.

    Shapes: A (R, n) CSR with row bounds row_lb, row_ub (R,); var_lb, var_ub,
    integrality (n,); head (K, n) CSR, head_bias (K,).
    """

    A: sp.csr_matrix
    row_lb: np.ndarray
    row_ub: np.ndarray
    var_lb: np.ndarray
    var_ub: np.ndarray
    integrality: np.ndarray
    head: sp.csr_matrix
    head_bias: np.ndarray
    n_inputs: int
    n_unstable: int


def conv_matrix(weight, stride: int, padding: int, in_shape) -> sp.csr_matrix:
    """Build the convolution x -> conv2d(x, weight) as a sparse matrix on flattened arrays.

    Shapes: weight (O, C, k, k), in_shape (C, H, W) -> (O * Ho * Wo, C * H * W).
    Output (o, p, q) reads input (c, p s - pad + i, q s - pad + j) with weight
    [o, c, i, j]; taps that fall in the zero padding are dropped.
    """
    O, Cin, k, _ = weight.shape
    _, H, W = in_shape
    Ho, Wo = (H + 2 * padding - k) // stride + 1, (W + 2 * padding - k) // stride + 1
    o, c, i, j, p, q = np.ix_(
        np.arange(O), np.arange(Cin), np.arange(k), np.arange(k), np.arange(Ho), np.arange(Wo)
    )
    hi, wi = p * stride - padding + i, q * stride - padding + j
    full = (O, Cin, k, k, Ho, Wo)
    valid = np.broadcast_to((hi >= 0) & (hi < H) & (wi >= 0) & (wi < W), full)
    rows = np.broadcast_to((o * Ho + p) * Wo + q, full)[valid]
    cols = np.broadcast_to((c * H + hi) * W + wi, full)[valid]
    vals = np.broadcast_to(weight[:, :, :, :, None, None], full)[valid]
    M = sp.csr_matrix((vals, (rows, cols)), shape=(O * Ho * Wo, Cin * H * W))
    M.eliminate_zeros()
    return M


def affine_map(layer, p, in_shape):
    """Return the affine map y = M x + b of an affine-like layer on flattened per-sample arrays.

    Returns (M, b) with M a CSR matrix and b an array, both float64, or None for
    Flatten (the identity on PyTorch's row-major flattening).
    Shapes: in_shape (C, H, W) or (N,) -> M (n_out, n_in), b (n_out,).
    """
    if isinstance(layer, Flatten):
        return None
    if isinstance(layer, Linear):
        W, b = to_host(p["weight"]).astype(np.float64), to_host(p["bias"]).astype(np.float64)
        return sp.csr_matrix(W), b
    if isinstance(layer, Conv2d):
        W, b = to_host(p["weight"]).astype(np.float64), to_host(p["bias"]).astype(np.float64)
        M = conv_matrix(W, layer.stride, layer.padding, in_shape)
        return M, np.repeat(b, M.shape[0] // b.size)
    if isinstance(layer, Normalize):
        hw = math.prod(in_shape[1:])
        inv = 1.0 / np.asarray(layer.std, dtype=np.float64)
        shift = -np.asarray(layer.mean, dtype=np.float64) * inv
        return sp.diags(np.repeat(inv, hw), format="csr"), np.repeat(shift, hw)
    raise ValueError(f"no MILP encoding for layer type {layer.type!r}")


def encode(net, lower, upper, pre=None, theta=None) -> Encoding:
    """Build the exact MILP encoding of ``net`` on the box [lower, upper].

    Parameters
    ----------
    net : Sequential
    lower, upper : (C, H, W) arrays
        The input box, already clipped to the data range.
    pre : dict, optional
        ``{ReLU layer index: (lb, ub)}`` bounds on each ReLU's input, per sample
        (arrays of the ReLU input's shape, or with a leading axis of 1; a ``Box``
        is accepted for the pair). Default: DeepPoly's, in float64. Either way
        they are widened by ``PRE_SLACK`` and intersected with IBP's (float64).
    theta : (D,) array, optional
        Parameters to use instead of ``net.theta``.

    Shapes: lower, upper (C, H, W) -> Encoding with n_inputs = C * H * W.
    Sound: exact for every x in the box as long as the bounds are (module docstring).
    """
    net64, lo, up = _checked(net, lower, upper, theta)
    return _encode(net64, lo, up, _relu_bounds(net64, lo, up, pre, None)[0])


def verify(
    net,
    lower,
    upper,
    C,
    pre=None,
    theta=None,
    time_limit: float = 60.0,
    skip=None,
    *,
    prior=None,
    margin: float = 1e-5,
) -> MILPResult:
    """Decide whether C f(x) > 0 for every x in the box [lower, upper], for one sample.

    Parameters
    ----------
    net : Sequential
    lower, upper : (C, H, W) arrays
        The input box, already clipped to the data range.
    C : (S, K) array
        Specification rows, e.g. one sample's ``margin_spec`` rows e_y - e_j.
    pre, theta
        As for ``encode``.
    time_limit : float
        Seconds for this sample, encoding included, shared by its rows.
    skip : (S,) bool array, optional
        Rows already proven (e.g. by DeepPoly); they are not solved.
    prior : (S,) array, optional
        Sound lower bounds on the rows (e.g. DeepPoly's): they order the rows, a
        row with prior > margin needs no solve, and skipped rows report them.
        Default: the float64 relaxation bounds computed here (DeepPoly and IBP
        without ``pre``, IBP with it).
    margin : float
        A row is proven when its minimum is shown to exceed this, not just 0
        (solver tolerance guard, module docstring).

    Returns
    -------
    MILPResult

    Notes
    -----
    Only the sign of each row's minimum matters, so each row is solved as the
    question "is there an x with c . f(x) <= margin?": the encoding plus that
    one row, with objective c . f(x) (so the search dives towards violations)
    and a relative gap so large that HiGHS stops at its first solution. An
    infeasible answer proves min > margin (``lower`` then reports margin: use
    ``minimum`` for the value); a solution is a candidate counterexample. This
    prunes every node whose LP bound exceeds the margin, and stops at the first
    violation, where minimising to a gap would have to close the gap first.

    Rows are solved one at a time, in increasing order of their prior bound:
    the row whose relaxation bound is lowest is the most likely to be violated,
    and one violated row settles the sample. A first pass gives each row an
    equal share of the time left; rows that ran out of time are retried with
    all the time then left once every row has had its turn, so one hard row
    cannot starve the easy ones. A candidate ends the search if forward passes
    confirm c . f(x) < 0; otherwise its row is "undecided" (it cannot be
    certified) and the search goes on.

    Shapes: lower, upper (C, H, W); C (S, K); skip, prior (S,) -> MILPResult with (S,) arrays.
    Sound: proofs need min > margin, refutations a forward pass (module docstring).
    """
    start = time.perf_counter()
    if not time_limit >= 0:
        raise ValueError(f"time_limit must be >= 0 seconds, got {time_limit}")
    net64, lo, up = _checked(net, lower, upper, theta)
    Cm = _checked_spec(net64, C)
    S = Cm.shape[0]
    skip = np.zeros(S, bool) if skip is None else _checked_rows(skip, S, "skip").astype(bool)
    bounds, relax = _relu_bounds(net64, lo, up, pre, Cm)
    prior = relax if prior is None else _checked_rows(prior, S, "prior").astype(np.float64)
    enc = _encode(net64, lo, up, bounds)

    lower_out = np.where(skip, prior, np.maximum(prior, relax))
    value = np.full(S, np.inf)
    rows = np.where(skip, "skipped", np.where(lower_out > margin, "proven", "open")).astype(object)
    deadline = start + float(time_limit)
    pending = [int(i) for i in np.argsort(prior, kind="stable") if rows[i] == "open"]
    for retry in (False, True):
        for n, i in enumerate(pending):
            left = deadline - time.perf_counter()
            if left <= 0:
                break
            res, offset = _solve(enc, Cm[i], left if retry else left / (len(pending) - n), margin)
            if res.status == _INFEASIBLE:
                rows[i] = "proven"
                lower_out[i] = max(lower_out[i], margin)
            elif res.x is not None:
                value[i] = res.fun + offset
                x = _candidate(enc, res.x, lo, up)
                if _violates(net, net64, x, Cm[i], theta):
                    rows[i] = "violated"
                    return _result("counterexample", lower_out, value, x, start, rows)
                rows[i] = "undecided"
            elif res.status != _LIMIT:
                rows[i] = "undecided"
        pending = [i for i in pending if rows[i] == "open"]
    status = "certified" if all(r in ("proven", "skipped") for r in rows) else "timeout"
    return _result(status, lower_out, value, None, start, rows)


def minimum(net, lower, upper, c, pre=None, theta=None, time_limit=None):
    """Return the exact minimum of c . f(x) over the box, solved to optimality (mip_rel_gap 0).

    Parameters as for ``verify``, with one spec row ``c`` (K,). ``time_limit``
    None means no limit; if it runs out first, ``TimeoutError`` is raised.

    Returns
    -------
    value : float
        The MILP optimum (exact up to HiGHS's tolerances, about 1e-6).
    x : (C, H, W) float64
        A minimiser, clipped to the box.

    Shapes: lower, upper (C, H, W); c (K,) -> float, (C, H, W).
    """
    net64, lo, up = _checked(net, lower, upper, theta)
    cm = _checked_spec(net64, np.asarray(to_host(c), dtype=np.float64)[None])[0]
    enc = _encode(net64, lo, up, _relu_bounds(net64, lo, up, pre, None)[0])
    limit = math.inf if time_limit is None else float(time_limit)
    res, offset = _solve(enc, cm, limit)
    if res.status != _OPTIMAL:
        if res.status == _LIMIT:
            raise TimeoutError(f"MILP not solved within {limit} s: {res.message}")
        raise RuntimeError(f"HiGHS failed on a feasible MILP (status {res.status}): {res.message}")
    return float(res.fun + offset), _candidate(enc, res.x, lo, up)


# ------------------------------------------------------------------------- internals


def _encode(net64, lo, up, bounds) -> Encoding:
    """Build the Encoding from float64 host bounds ``{ReLU index: (l, u)}`` (flattened)."""
    shapes = net64.shapes(lo.shape)
    params = net64.unravel()
    n = lo.size
    var_lb, var_ub, integ = [lo.ravel()], [up.ravel()], [np.zeros(n)]
    blocks, row_lb, row_ub = [], [], []
    expr, offset = sp.identity(n, format="csr"), np.zeros(n)  # current activation = expr z + offset
    n_unstable = 0
    for k, layer in enumerate(net64.layers):
        if not isinstance(layer, ReLU):
            mapped = affine_map(layer, params[k], shapes[k])
            if mapped is not None:
                M, b = mapped
                expr, offset = (M @ expr).tocsr(), M @ offset + b
            continue
        l, u = bounds[k]
        inactive = u <= 0
        unstable = (l < 0) & ~inactive
        live = np.flatnonzero(~inactive)
        m, q = live.size, int(unstable.sum())
        v = n + np.arange(m)
        # v - expr z = offset, with l <= v <= u
        blocks.append(sp.hstack([-expr[live], sp.identity(m, format="csr")], format="csr"))
        row_lb.append(offset[live])
        row_ub.append(offset[live])
        var_lb += [l[live], np.zeros(q), np.zeros(q)]
        var_ub += [u[live], u[unstable], np.ones(q)]
        integ += [np.zeros(m), np.zeros(q), np.ones(q)]
        vu = v[unstable[live]]
        h, a = n + m + np.arange(q), n + m + q + np.arange(q)
        lu, uu = l[unstable], u[unstable]
        # h - v >= 0;  h - u a <= 0;  h - v - l a <= -l   (h <= v - l (1 - a))
        r = np.arange(q)
        rr = np.concatenate([r, r, q + r, q + r, 2 * q + r, 2 * q + r, 2 * q + r])
        cc = np.concatenate([h, vu, h, a, h, vu, a])
        vals = np.concatenate(
            [np.ones(q), -np.ones(q), np.ones(q), -uu, np.ones(q), -np.ones(q), -lu]
        )
        blocks.append(sp.csr_matrix((vals, (rr, cc)), shape=(3 * q, n + m + 2 * q)))
        row_lb.append(np.concatenate([np.zeros(q), np.full(2 * q, -np.inf)]))
        row_ub.append(np.concatenate([np.full(q, np.inf), np.zeros(q), -lu]))
        # the ReLU's output: v where stably active, h where unstable, nothing where inactive
        col = np.full(l.size, -1)
        col[live] = v
        col[unstable] = h
        out = np.flatnonzero(col >= 0)
        n += m + 2 * q
        n_unstable += q
        expr = sp.csr_matrix((np.ones(out.size), (out, col[out])), shape=(l.size, n))
        offset = np.zeros(l.size)
    A = sp.vstack([_widen(B, n) for B in blocks], format="csr") if blocks else sp.csr_matrix((0, n))
    return Encoding(
        A=A,
        row_lb=np.concatenate(row_lb) if row_lb else np.zeros(0),
        row_ub=np.concatenate(row_ub) if row_ub else np.zeros(0),
        var_lb=np.concatenate(var_lb),
        var_ub=np.concatenate(var_ub),
        integrality=np.concatenate(integ),
        head=_widen(expr, n),
        head_bias=offset,
        n_inputs=lo.size,
        n_unstable=n_unstable,
    )


def _widen(M, n: int) -> sp.csr_matrix:
    """M with n columns (the variables added after it was built have zero coefficients)."""
    M = M.tocsr()
    return sp.csr_matrix((M.data, M.indices, M.indptr), shape=(M.shape[0], n))


def _solve(enc: Encoding, c, time_limit: float, cutoff=None):
    """Minimise c . (head z + head_bias) by HiGHS; returns (scipy result, constant offset).

    With ``cutoff``, the feasible set is cut to c . f(x) <= cutoff and HiGHS stops at
    its first solution; without, it solves to optimality (mip_rel_gap 0).
    """
    obj = np.asarray(enc.head.T @ c).ravel()
    offset = float(c @ enc.head_bias)
    A, row_lb, row_ub, gap = enc.A, enc.row_lb, enc.row_ub, 0.0
    if cutoff is not None:
        A = sp.vstack([A, sp.csr_matrix(obj[None])], format="csr")
        row_lb, row_ub = np.append(row_lb, -np.inf), np.append(row_ub, cutoff - offset)
        gap = 1e30  # every solution is within this relative gap of the bound: stop at the first
    res = milp(
        obj,
        integrality=enc.integrality,
        bounds=Bounds(enc.var_lb, enc.var_ub),
        constraints=LinearConstraint(A, row_lb, row_ub) if A.shape[0] else (),
        options={"time_limit": max(float(time_limit), 1e-3), "mip_rel_gap": gap},
    )
    return res, offset


def _candidate(enc: Encoding, z, lo, up):
    """Return the input part of a solution, clipped into the box (tolerances may leave it)."""
    return np.clip(np.asarray(z[: enc.n_inputs]).reshape(lo.shape), lo, up)


def _violates(net, net64, x, c, theta) -> bool:
    """Whether c . f(x) < 0 by forward passes in float64 and in the network's own dtype."""
    if float(c @ net64.forward(x[None])[0]) >= 0:
        return False
    xp = get_xp(net.theta)
    own = net.forward(xp.asarray(x[None], dtype=net.dtype), theta)
    return float(c @ to_host(own)[0].astype(np.float64)) < 0


def _relu_bounds(net64, lo, up, pre, Cm):
    """Float64 bounds {k: (l, u)} (flattened) on every ReLU input, and relaxation bounds on C rows.

    Without ``pre``: DeepPoly's, intersected with IBP's. With it: the caller's,
    widened by PRE_SLACK, intersected with IBP's. The row bounds (None without
    Cm) are the best of the relaxations computed here.
    Sound: DeepPoly and IBP are sound, so their intersection is; the widening
    covers the rounding of bounds computed in floating point.
    """
    box = Box(lo[None], up[None])
    theta = net64.theta
    spec = None if Cm is None else Cm[None]
    relus = [k for k, layer in enumerate(net64.layers) if isinstance(layer, ReLU)]
    box_out, box_pre = ibp.ibp(net64, theta, box, spec)
    row_lb = None if Cm is None else np.asarray(data(box_out.lb))[0]
    if pre is None:
        dp_out, dp_pre = crown.deeppoly(net64, theta, box, spec)
        given = {k: (data(b.lb), data(b.ub)) for k, b in dp_pre.items()}
        if Cm is not None:
            row_lb = np.maximum(row_lb, np.asarray(data(dp_out.lb))[0])
    else:
        given = _checked_pre(pre, net64, lo.shape, relus)
    bounds = {}
    for k in relus:
        l, u = _widened(*given[k])
        ibp_l, ibp_u = _widened(data(box_pre[k].lb), data(box_pre[k].ub))
        bounds[k] = (np.maximum(l, ibp_l), np.minimum(u, ibp_u))
    return bounds, row_lb


def _widened(l, u):
    """Flattened float64 bounds widened by PRE_SLACK of the dtype they were computed in."""
    slack = PRE_SLACK.get(np.dtype(l.dtype), PRE_SLACK[np.dtype(np.float32)])
    l, u = np.asarray(l, np.float64).ravel(), np.asarray(u, np.float64).ravel()
    return l - slack * (1 + np.abs(l)), u + slack * (1 + np.abs(u))


def _checked(net, lower, upper, theta):
    """Return a float64 host copy of the network, and the box as float64 (C, H, W) arrays."""
    lo = np.asarray(to_host(lower), dtype=np.float64)
    up = np.asarray(to_host(upper), dtype=np.float64)
    if lo.ndim != 3 or lo.shape != up.shape:
        raise ValueError(f"lower and upper must both be (C, H, W), got {lo.shape} and {up.shape}")
    if net.input_shape is not None and lo.shape != net.input_shape:
        raise ValueError(f"the input box must be {net.input_shape}, got {lo.shape}")
    if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(up))):
        raise ValueError("lower and upper must be finite")
    if np.any(lo > up):
        raise ValueError("lower must be <= upper everywhere")
    if not net.layers or not isinstance(net.layers[-1], Linear):
        raise ValueError("the network must end in a linear layer")
    theta = net.theta if theta is None else theta
    th = np.asarray(to_host(data(theta)), dtype=np.float64)
    if th.shape != (net.n_params,):
        raise ValueError(f"theta must be ({net.n_params},), got {th.shape}")
    net64 = Sequential(net.layers, dtype="float64", input_shape=lo.shape)
    net64.theta = th
    return net64, lo, up


def _checked_spec(net64, C):
    """C as a float64 (S, K) host array."""
    Cm = np.asarray(to_host(C), dtype=np.float64)
    K = net64.layers[-1].out_features
    if Cm.ndim != 2 or Cm.shape[1] != K or Cm.shape[0] == 0:
        raise ValueError(f"C must be (S, K={K}) with S >= 1, got {Cm.shape}")
    return Cm


def _checked_rows(a, S: int, name: str):
    """Return a per-row array of shape (S,) on the host."""
    a = np.asarray(to_host(a))
    if a.shape != (S,):
        raise ValueError(f"{name} must be (S={S},), got {a.shape}")
    return a


def _checked_pre(pre, net64, in_shape, relus):
    """Return the caller's ReLU-input bounds as host arrays {k: (l, u)} of the inputs' shapes."""
    if not isinstance(pre, dict) or set(pre) != set(relus):
        keys = sorted(pre) if isinstance(pre, dict) else type(pre).__name__
        raise ValueError(f"pre must be a dict keyed by the ReLU layer indices {relus}, got {keys}")
    shapes = net64.shapes(in_shape)
    out = {}
    for k in relus:
        pair = (pre[k].lb, pre[k].ub) if isinstance(pre[k], Box) else pre[k]
        l, u = (to_host(data(b)) for b in pair)
        if l.shape[:1] == (1,) and l.shape[1:] == shapes[k]:
            l, u = l[0], u[0]
        if l.shape != shapes[k] or u.shape != shapes[k]:
            raise ValueError(f"pre[{k}] must be two {shapes[k]} arrays, got {l.shape}, {u.shape}")
        if np.any(l > u):
            raise ValueError(f"pre[{k}]: lower bound above upper bound")
        out[k] = (l, u)
    return out


def _result(status, lower, value, x, start, rows) -> MILPResult:
    return MILPResult(
        status=status,
        lower=np.asarray(lower, dtype=np.float64),
        value=value,
        x=x,
        seconds=time.perf_counter() - start,
        rows=tuple(str(r) for r in rows),
    )


__all__ = [
    "PRE_SLACK",
    "STATUSES",
    "Encoding",
    "MILPResult",
    "affine_map",
    "conv_matrix",
    "encode",
    "minimum",
    "verify",
]
