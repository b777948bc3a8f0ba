"""The certification cascade: per sample, the cheapest step that decides robustness.

A network f is robust on (x, y) at radius eps when every margin
m_j(x') = f_y(x') - f_j(x') (j != y) is positive for every x' in the input set
B = {x' : |x' - x|_inf <= eps, 0 <= x' <= 1}. Each sample goes through the
steps below in order and stops at the first one that decides it:

1. ``natural``: a wrong prediction at x itself is a counterexample (x is in B);
2. ``pgd``: a PGD attack with restarts; a point of B that a forward pass
   misclassifies decides "attacked";
3. ``ibp``, ``crown-ibp``, ``deeppoly``: sound lower bounds on every margin
   over B; when every margin's best lower bound so far is positive the sample is
   "certified";
4. ``alpha-crown``: DeepPoly with lower ReLU slopes optimised per margin row;
5. ``milp``: the exact minimum margin by mixed-integer programming over B (the
   rows already proven positive are skipped, and the ReLU input bounds are
   DeepPoly's intersected with IBP's); a solver counterexample counts only after
   a forward pass confirms it. A sample it cannot settle within its time limit is
   a "timeout".

Both sides are sound: "certified" needs a proof (a sound lower bound > 0 on
every margin), "attacked" needs a concrete input in B that the network
misclassifies. A sample can therefore never be both, and the cascade checks
that on every run (``SoundnessError``).

The relaxations run on every correctly classified sample, even those PGD broke
or a cheaper relaxation certified, so that the report can give the certified
accuracy each relaxation would give on its own (``lb_<step>`` columns).
alpha-CROWN starts from DeepPoly's bound and keeps the best iterate, so it
certifies every sample DeepPoly does: it runs on the samples DeepPoly did not
certify and PGD did not break. The MILP, exact, runs only on what is still open.

The cheap steps work on a batch at once; ``seconds`` charges each sample its
share of every batched step it went through plus its own MILP time.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from .. import attacks
from ..backend import get_xp, make_rng, np, to_device, to_host
from ..bounds import crown, hbox, ibp
from ..bounds.alpha_crown import alpha_crown
from ..bounds.spec import Box, linf_box, margin_spec
from ..losses import logit_margins
from . import milp

STEPS = ("natural", "pgd", "ibp", "crown-ibp", "deeppoly", "alpha-crown", "milp")
RELAXATIONS = ("ibp", "crown-ibp", "deeppoly", "alpha-crown")
STATUSES = ("certified", "attacked", "timeout")


class SoundnessError(RuntimeError):
    """A sample was both certified and attacked: a bound or an attack is wrong."""


@dataclass(frozen=True)
class Options:
    """What the cascade runs and with what effort.

    eps: L-inf radius in the [0, 1] pixel scale (before any Normalize layer).
    pgd_steps, pgd_restarts: the attack; restarts start from random points of B.
    alpha_steps, alpha_lr: alpha-CROWN's gradient ascent (0 steps skips the step).
    timeout: seconds of MILP per sample (0 skips the MILP; undecided samples are then timeouts).
    max_memory_gb: budget of one chunk of back-substitution.
    seed: the attack's random starts come from ``make_rng((seed, index of the batch's first
    sample))``: the same batches give the same results, however they are spread over ranks.
    run_steps: the steps to try (a subset of ``STEPS``; natural always runs).
    """

    eps: float
    pgd_steps: int = 40
    pgd_restarts: int = 5
    alpha_steps: int = 20
    alpha_lr: float = 0.1
    timeout: float = 60.0
    max_memory_gb: float = 4.0
    seed: int = 0
    run_steps: tuple = field(default=STEPS)

    def __post_init__(self):
        checks = [
            (self.eps >= 0, f"eps must be >= 0, got {self.eps}"),
            (self.pgd_steps >= 0, f"pgd_steps must be >= 0, got {self.pgd_steps}"),
            (self.pgd_restarts >= 1, f"pgd_restarts must be >= 1, got {self.pgd_restarts}"),
            (self.alpha_steps >= 0, f"alpha_steps must be >= 0, got {self.alpha_steps}"),
            (self.alpha_lr > 0, f"alpha_lr must be > 0, got {self.alpha_lr}"),
            (self.timeout >= 0, f"timeout must be >= 0 seconds, got {self.timeout}"),
            (self.max_memory_gb > 0, f"max_memory_gb must be > 0, got {self.max_memory_gb}"),
        ]
        for ok, message in checks:
            if not ok:
                raise ValueError(message)


def min_margin(logits, y):
    """Smallest margin f_y - f_j over j != y.  Shapes: logits (B, K), y (B,) -> (B,) host."""
    return to_host(logit_margins(logits, y)).astype(np.float64).min(axis=1)


def relaxation_margins(net, lower, upper, y, method: str, max_memory_gb: float = 4.0):
    """Lower bounds on every margin over the box, and the ReLU input bounds used.

    Shapes: lower, upper (B, C, H, W), y (B,) -> lb (B, K-1) host float64, pre {i: Box}.
    ``method`` is "ibp", "crown-ibp" or "deeppoly" (the cheap steps of the cascade), or
    "hbox" (pre is then None): the evaluation during training uses this function too.
    """
    K = net.layers[-1].out_features
    C = margin_spec(to_device(y), K, dtype=net.dtype)
    box = Box(lower, upper)
    budget = float(max_memory_gb) * 1e9
    if method == "ibp":
        out, pre = ibp.ibp(net, net.theta, box, C)
    elif method == "crown-ibp":
        out, pre = crown.crown_ibp(net, net.theta, box, C, budget)
    elif method == "deeppoly":
        out, pre = crown.deeppoly(net, net.theta, box, C, budget)
    elif method == "hbox":
        out, pre = hbox.hbox_bounds(net, net.theta, box, C, budget), None
    else:
        raise ValueError(
            f"unknown relaxation {method!r}; expected ibp, hbox, crown-ibp or deeppoly"
        )
    return to_host(out.lb).astype(np.float64), pre


def attack(net, x, y, eps, steps: int, restarts: int, rng):
    """PGD with restarts; returns (attacked mask, margin at the best point found).

    Shapes: x (B, C, H, W), y (B,) -> (B,) bool host, (B,) float64 host.
    The mask is read off a forward pass at the returned points, not the attack's own bookkeeping.
    """
    if steps == 0 or eps == 0:
        x_adv = x
    else:
        x_adv = attacks.pgd(net, x, y, eps, steps=steps, restarts=restarts, rng=rng)
    logits = net(x_adv)
    attacked = to_host(get_xp(logits).argmax(logits, axis=-1)) != to_host(y)
    return attacked, min_margin(logits, y)


def _intersect(a: Box, b: Box) -> Box:
    """Intersect two sound boxes on the same neurons (sound, and tighter than each)."""
    xp = get_xp(a.lb)
    return Box(xp.maximum(a.lb, b.lb), xp.minimum(a.ub, b.ub))


class _Clock:
    """Seconds per step, charged evenly to the samples a batched step ran on."""

    def __init__(self, n: int):
        self.per_sample = np.zeros(n)
        self.steps = {step: [0.0, 0] for step in STEPS}

    def charge(self, step: str, seconds: float, which) -> None:
        which = np.flatnonzero(which)
        if len(which):
            self.per_sample[which] += seconds / len(which)
        self.steps[step][0] += seconds
        self.steps[step][1] += len(which)


def certify_batch(net, x, y, index, opts: Options, on_sample=None):
    """Run the cascade on a batch of samples.

    Parameters
    ----------
    net : Sequential (its dtype is the precision of every bound; float64 is the safe choice)
    x : array (B, C, H, W) in [0, 1];  y : int array (B,);  index : int array (B,)
        The samples and their indices in the dataset split (for the report and the seed).
    opts : Options
    on_sample : callable(record), optional
        Called once per sample as soon as it is decided (for progress bars).

    Returns
    -------
    records : list of dict, one per sample in input order (see ``report.COLUMNS``)
    steps : dict step -> [seconds, samples it ran on]
    """
    x, y = to_device(x, net.dtype), to_device(y)
    y_host, index = to_host(y).astype(np.int64), np.asarray(index, dtype=np.int64)
    B = len(y_host)
    clock = _Clock(B)
    S = net.layers[-1].out_features - 1
    best = np.full((B, S), -np.inf)  # per margin row, the best proven lower bound so far
    lbs = {step: np.full(B, np.nan) for step in (*RELAXATIONS, "milp")}
    step = np.full(B, "", dtype=object)
    status = np.full(B, "timeout", dtype=object)
    upper = np.full(B, np.inf)
    open_ = np.ones(B, dtype=bool)

    def decide(which, name, verdict):
        which = which & open_
        step[which], status[which] = name, verdict
        open_[which] = False
        for i in np.flatnonzero(which):
            if on_sample is not None:
                on_sample(_record(i))

    def _record(i):
        return {
            "index": int(index[i]),
            "label": int(y_host[i]),
            "prediction": int(pred[i]),
            "step": step[i] or "none",
            "status": status[i],
            "margin_lower": float(best[i].min()) if S else float("inf"),
            "margin_upper": float(upper[i]),
            "seconds": float(clock.per_sample[i]),
            **{f"lb_{name.replace('-', '_')}": float(lbs[name][i]) for name in lbs},
        }

    t = time.perf_counter()
    logits = net(x)
    pred = to_host(get_xp(logits).argmax(logits, axis=-1))
    upper[:] = min_margin(logits, y)
    clock.charge("natural", time.perf_counter() - t, np.ones(B, dtype=bool))
    wrong = pred != y_host
    decide(wrong, "natural", "attacked")
    correct = ~wrong
    if not correct.any():
        return [_record(i) for i in range(B)], clock.steps

    sel = np.flatnonzero(correct)
    sel_d = get_xp(x).asarray(sel)
    rng = make_rng((opts.seed, int(index[0]) if B else 0))
    if "pgd" in opts.run_steps:
        t = time.perf_counter()
        attacked, margins = attack(
            net, x[sel_d], y[sel_d], opts.eps, opts.pgd_steps, opts.pgd_restarts, rng
        )
        upper[sel] = np.minimum(upper[sel], margins)
        clock.charge("pgd", time.perf_counter() - t, correct)
        hit = np.zeros(B, dtype=bool)
        hit[sel[attacked]] = True
        decide(hit, "pgd", "attacked")
    pgd_hit = correct & (step == "pgd")

    box = linf_box(x[sel_d], opts.eps)
    pre = None
    for name in ("ibp", "crown-ibp", "deeppoly"):
        if name not in opts.run_steps:
            continue
        t = time.perf_counter()
        lb, pre_name = relaxation_margins(net, box.lb, box.ub, y[sel_d], name, opts.max_memory_gb)
        clock.charge(name, time.perf_counter() - t, correct)
        if name != "crown-ibp":  # CROWN-IBP's ReLU bounds are IBP's
            pre = pre_name if pre is None else {k: _intersect(pre[k], pre_name[k]) for k in pre}
        _prove(name, sel, lb, best, lbs, pgd_hit)
        decide(_proven(best), name, "certified")

    # everything DeepPoly left open that no attack refuted, decided or not, so that the
    # report's alpha-CROWN-alone accuracy is exact (it certifies all DeepPoly does)
    rest = sel[~(lbs["deeppoly"][sel] > 0) & ~pgd_hit[sel]]
    if "alpha-crown" in opts.run_steps and opts.alpha_steps > 0 and len(rest):
        t = time.perf_counter()
        pos = get_xp(x).asarray(np.searchsorted(sel, rest))
        sub = {k: Box(v.lb[pos], v.ub[pos]) for k, v in pre.items()} if pre else None
        lb, _ = alpha_crown(
            net,
            box.lb[pos],
            box.ub[pos],
            margin_spec(y[get_xp(x).asarray(rest)], S + 1, dtype=net.dtype),
            steps=opts.alpha_steps,
            lr=opts.alpha_lr,
            pre=sub,
            max_memory_gb=opts.max_memory_gb,
        )
        clock.charge("alpha-crown", time.perf_counter() - t, np.isin(np.arange(B), rest))
        lb = to_host(lb).astype(np.float64)
        _prove("alpha-crown", rest, lb, best, lbs, pgd_hit)
        decide(_proven(best), "alpha-crown", "certified")

    if "milp" in opts.run_steps and opts.timeout > 0:
        for i in np.flatnonzero(open_):
            pos = int(np.searchsorted(sel, i))
            result = milp.verify(
                net,
                box.lb[pos],
                box.ub[pos],
                to_host(margin_spec(y[i : i + 1], S + 1))[0],
                pre={k: (v.lb[pos], v.ub[pos]) for k, v in pre.items()} if pre else None,
                time_limit=opts.timeout,
                skip=best[i] > 0,
                prior=best[i],
            )
            clock.per_sample[i] += result.seconds
            clock.steps["milp"][0] += result.seconds
            clock.steps["milp"][1] += 1
            best[i] = np.maximum(best[i], result.lower)
            lbs["milp"][i] = float(best[i].min())
            upper[i] = min(upper[i], float(np.min(result.value)))
            if result.status == "certified":
                decide(_only(i, B), "milp", "certified")
            elif result.status == "counterexample":
                decide(_only(i, B), "milp", "attacked")
            else:
                decide(_only(i, B), "milp", "timeout")
    decide(open_.copy(), "none", "timeout")
    return [_record(i) for i in range(B)], clock.steps


def _prove(name, rows_of, lb, best, lbs, pgd_hit) -> None:
    """Fold one relaxation's margin bounds (rows ``rows_of``) into the running best."""
    lbs[name][rows_of] = lb.min(axis=1)
    best[rows_of] = np.maximum(best[rows_of], lb)
    broken = rows_of[(lb > 0).all(axis=1) & pgd_hit[rows_of]]
    if len(broken):
        raise SoundnessError(
            f"{name} certified sample(s) at batch position {broken.tolist()} that PGD attacked"
        )


