"""Training loops (no argparse here: ``run(cfg)`` takes a validated Config).

Three optimizers share one loop; each is a small ``Method`` (init, step):

- ``grad``: backprop through the objective (hand-derived gradients), Adam,
  optional global-norm clipping.
- ``rgs``: the mean gradient at ``rgs_samples`` points theta + N(0, sigma^2)
  (paper Sec. 3.4), Adam; sigma decays with the learning rate.
- ``pgpe``: antithetic population theta +- eps, losses of all members in one
  vectorised pass (``pop_chunk`` bounds memory), centre updated by Adam or
  ClipUp, sigma adapted (paper Sec. 3.1).

A run directory ``cfg.out`` holds ``checkpoint.h5`` (the latest, written
atomically every epoch, at the end, at ``--max-steps`` and on Ctrl-C),
``config.json`` and ``metrics.jsonl`` (one JSON object per epoch).

Reproducibility: the batch order of epoch e comes from ``make_rng((seed, e))``
and every other random draw of step s (PGD starts, RGS noise) from
``make_rng((seed, 1, s))``; PGPE's noise is a function of (seed, t, member).
So a resumed run skips the batches it already did and continues exactly as an
uninterrupted one would.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from . import attacks, bounds, checkpoint, data, nets, objectives
from .backend import get_xp, make_rng, set_device, to_device, to_host
from .config import Config
from .losses import accuracy
from .losses import certified as is_certified
from .optim import PGPE, adam, chain, clip_by_global_norm, clipup, rgs_gradient, sigma_schedule
from .optim import smooth_ramp, step_decay
from .progress import progress
from .tensor import value_and_grad


class TrainingError(RuntimeError):
    """A run cannot go on (non-finite loss, ...); the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C: a checkpoint was written and the run can be resumed."""


@dataclass
class Method:
    """An optimizer as the loop sees it.

    ``init(theta) -> state``; ``step(state, loss_fn, xb, yb, eps, lr, epoch, rng) -> (loss, state)``;
    ``center(state) -> theta`` (the network the state stands for).
    """

    init: Callable
    step: Callable
    center: Callable


def _center_opt(cfg: Config):
    parts = [clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    return chain(*parts, adam())


def gradient_method(cfg: Config, sigma_at=None) -> Method:
    """GRAD, or RGS when ``sigma_at(epoch)`` gives the smoothing sigma."""
    opt = _center_opt(cfg)

    def init(theta):
        return {"theta": theta, "opt": opt.init(theta)}

    def step(state, loss_fn, xb, yb, eps, lr, epoch, rng):
        theta = state["theta"]

        def grad_fn(th):
            return value_and_grad(lambda t: loss_fn(t, xb, yb, eps, th, rng), th)

        if sigma_at is None:
            loss, (g,) = grad_fn(theta)
        else:
            loss, g = rgs_gradient(
                lambda th: _flat(grad_fn(th)), theta, sigma_at(epoch), cfg.rgs_samples, rng
            )
        update, opt_state = opt.update(g, state["opt"], lr)
        return float(loss), {"theta": theta + update, "opt": opt_state}

    return Method(init, step, lambda state: state["theta"])


def _flat(loss_and_grads):
    loss, (g,) = loss_and_grads
    return loss, g


def pgpe_method(cfg: Config) -> Method:
    """PGPE: ask P members, evaluate their losses in one vectorised pass, tell."""
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

    def step(state, loss_fn, xb, yb, eps, lr, epoch, rng):
        thetas, z = pgpe.ask(state)
        center = state["center"]
        chunk = cfg.pop_chunk or len(thetas)
        xp = get_xp(thetas)
        losses = xp.concatenate(
            [
                xp.atleast_1d(loss_fn(thetas[i : i + chunk], xb, yb, eps, center, rng))
                for i in range(0, len(thetas), chunk)
            ]
        )
        if not bool(xp.all(xp.isfinite(losses))):
            return float("nan"), state
        return float(losses.mean()), pgpe.tell(state, z, losses, lr)

    return Method(pgpe.init, step, lambda state: state["center"])


def build_method(cfg: Config) -> Method:
    if cfg.optimizer == "pgpe":
        return pgpe_method(cfg)
    if cfg.optimizer == "rgs":
        return gradient_method(cfg, sigma_schedule(cfg.sigma, _lr_schedule(cfg)))
    return gradient_method(cfg)


def _lr_schedule(cfg: Config):
    return step_decay(cfg.lr, cfg.lr_milestones, cfg.lr_factor)


def evaluate(net, x, y, batch_size: int = 1000) -> float:
    """Natural accuracy of ``net`` on host arrays x (N, C, H, W), y (N,)."""
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = net(to_device(x[i : i + batch_size], net.dtype))
        correct += int(to_host((logits.argmax(-1) == to_device(y[i : i + batch_size])).sum()))
    return correct / max(len(x), 1)


def robustness(net, x, y, eps, method, rng, batch_size=100, pgd_steps=20, max_memory_gb=4.0):
    """Adversarial accuracy (PGD) and certified accuracy (``method``'s bounds) on x, y."""
    adv = cert = 0
    K = net.layers[-1].out_features
    for i in range(0, len(x), batch_size):
        xb, yb = to_device(x[i : i + batch_size], net.dtype), to_device(y[i : i + batch_size])
        x_adv = attacks.pgd(net, xb, yb, eps, steps=pgd_steps, rng=rng) if eps > 0 else xb
        adv += int(to_host((net(x_adv).argmax(-1) == yb).sum()))
        box = bounds.linf_box(xb, eps)
        lb, _ = bounds.compute(
            net,
            box.lb,
            box.ub,
            method,
            C=bounds.margin_spec(yb, K, dtype=net.dtype),
            max_memory_gb=max_memory_gb,
        )
        cert += int(to_host(is_certified(lb).sum()))
    n = max(len(x), 1)
    return adv / n, cert / n


def certification_method(relax: str) -> str:
    """The relaxation whose certified accuracy a run reports: its own, IBP for the others."""
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


def _append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")


def _sigma_stats(state) -> dict:
    if "sigma" not in state:
        return {}
    s = to_host(state["sigma"])
    return {"sigma_min": float(s.min()), "sigma_mean": float(s.mean()), "sigma_max": float(s.max())}


def _start(cfg: Config, method: Method):
    """(net, state, epoch, step, history): fresh, warm-started from --init-from, or resumed."""
    if cfg.resume:
        net, meta = checkpoint.load(cfg.resume, dtype=cfg.dtype)
        if meta.config.get("optimizer", cfg.optimizer) != cfg.optimizer:
            raise ValueError(
                f"--resume: {cfg.resume} was trained with --optimizer {meta.config.get('optimizer')}, "
                f"not {cfg.optimizer}"
            )
        state = _tree_to_device(meta.optimizer)
        return net, state, meta.epoch, meta.step, list(meta.history)
    if cfg.init_from:
        net, meta = checkpoint.load(cfg.init_from, dtype=cfg.dtype)
        if meta.arch not in (None, cfg.arch) or meta.dataset not in (None, cfg.dataset):
            raise ValueError(
                f"--init-from: {cfg.init_from} holds {meta.arch}/{meta.dataset}, "
                f"not {cfg.arch}/{cfg.dataset}"
            )
    else:
        net = nets.build(cfg.arch, cfg.dataset, dtype=cfg.dtype, init=cfg.init, seed=cfg.seed)
    return net, method.init(net.theta), 0, 0, []


def run(cfg: Config, comm=None) -> dict:
    """Train as ``cfg`` says; return the last epoch's metrics."""
    cfg.validate()
    set_device(cfg.device)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.h5"
    for flag, path in (("--resume", cfg.resume), ("--init-from", cfg.init_from)):
        if path and not Path(path).is_file():
            raise FileNotFoundError(f"{flag}: no checkpoint at {path}")

    x_train, y_train = _load_split(cfg, "train", cfg.train_size)
    x_test, y_test = _load_split(cfg, "test", cfg.test_size)
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)

    method = build_method(cfg)
    net, state, epoch, step, history = _start(cfg, method)
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
        loss_sum, seen, acc = 0.0, 0, float("nan")
        lr, eps = lr_at(step / steps_per_epoch), eps_at(step / steps_per_epoch)
        bar = progress(
            total=steps_per_epoch, initial=done_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}"
        )
        try:
            for xb, yb in batch_iter:
                # schedules take fractional epochs: lr and eps are looked up every step
                at = step / steps_per_epoch
                lr, eps = lr_at(at), eps_at(at)
                xb, yb = to_device(xb, net.dtype), to_device(yb)
                loss, new_state = method.step(
                    state, loss_fn, xb, yb, eps, lr, at, make_rng((cfg.seed, 1, step))
                )
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"loss is {loss} at epoch {epoch + 1} step {step + 1}; stopping "
                        f"(last good checkpoint: {ckpt_path if ckpt_path.exists() else 'none yet'})"
                    )
                state = new_state
                step += 1
                loss_sum += loss * len(yb)
                seen += len(yb)
                if step % 10 == 1:
                    # the centre's accuracy on the batch, for the bar only: one cheap forward
                    acc = float(accuracy(net.forward(xb, method.center(state)), yb))
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
        in_epoch = step - epoch * steps_per_epoch
        net.theta = method.center(state)
        last = {
            "epoch": epoch + 1
            if in_epoch >= steps_per_epoch
            else epoch + in_epoch / steps_per_epoch,
            "step": step,
            "train_loss": loss_sum / max(seen, 1),
            "test_acc": evaluate(net, x_test, y_test, cfg.eval_batch_size),
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
                make_rng((cfg.seed, 2, epoch)),
                max_memory_gb=cfg.max_memory_gb,
            )
            last["cert_method"] = cert_method
        last.update(_sigma_stats(state))
        last["seconds"] = time.time() - t0
        history.append(last)
        _append_metrics(out / "metrics.jsonl", last)
        if in_epoch >= steps_per_epoch:
            epoch += 1
        save(epoch)
    return last
