"""Training loops (no argparse here: ``run(cfg, comm)`` takes a validated Config).

Three optimizers share one loop; each is a small ``Method`` (init, step):

- ``grad``: backprop through the objective (hand-derived gradients), Adam,
  optional global-norm clipping.
- ``rgs``: the mean gradient at ``rgs_samples`` points theta + N(0, sigma^2)
  (paper Sec. 3.4), Adam; sigma decays with the learning rate.
- ``pgpe``: antithetic population theta +- eps, losses of all members in one
  vectorised pass (``pop_chunk`` members at a time; 0: ``objectives.population_chunk``,
  as many as fit the memory budget, fewer for back-substitution), centre updated by
  Adam or ClipUp, sigma adapted (paper Sec. 3.1).

Memory: ``--max-memory-gb 0`` (the default) is resolved once, when the run starts, to a
budget picked from free memory (``gls_np.memory``; rank 0's pick, for every rank); the
run's config.json, checkpoint and metrics record the value used. A resumed run with 0
takes the value its checkpoint recorded, so it chunks as the uninterrupted run did.

A run directory ``cfg.out`` holds ``checkpoint.h5`` (the latest, written
atomically every epoch, at the end, at ``--max-steps`` and on Ctrl-C),
``config.json`` and ``metrics.jsonl`` (one JSON object per epoch).

MPI (``comm``, a ``gls_np.distributed`` communicator; docs/mpi.md): every rank
reads the same batches and holds the same parameters. PGPE splits the
population's pairs over the ranks, GRAD splits the batch, RGS its points and
the batch; evaluation splits the held-out samples. Only rank 0 writes files or
shows a progress bar. The result does not depend on the number of ranks (up to
float rounding): PGPE noise is a function of (seed, step, member), RGS point i
draws from its own generator, and per-sample draws (PGD starts) are made for
the whole batch and sliced (``SharedDraws``).

Reproducibility: the batch order of epoch e comes from ``make_rng((seed, e))``
and every other random draw of step s (PGD starts) from ``make_rng((seed, 1, s))``
(RGS point i: ``make_rng((seed, 1, s, i))``); PGPE's noise is a function of
(seed, t, member). So a resumed run, under any number of ranks, skips the
batches it already did and continues as an uninterrupted one would.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from . import bounds, checkpoint, data, distributed, nets, objectives
from .backend import get_xp, make_rng, np, set_device, to_device, to_host
from .certify import cascade
from .config import Config
from .distributed import SharedDraws, SingleProcess, shard_slice
from .losses import accuracy
from .memory import budget_gb
from .optim import (
    PGPE,
    adam,
    chain,
    clip_by_global_norm,
    clipup,
    sigma_schedule,
    smooth_ramp,
    step_decay,
)
from .optim.pgpe import pgpe_noise
from .optim.smoothing import rgs_share
from .progress import progress
from .tensor import value_and_grad


class TrainingError(RuntimeError):
    """A run cannot go on (non-finite loss, ...); the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):  # noqa: N818 (a clean stop, not an error)
    """Ctrl-C: a checkpoint was written and the run can be resumed."""


@dataclass
class Method:
    """An optimizer as the loop sees it.

    ``init(theta) -> state``; ``step(state, loss_fn, xb, yb, eps, lr, epoch, key) -> (loss, state)``
    with the whole batch xb, yb on the host (each rank takes its part) and ``key`` = (seed, 1,
    step), the seed of every random draw of the step; the returned loss is the whole batch's
    (and population's) mean, the same on every rank. ``center(state) -> theta`` (the network the
    state stands for).
    """

    init: Callable
    step: Callable
    center: Callable