def _proven(best):
    """Flag the samples whose every margin row has a positive proven lower bound."""
    return (best > 0).all(axis=1)


def _only(i: int, B: int):
    mask = np.zeros(B, dtype=bool)
    mask[i] = True
    return mask


def certify(net, x, y, index, opts: Options, *, batch_size: int = 100, bar=None, comm=None):
    """Run the cascade over samples in batches of ``batch_size``, split over ranks.

    Shapes: x (N, C, H, W) host or device, y (N,), index (N,) -> records (N), steps.
    Batch k holds samples [k * batch_size, (k + 1) * batch_size) and goes to rank k mod R
    (round robin, so that batches of hard samples spread out); since a batch's attack is
    seeded by its first index, the records do not depend on the number of ranks R.
    Returns, on rank 0, every record in sample order and the step times summed over
    ranks; on the other ranks (None, None). ``bar`` advances by one per decided sample of
    this rank and shows its running natural, adversarial (PGD) and certified accuracy.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rank, size = (comm.rank, comm.size) if comm is not None else (0, 1)
    records, steps = [], {step: [0.0, 0] for step in STEPS}
    seen = {"n": 0, "nat": 0, "adv": 0, "cert": 0}

    def on_sample(rec):
        seen["n"] += 1
        seen["nat"] += rec["step"] != "natural"
        seen["adv"] += rec["step"] not in ("natural", "pgd")
        seen["cert"] += rec["status"] == "certified"
        if bar is not None:
            n = seen["n"]
            bar.update(1)
            bar.set_postfix(
                {
                    "nat": f"{seen['nat'] / n:.1%}",
                    "adv": f"{seen['adv'] / n:.1%}",
                    "cert": f"{seen['cert'] / n:.1%}",
                },
                refresh=False,
            )

    for i in range(rank * batch_size, len(index), size * batch_size):
        part = slice(i, i + batch_size)
        recs, batch_steps = certify_batch(net, x[part], y[part], index[part], opts, on_sample)
        records += recs
        for step, (sec, n) in batch_steps.items():
            steps[step][0] += sec
            steps[step][1] += n
    if size == 1:
        return records, steps
    records = comm.gather_rows(records)
    every = comm.allgather(steps)
    if rank:
        return None, None
    steps = {s: [sum(r[s][0] for r in every), sum(r[s][1] for r in every)] for s in STEPS}
    return sorted(records, key=lambda r: r["index"]), steps


def shard_size(n: int, batch_size: int, rank: int, size: int) -> int:
    """How many of n samples ``certify`` gives rank ``rank`` of ``size`` (for progress bars)."""
    return sum(min(batch_size, n - i) for i in range(rank * batch_size, n, size * batch_size))
