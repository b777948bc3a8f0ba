"""Training loops (no argparse here: ``run(cfg)`` takes a validated Config).

A run directory ``cfg.out`` holds ``checkpoint.h5`` (the latest, written
atomically every epoch, at the end, at ``--max-steps`` and on Ctrl-C),
``config.json`` and ``metrics.jsonl`` (one JSON object per epoch).

Reproducibility: the batch order and augmentation of epoch e are drawn from
``make_rng((seed, e))``, so a resumed run skips the batches it already did and
continues exactly as an uninterrupted one would.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from pathlib import Path

from . import checkpoint, data, nets
from .backend import make_rng, set_device, to_device, to_host
from .config import Config
from .losses import cross_entropy
from .optim import adam, chain, clip_by_global_norm, step_decay
from .progress import progress
from .tensor import value_and_grad


class TrainingError(RuntimeError):
    """A run cannot go on (non-finite loss, ...); the last good checkpoint is kept."""


class TrainingInterrupted(RuntimeError):
    """Ctrl-C: a checkpoint was written and the run can be resumed."""


def build_optimizer(cfg: Config):
    """Adam on the centre, with global-norm clipping when ``cfg.grad_clip`` > 0."""
    parts = [clip_by_global_norm(cfg.grad_clip)] if cfg.grad_clip > 0 else []
    return chain(*parts, adam())


def evaluate(net, x, y, batch_size: int = 1000) -> float:
    """Natural accuracy of ``net`` on host arrays x (N, C, H, W), y (N,)."""
    correct = 0
    for i in range(0, len(x), batch_size):
        logits = net(to_device(x[i : i + batch_size], net.dtype))
        correct += int(to_host((logits.argmax(-1) == to_device(y[i : i + batch_size])).sum()))
    return correct / max(len(x), 1)


def objective(cfg: Config, net):
    """The loss ``L(theta; xb, yb)`` the optimizer minimises (standard CE for relax none)."""
    if cfg.relax == "none":
        return lambda theta, xb, yb: cross_entropy(net.forward(xb, theta), yb)
    raise ValueError(f"relax {cfg.relax!r} has no objective yet")


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


def run(cfg: Config, comm=None) -> dict:
    """Train as ``cfg`` says; return the last epoch's metrics."""
    cfg.validate()
    set_device(cfg.device)
    out = Path(cfg.out)
    ckpt_path = out / "checkpoint.h5"
    resume_path = Path(cfg.resume) if cfg.resume else None
    if resume_path is not None and not resume_path.is_file():
        raise FileNotFoundError(f"--resume: no checkpoint at {resume_path}")

    x_train, y_train = _load_split(cfg, "train", cfg.train_size)
    x_test, y_test = _load_split(cfg, "test", cfg.test_size)
    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)

    opt = build_optimizer(cfg)
    if resume_path is not None:
        net, meta = checkpoint.load(resume_path, dtype=cfg.dtype)
        theta, state = net.theta, _tree_to_device(meta.optimizer)
        epoch, step, history = meta.epoch, meta.step, list(meta.history)
    else:
        net = nets.build(cfg.arch, cfg.dataset, dtype=cfg.dtype, init=cfg.init, seed=cfg.seed)
        theta = net.theta
        state, epoch, step, history = opt.init(theta), 0, 0, []
    out.mkdir(parents=True, exist_ok=True)
    if resume_path is None:
        # a fresh run owns its directory's log; a resumed one appends to it
        (out / "metrics.jsonl").unlink(missing_ok=True)
    (out / "config.json").write_text(json.dumps(json.loads(cfg.to_json()), indent=2) + "\n")

    lr_at = step_decay(cfg.lr, cfg.lr_milestones, cfg.lr_factor)
    loss_fn = objective(cfg, net)
    augment = "cifar" if cfg.dataset == "cifar10" else None

    def save(epoch_done: int) -> None:
        net.theta = theta
        checkpoint.save(
            ckpt_path, net, arch=cfg.arch, dataset=cfg.dataset, config=json.loads(cfg.to_json()),
            optimizer=state, epoch=epoch_done, step=step, history=history,
        )

    last = history[-1] if history else {}
    while epoch < cfg.epochs and not (cfg.max_steps and step >= cfg.max_steps):
        t0 = time.time()
        done_in_epoch = step - epoch * steps_per_epoch
        rng = make_rng((cfg.seed, epoch))
        batch_iter = data.batches(x_train, y_train, cfg.batch_size, True, rng, augment=augment)
        batch_iter = itertools.islice(batch_iter, done_in_epoch, None)
        loss_sum, seen = 0.0, 0
        lr = lr_at(step / steps_per_epoch)
        bar = progress(total=steps_per_epoch, initial=done_in_epoch, desc=f"epoch {epoch + 1}/{cfg.epochs}")
        try:
            for xb, yb in batch_iter:
                # milestones may be fractional epochs: the rate is looked up every step
                lr = lr_at(step / steps_per_epoch)
                xb, yb = to_device(xb, net.dtype), to_device(yb)
                loss, (g,) = value_and_grad(lambda th: loss_fn(th, xb, yb), theta)
                loss = float(loss)
                if not math.isfinite(loss):
                    raise TrainingError(
                        f"loss is {loss} at epoch {epoch + 1} step {step + 1}; stopping "
                        f"(last good checkpoint: {ckpt_path if ckpt_path.exists() else 'none yet'})"
                    )
                update, state = opt.update(g, state, lr)
                theta = theta + update
                step += 1
                loss_sum += loss * len(yb)
                seen += len(yb)
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / seen:.4f}", lr=f"{lr:.2g}")
                if cfg.max_steps and step >= cfg.max_steps:
                    break
        except KeyboardInterrupt:
            bar.close()
            save(epoch)
            raise TrainingInterrupted(f"interrupted: checkpoint written to {ckpt_path}") from None
        bar.close()
        finished_epoch = step - epoch * steps_per_epoch >= steps_per_epoch
        net.theta = theta
        last = {
            "epoch": epoch + 1 if finished_epoch else epoch + (step - epoch * steps_per_epoch) / steps_per_epoch,
            "step": step,
            "train_loss": loss_sum / max(seen, 1),
            "test_acc": evaluate(net, x_test, y_test, cfg.eval_batch_size),
            "lr": lr,
            "seconds": time.time() - t0,
        }
        history.append(last)
        _append_metrics(out / "metrics.jsonl", last)
        if finished_epoch:
            epoch += 1
        save(epoch)
    return last