def _center_opt(cfg: Config):
    parts = [clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    return chain(*parts, adam())


def gradient_method(cfg: Config, comm=None, sigma_at=None) -> Method:
    """GRAD, or RGS when ``sigma_at(epoch)`` gives the smoothing sigma; data-parallel over ranks.

    The n points (1 for GRAD) x B rows of a step are split over the R ranks: g = gcd(n, R)
    groups of R/g ranks; group k takes points k, k + g, ... and its ranks split the batch.
    Each rank's mean loss and gradient are weighted by its share of the points and rows, so
    the allreduced sum is the full mean (the objectives are batch means).
    """
    comm = comm or SingleProcess()
    opt = _center_opt(cfg)
    n_points = cfg.rgs_samples if sigma_at is not None else 1
    groups = math.gcd(n_points, comm.size)
    per_group = comm.size // groups
    group, member = divmod(comm.rank, per_group)

    def init(theta):
        return {"theta": theta, "opt": opt.init(theta)}

    def step(state, loss_fn, xb, yb, eps, lr, epoch, key):
        theta = state["theta"]
        B = len(yb)
        rows = shard_slice(B, per_group, member)
        loss, g = 0.0, get_xp(theta).zeros_like(theta)
        if rows.stop > rows.start:
            x, y = to_device(xb[rows], theta.dtype), to_device(yb[rows])

            def grad_fn(th, rng):
                draws = SharedDraws(rng, rows, B)
                return _flat(value_and_grad(lambda t: loss_fn(t, x, y, eps, th, draws), th))

            if sigma_at is None:
                loss, g = grad_fn(theta, make_rng(key))
            else:
                points = range(group, n_points, groups)
                loss, g = rgs_share(
                    grad_fn, theta, sigma_at(epoch), n_points, points, lambda i: make_rng((*key, i))
                )
        if comm.size == 1:
            # nothing to sum: the gradient stays on its device (the float64 round trip
            # below is exact for it, so the step is the same)
            loss, g = float(loss), g.astype(theta.dtype, copy=False)
        else:
            share = (rows.stop - rows.start) / B
            part = np.concatenate([[float(loss)], to_host(g).astype(np.float64)]) * share
            total = comm.allreduce(part)
            loss, g = float(total[0]), to_device(total[1:], theta.dtype)
        update, opt_state = opt.update(g, state["opt"], lr)
        return loss, {"theta": theta + update, "opt": opt_state}

    return Method(init, step, lambda state: state["theta"])


def _flat(loss_and_grads):
    loss, (g,) = loss_and_grads
    return loss, g


def pgpe_method(cfg: Config, comm=None, net=None) -> Method:
    """PGPE: ask P members, evaluate their losses in one vectorised pass, tell.

    Over R ranks each evaluates its ``shard`` of the P/2 antithetic pairs; the losses are
    gathered so the fitness shaping is global, then ``cfg.comm`` says how the estimate is
    formed: ``allreduce`` sums each rank's share of it (2 D float64 per rank and step),
    ``seeds`` regenerates every pair's noise on every rank (only the P losses travel).
    ``cfg.pop_chunk`` members are scored per call of the loss; 0 takes as many as fit
    ``cfg.max_memory_gb`` (``objectives.population_chunk``; CROWN-IBP and DeepPoly about
    512 network-images per call, where they run fastest) on ``net``'s shapes (default: a
    network built from ``cfg.arch`` and ``cfg.dataset``). Chunks give the same losses.
    """
    comm = comm or SingleProcess()
    if net is None:
        net = nets.build(cfg.arch, cfg.dataset, dtype=cfg.dtype)
    max_memory_gb = budget_gb(cfg.max_memory_gb, comm)
    center_opt = clipup() if cfg.center_opt == "clipup" else _center_opt(cfg)
    pgpe = PGPE(
        popsize=cfg.popsize,
        sigma0=cfg.sigma,
        sigma_lr=cfg.sigma_lr,
        max_change=cfg.sigma_max_change,
        rank=cfg.rank,
        center_opt=center_opt,
        seed=cfg.seed,
    )
    n = cfg.popsize // 2
    pairs = comm.shard(n)
    m = pairs.stop - pairs.start

    def all_noise(state, z):
        """Every pair's noise: this rank's z, and the others' regenerated from the seed."""
        if m == n:
            return z
        center, t = state["center"], int(state["t"])
        before = pgpe_noise(cfg.seed, t, pairs.start, center)
        after = pgpe_noise(cfg.seed, t, n - pairs.stop, center, start=pairs.stop)
        return get_xp(z).concatenate([before, z, after])

    def step(state, loss_fn, xb, yb, eps, lr, epoch, key):
        center = state["center"]
        xp = get_xp(center)
        thetas, z = pgpe.ask(state, pairs)
        x, y = to_device(xb, center.dtype), to_device(yb)
        chunk = cfg.pop_chunk or objectives.population_chunk(
            net, cfg.relax, x.shape, len(thetas), max_memory_gb
        )
        # each chunk gets the step's generator afresh: every member, on every rank, is then
        # scored against the same adversarial points (objectives search them with the centre)
        own = [
            xp.atleast_1d(loss_fn(thetas[i : i + chunk], x, y, eps, center, make_rng(key)))
            for i in range(0, len(thetas), chunk)
        ]
        own = to_host(xp.concatenate(own)) if own else np.zeros(0)
        r = comm.gather_shards(own.astype(np.float64).reshape(2, m).T, n)
        losses = np.concatenate([r[:, 0], r[:, 1]])
        if not np.all(np.isfinite(losses)):
            return float("nan"), state
        if cfg.comm == "seeds":
            g_center, g_sigma = pgpe.grads(all_noise(state, z), losses, state["sigma"])
        else:
            share = pgpe.grads(z, losses, state["sigma"], pairs)
            if comm.size == 1:  # nothing to sum: the estimate stays on its device
                g_center, g_sigma = (g.astype(center.dtype, copy=False) for g in share)
            else:
                total = comm.allreduce(np.concatenate([to_host(g) for g in share]))
                D = center.shape[0]
                g_center = to_device(total[:D], center.dtype)
                g_sigma = to_device(total[D:], center.dtype)
        return float(losses.mean()), pgpe.update(state, g_center, g_sigma, lr)

    return Method(pgpe.init, step, lambda state: state["center"])


def build_method(cfg: Config, comm=None, net=None) -> Method:
    """Make the ``Method`` of ``cfg.optimizer`` for ``net``, working over ``comm``'s ranks."""
    if cfg.optimizer == "pgpe":
        return pgpe_method(cfg, comm, net)
    if cfg.optimizer == "rgs":
        return gradient_method(cfg, comm, sigma_schedule(cfg.sigma, _lr_schedule(cfg)))
    return gradient_method(cfg, comm)


def _lr_schedule(cfg: Config):
    return step_decay(cfg.lr, cfg.lr_milestones, cfg.lr_factor)


def evaluate(net, x, y, batch_size: int = 1000, comm=None) -> float:
    """Natural accuracy of ``net`` on host arrays x (N, C, H, W), y (N,); ranks split the N."""
    comm = comm or SingleProcess()
    own = comm.shard(len(x))
    correct = 0
    for i in range(own.start, own.stop, batch_size):
        j = min(i + batch_size, own.stop)
        logits = net(to_device(x[i:j], net.dtype))
        correct += int(to_host((logits.argmax(-1) == to_device(y[i:j])).sum()))
    return float(comm.allreduce(np.array([correct]))[0]) / max(len(x), 1)


def robustness(
    net, x, y, eps, method, key, batch_size=100, pgd_steps=20, max_memory_gb=4.0, comm=None
):
    """Adversarial accuracy (PGD) and certified accuracy (``method``'s bounds) on x, y.

    Shapes: x (N, C, H, W), y (N,) on the host -> (adversarial, certified) fractions of N.
    Ranks split the samples. PGD's random starts of sample b come from batch k = b //
    ``batch_size``'s generator ``make_rng((*key, k))``, drawn for the whole batch
    (``SharedDraws``), so the result does not depend on the number of ranks.
    """
    comm = comm or SingleProcess()
    own = comm.shard(len(x))
    adv = cert = 0
    for k in range(own.start // batch_size, math.ceil(own.stop / batch_size)):
        start, stop = k * batch_size, min((k + 1) * batch_size, len(x))
        i, j = max(start, own.start), min(stop, own.stop)
        if i >= j:
            continue
        xb, yb = to_device(x[i:j], net.dtype), to_device(y[i:j])
        # the certifier's own cheap steps (gls_np.certify.cascade): one code path
        rng = SharedDraws(make_rng((*key, k)), slice(i - start, j - start), stop - start)
        attacked, _ = cascade.attack(net, xb, yb, eps, pgd_steps, 1, rng)
        adv += int((~attacked).sum())
        box = bounds.linf_box(xb, eps)
        lb, _ = cascade.relaxation_margins(net, box.lb, box.ub, yb, method, max_memory_gb)
        cert += int((lb > 0).all(axis=1).sum())
    adv, cert = comm.allreduce(np.array([adv, cert]))
    n = max(len(x), 1)
    return float(adv) / n, float(cert) / n


def certification_method(relax: str) -> str:
    """Name the relaxation whose certified accuracy a run reports: its own, IBP for the others."""
    return relax if relax in objectives.CERTIFIED else "ibp"


def _load_split(cfg: Config, split: str, size: int):
    x, y = data.load(cfg.dataset, split, cfg.data_dir or None)
    if size:
        x, y = x[:size], y[:size]
    return x, y


def _tree_to_device(tree):
    """Checkpoints hold host arrays; the optimizer state lives on the run's device."""
    if isinstance(tree, dict):
        return {k: _tree_to_device(v) for k, v in tree.items()}
    return to_device(tree) if hasattr(tree, "shape") else tree


def _keep_copy(src: Path, dest: Path) -> None:
    """Copy a finished epoch's checkpoint beside the latest one, atomically."""
    tmp = dest.with_name(dest.name + ".tmp")
    shutil.copyfile(src, tmp)
    os.replace(tmp, dest)


def _append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _sigma_stats(state) -> dict:
    if "sigma" not in state:
        return {}
    s = to_host(state["sigma"])
    return {"sigma_min": float(s.min()), "sigma_mean": float(s.mean()), "sigma_max": float(s.max())}


def _start(cfg: Config):
    """(net, state, epoch, step, history, config): fresh, from --init-from, or resumed.

    ``state`` is None unless resumed (the method makes it); ``config`` is the resumed
    checkpoint's (else empty).
    """
    if cfg.resume:
        net, meta = checkpoint.load(cfg.resume, dtype=cfg.dtype)
        if meta.config.get("optimizer", cfg.optimizer) != cfg.optimizer:
            raise ValueError(
                f"--resume: {cfg.resume} was trained with --optimizer "
                f"{meta.config.get('optimizer')}, not {cfg.optimizer}"
            )
        state = _tree_to_device(meta.optimizer)
        return net, state, meta.epoch, meta.step, list(meta.history), meta.config
    if cfg.init_from:
        net, meta = checkpoint.load(cfg.init_from, dtype=cfg.dtype)
        if meta.arch not in (None, cfg.arch) or meta.dataset not in (None, cfg.dataset):
            raise ValueError(
                f"--init-from: {cfg.init_from} holds {meta.arch}/{meta.dataset}, "
                f"not {cfg.arch}/{cfg.dataset}"
            )
    else:
        net = nets.build(cfg.arch, cfg.dataset, dtype=cfg.dtype, init=cfg.init, seed=cfg.seed)
    return net, None, 0, 0, [], {}


def _resolve_memory(cfg: Config, resumed: dict, comm) -> Config:
    """``cfg`` with an automatic ``max_memory_gb`` (0) replaced by the budget to use.

    A resumed run repeats its checkpoint's budget (same chunks, the same rounding as the
    uninterrupted run); a new one takes rank 0's pick from its free memory (``budget_gb``).
    """
    if cfg.max_memory_gb > 0:
        return cfg
    recorded = float(resumed.get("max_memory_gb") or 0)
    return replace(cfg, max_memory_gb=recorded if recorded > 0 else budget_gb(0, comm))


def _check_in_sync(comm, state) -> None:
    """Raise TrainingError if the ranks' parameters differ (they must stay bitwise equal)."""
    for name in ("theta", "center", "sigma"):
        if name in state:
            try:
                comm.check_same(state[name], f"the {name}")
            except RuntimeError as exc:
                raise TrainingError(f"ranks out of sync: {exc}") from None


def run(cfg: Config, comm=None) -> dict:
    """Train as ``cfg`` says over ``comm``'s ranks (default ``distributed.world()``).

    Returns the last epoch's metrics, the same on every rank; only rank 0 writes the run
    directory.
    """
    cfg.validate()
    comm = comm or distributed.world()
    lead = comm.rank == 0
    set_device(cfg.device)
    if cfg.device == "gpu":
        distributed.bind_gpu(comm)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.h5"
    for flag, path in (("--resume", cfg.resume), ("--init-from", cfg.init_from)):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{flag}: no checkpoint at {path}")

    # rank 0 fills the dataset cache first, so ranks never download the same file at once
    if lead:
        splits = _load_split(cfg, "train", cfg.train_size), _load_split(cfg, "test", cfg.test_size)
    comm.barrier()
    if not lead:
        splits = _load_split(cfg, "train", cfg.train_size), _load_split(cfg, "test", cfg.test_size)
    (x_train, y_train), (x_test, y_test) = splits
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)

    net, state, epoch, step, history, resumed = _start(cfg)
    cfg = _resolve_memory(cfg, resumed, comm)
    method = build_method(cfg, comm, net)
    state = method.init(net.theta) if state is None else state
    if lead:
        out.mkdir(parents=True, exist_ok=True)
        if not cfg.resume:
            # a fresh run owns its directory's log; a resumed one appends to it
            (out / "metrics.jsonl").unlink(missing_ok=True)
        (out / "config.json").write_text(json.dumps(json.loads(cfg.to_json()), indent=2) + "\n")

    lr_at = _lr_schedule(cfg)
    eps_at = smooth_ramp(cfg.eps, cfg.eps_warmup, cfg.eps_ramp)
    loss_fn = objectives.make(
        cfg.relax,
        net,
        pgd_steps=cfg.pgd_steps,
        sabr_lambda=cfg.sabr_lambda,
        mtl_alpha=cfg.mtl_alpha,
        max_memory_gb=cfg.max_memory_gb,
    )
    augment = "cifar" if cfg.dataset == "cifar10" else None
    cert_method = certification_method(cfg.relax)

    def save(epoch_done: int) -> None:
        net.theta = method.center(state)
        if not lead:
            return
        checkpoint.save(
            ckpt_path,
            net,
            arch=cfg.arch,
            dataset=cfg.dataset,
            config=json.loads(cfg.to_json()),
            optimizer=state,
            epoch=epoch_done,
            step=step,
            history=history,
        )

    last = history[-1] if history else {}
    while epoch < cfg.epochs and not (cfg.max_steps and step >= cfg.max_steps):
        t0 = time.time()
        done_in_epoch = step - epoch * steps_per_epoch
        batch_iter = data.batches(
            x_train, y_train, cfg.batch_size, True, make_rng((cfg.seed, epoch)), augment=augment
        )
        batch_iter = itertools.islice(batch_iter, done_in_epoch, None)
        loss_sum, seen, acc, sent, done = 0.0, 0, float("nan"), 0, 0
        lr, eps = lr_at(step / steps_per_epoch), eps_at(step / steps_per_epoch)
        bar = progress(
            total=steps_per_epoch,
            initial=done_in_epoch,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            enabled=lead,
        )
        try:
            for xb, yb in batch_iter:
                # schedules take fractional epochs: lr and eps are looked up every step
                at = step / steps_per_epoch
                lr, eps = lr_at(at), eps_at(at)
                sent -= comm.bytes_sent
                loss, new_state = method.step(
                    state, loss_fn, xb, yb, eps, lr, at, (cfg.seed, 1, step)
                )
                sent += comm.bytes_sent
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"loss is {loss} at epoch {epoch + 1} step {step + 1}; stopping "
                        f"(last good checkpoint: {ckpt_path if ckpt_path.exists() else 'none yet'})"
                    )
                state = new_state
                step += 1
                done += 1
                loss_sum += loss * len(yb)
                seen += len(yb)
                if lead and (step % 10 == 1 or math.isnan(acc)):
                    # the centre's accuracy on the batch, for the bar only: one cheap forward,
                    # every 10 steps and on the first step of an epoch (a resumed one too)
                    center = method.center(state)
                    acc = float(accuracy(net.forward(to_device(xb, net.dtype), center), yb))
                bar.update(1)
                bar.set_postfix(
                    loss=f"{loss_sum / seen:.4f}",
                    acc=f"{acc:.3f}",
                    eps=f"{eps:.3g}",
                    lr=f"{lr:.2g}",
                )
                if cfg.max_steps and step >= cfg.max_steps:
                    break
        except KeyboardInterrupt:
            bar.close()
            save(epoch)
            raise TrainingInterrupted(f"interrupted: checkpoint written to {ckpt_path}") from None
        bar.close()
        if comm.size > 1:
            _check_in_sync(comm, state)
        in_epoch = step - epoch * steps_per_epoch
        net.theta = method.center(state)
        last = {
            "epoch": epoch + 1
            if in_epoch >= steps_per_epoch
            else epoch + in_epoch / steps_per_epoch,
            "step": step,
            "train_loss": loss_sum / max(seen, 1),
            "test_acc": evaluate(net, x_test, y_test, cfg.eval_batch_size, comm),
            "eps": eps,
            "lr": lr,
        }
        if cfg.cert_size and cfg.eps > 0:
            n = cfg.cert_size
            last["adv_acc"], last["cert_acc"] = robustness(
                net,
                x_test[:n],
                y_test[:n],
                cfg.eps,
                cert_method,
                (cfg.seed, 2, epoch),
                max_memory_gb=cfg.max_memory_gb,
                comm=comm,
            )
            last["cert_method"] = cert_method
        last.update(_sigma_stats(state))
        last["ranks"] = comm.size
        last["max_memory_gb"] = cfg.max_memory_gb
        if comm.size > 1:
            last["comm_bytes_per_step"] = sent / max(done, 1)
        last["seconds"] = time.time() - t0
        history.append(last)
        if lead:
            _append_metrics(out / "metrics.jsonl", last)
        if in_epoch >= steps_per_epoch:
            epoch += 1
        save(epoch)
        if cfg.keep_epochs and lead and in_epoch >= steps_per_epoch:
            _keep_copy(ckpt_path, out / f"checkpoint-e{epoch:03d}.h5")
        # the checkpoint exists for every rank once the epoch is over
        comm.barrier()
    return last
