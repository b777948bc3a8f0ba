#!/usr/bin/env python
"""gls_np training entry point: arguments -> Config -> gls_np.train.run.

Runs as a plain process (``python mpi_run.py ...``) or under MPI
(``mpirun -n R python mpi_run.py ...``; spreading work over ranks comes with
the MPI issue). Bad arguments print one line and exit 2, without a traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXAMPLES = """examples:
  python mpi_run.py --arch cnn3 --dataset mnist --relax none --optimizer grad --epochs 1 --out runs/std
  python mpi_run.py --out runs/std --epochs 2 --resume runs/std/checkpoint.h5
  python -m gls_np inspect runs/std/checkpoint.h5
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage dump) and exits 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def parse_args(argv=None):
    from gls_np.config import DEVICES, OPTIMIZERS, RELAXATIONS, Config
    from gls_np.data import DATASETS
    from gls_np.nets import ARCHS, INITS

    d = Config()
    p = OneLineParser(
        prog="mpi_run.py",
        description="Certified training with Gaussian Loss Smoothing (gls_np).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    a = p.add_argument
    a("--arch", default=d.arch, choices=ARCHS, help="network architecture (paper Table 5; cnn7: Shi et al. 2021)")
    a("--dataset", default=d.dataset, choices=DATASETS, help="dataset (default: %(default)s)")
    a("--relax", default=d.relax, choices=RELAXATIONS,
      help="training objective: none = standard cross-entropy, pgd = adversarial, "
           "ibp/hbox/crown-ibp/deeppoly = robust CE from that relaxation, sabr, mtl-ibp "
           "(this version trains: none)")
    a("--optimizer", default=d.optimizer, choices=OPTIMIZERS,
      help="grad = backprop + Adam, pgpe = PGPE (gradient-free), rgs = randomized gradient smoothing "
           "(this version trains: grad)")
    a("--eps", type=float, default=d.eps, help="L-inf perturbation radius in [0, 1] pixel space (default: %(default)s)")
    a("--epochs", type=int, default=d.epochs, help="number of epochs (default: %(default)s)")
    a("--batch-size", type=int, default=d.batch_size, help="training batch size (default: %(default)s)")
    a("--lr", type=float, default=d.lr, help="initial learning rate (default: %(default)s)")
    a("--lr-milestones", type=float, nargs="*", default=list(d.lr_milestones),
      help="epochs after which the learning rate is multiplied by --lr-factor")
    a("--lr-factor", type=float, default=d.lr_factor, help="learning-rate decay factor (default: %(default)s)")
    a("--grad-clip", type=float, default=d.grad_clip, help="clip the gradient's global norm (0 = off)")
    a("--seed", type=int, default=d.seed, help="seed of every random draw of the run (default: %(default)s)")
    a("--device", default=None, choices=DEVICES,
      help="cpu (NumPy) or gpu (CuPy); default: env GLS_NP_DEVICE or cpu")
    a("--dtype", default=d.dtype, choices=("float32", "float64"), help="compute dtype (default: %(default)s)")
    a("--init", default=d.init, choices=INITS, help="weight initialisation: PyTorch default or IBP init (Shi et al. 2021)")
    a("--out", default=d.out, help="run directory: checkpoint.h5, config.json, metrics.jsonl (default: %(default)s)")
    a("--resume", nargs="?", const="auto", default="",
      help="continue a stopped run from CKPT (default: OUT/checkpoint.h5)", metavar="CKPT")
    a("--data-dir", default="", help="dataset cache folder (default: env GLS_NP_DATA or ./data)")
    a("--train-size", type=int, default=0, help="use only the first N training examples (0 = all)")
    a("--test-size", type=int, default=0, help="use only the first N test examples (0 = all)")
    a("--max-steps", type=int, default=0, help="stop after N optimizer steps, checkpoint written (0 = no limit)")
    args = p.parse_args(argv)
    return p, args


def config_from_args(args):
    from gls_np.config import Config

    resume = args.resume
    if resume == "auto":
        resume = str(Path(args.out) / "checkpoint.h5")
    return Config(
        arch=args.arch, dataset=args.dataset, relax=args.relax, optimizer=args.optimizer,
        eps=args.eps, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        lr_milestones=tuple(args.lr_milestones), lr_factor=args.lr_factor, grad_clip=args.grad_clip,
        seed=args.seed, device=args.device or os.environ.get("GLS_NP_DEVICE", "cpu"),
        dtype=args.dtype, init=args.init, out=args.out, resume=resume or "",
        data_dir=args.data_dir, train_size=args.train_size, test_size=args.test_size,
        max_steps=args.max_steps,
    )


def main(argv=None) -> int:
    parser, args = parse_args(argv)
    from gls_np.train import TrainingError, TrainingInterrupted, run

    try:
        cfg = config_from_args(args).validate()
        if cfg.resume and not Path(cfg.resume).is_file():
            raise FileNotFoundError(f"--resume: no checkpoint at {cfg.resume}")
        last = run(cfg)
    except TrainingInterrupted as exc:
        print(exc, file=sys.stderr)
        return 130
    except (ValueError, OSError, TrainingError, RuntimeError) as exc:
        if os.environ.get("GLS_NP_DEBUG"):
            raise
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    summary = ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in last.items())
    print(f"done: {summary}; checkpoint {Path(cfg.out) / 'checkpoint.h5'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
