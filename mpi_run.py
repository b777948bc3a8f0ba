#!/usr/bin/env python
"""gls_np training entry point: arguments -> Config -> gls_np.train.run.

Runs as a plain process (``python mpi_run.py ...``) or under MPI
(``mpirun -n R python mpi_run.py ...``; spreading work over ranks comes with
the MPI issue). Values come from, in increasing priority: the Config defaults,
``--preset``, and the flags given. Bad arguments print one line and exit 2,
without a traceback (set GLS_NP_DEBUG=1 to see it).
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import asdict
from pathlib import Path

EXAMPLES = """examples:
  python mpi_run.py --arch cnn3 --dataset mnist --relax none --optimizer grad --epochs 1 --out runs/std
  python mpi_run.py --relax ibp --optimizer grad --eps 0.1 --preset paper --out runs/ibp
  python mpi_run.py --relax pgd --eps 0.1 --epochs 5 --out runs/pgd
  python mpi_run.py --relax deeppoly --optimizer pgpe --eps 0.1 --init-from runs/pgd/checkpoint.h5 --out runs/pgpe
  python mpi_run.py --relax deeppoly --optimizer rgs --eps 0.1 --init-from runs/pgd/checkpoint.h5 --out runs/rgs
  python mpi_run.py --out runs/std --epochs 2 --resume
  python -m gls_np inspect runs/std/checkpoint.h5
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage dump) and exits 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser():
    from gls_np.config import CENTER_OPTS, DEVICES, OPTIMIZERS, PRESETS, RELAXATIONS, Config
    from gls_np.data import DATASETS
    from gls_np.nets import ARCHS, INITS

    d = Config()
    p = OneLineParser(
        prog="mpi_run.py",
        description="Certified training with Gaussian Loss Smoothing (gls_np).",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        argument_default=argparse.SUPPRESS,
    )
    g = p.add_argument_group("run").add_argument
    g(
        "--arch",
        choices=ARCHS,
        help=f"network (paper Table 5; cnn7: Shi et al. 2021); default {d.arch}",
    )
    g("--dataset", choices=DATASETS, help=f"dataset; default {d.dataset}")
    g(
        "--relax",
        choices=RELAXATIONS,
        help="objective: none = cross-entropy, pgd = adversarial training, ibp/hbox/crown-ibp/deeppoly = "
        "robust CE from that relaxation's bounds, sabr = IBP on a small box around the PGD point, "
        f"mtl-ibp = alpha*IBP + (1-alpha)*adversarial; default {d.relax}",
    )
    g(
        "--optimizer",
        choices=OPTIMIZERS,
        help=f"grad = backprop + Adam, pgpe = PGPE (gradient-free), rgs = randomized gradient smoothing; "
        f"default {d.optimizer}",
    )
    g(
        "--preset",
        choices=PRESETS,
        help="paper = App. E hyper-parameters for the optimizer/dataset/eps; quick = a CPU-sized variant",
    )
    g("--eps", type=float, help=f"L-inf radius in [0, 1] pixel space; default {d.eps}")
    g("--epochs", type=int, help=f"epochs; default {d.epochs}")
    g("--batch-size", type=int, help=f"training batch size; default {d.batch_size}")
    g("--seed", type=int, help=f"seed of every random draw of the run; default {d.seed}")
    g(
        "--device",
        choices=DEVICES,
        help="cpu (NumPy) or gpu (CuPy); default env GLS_NP_DEVICE or cpu",
    )
    g("--dtype", choices=("float32", "float64"), help=f"compute dtype; default {d.dtype}")
    g("--out", help=f"run directory (checkpoint.h5, config.json, metrics.jsonl); default {d.out}")
    g(
        "--resume",
        nargs="?",
        const="auto",
        metavar="CKPT",
        help="continue a stopped run from CKPT (default OUT/checkpoint.h5)",
    )
    g(
        "--init-from",
        metavar="CKPT",
        help="start from this checkpoint's weights (e.g. a PGD warm start)",
    )
    g("--data-dir", help="dataset cache folder; default env GLS_NP_DATA or ./data")
    g("--train-size", type=int, help="use only the first N training examples (0 = all)")
    g("--test-size", type=int, help="use only the first N test examples (0 = all)")
    g(
        "--max-steps",
        type=int,
        help="stop after N optimizer steps, checkpoint written (0 = no limit)",
    )
    g(
        "--cert-size",
        type=int,
        help=f"test examples for per-epoch adversarial/certified accuracy; default {d.cert_size}",
    )
    g(
        "--max-memory-gb",
        type=float,
        help=f"memory budget of one bound-propagation chunk; default {d.max_memory_gb}",
    )

    o = p.add_argument_group("optimisation").add_argument
    o("--lr", type=float, help=f"initial learning rate; default {d.lr}")
    o(
        "--lr-milestones",
        type=float,
        nargs="*",
        help="epochs (may be fractional) at which lr *= --lr-factor",
    )
    o("--lr-factor", type=float, help=f"learning-rate decay factor; default {d.lr_factor}")
    o("--grad-clip", type=float, help="clip the gradient's global norm (0 = off)")
    o(
        "--init",
        choices=INITS,
        help=f"weight initialisation (ibp: Shi et al. 2021); default {d.init}",
    )
    o("--eps-warmup", type=float, help="epochs at eps = 0 before annealing")
    o(
        "--eps-ramp",
        type=float,
        help="epochs of Shi et al.'s smooth eps ramp (0 = full eps at once)",
    )
    o(
        "--pgd-steps",
        type=int,
        help=f"PGD steps of pgd/sabr/mtl-ibp training; default {d.pgd_steps}",
    )
    o("--sabr-lambda", type=float, help=f"SABR's small-box ratio lambda; default {d.sabr_lambda}")
    o("--mtl-alpha", type=float, help=f"MTL-IBP's IBP weight alpha; default {d.mtl_alpha}")

    s = p.add_argument_group("smoothing (pgpe, rgs)").add_argument
    s("--popsize", type=int, help=f"PGPE population (even: antithetic pairs); default {d.popsize}")
    s("--sigma", type=float, help=f"initial smoothing std of PGPE / std of RGS; default {d.sigma}")
    s("--sigma-lr", type=float, help=f"PGPE's sigma learning rate; default {d.sigma_lr}")
    s(
        "--sigma-max-change",
        type=float,
        help=f"cap on sigma's relative change per step; default {d.sigma_max_change}",
    )
    s(
        "--no-rank",
        dest="rank",
        action="store_false",
        help="PGPE on raw losses (no centred-rank shaping)",
    )
    s("--center-opt", choices=CENTER_OPTS, help=f"PGPE's centre optimizer; default {d.center_opt}")
    s("--pop-chunk", type=int, help="evaluate at most N population members at once (0 = all)")
    s("--rgs-samples", type=int, help=f"RGS perturbed points per step; default {d.rgs_samples}")
    return p


def config_from_args(given: dict):
    """Config from the defaults, then the preset's values, then the flags given."""
    from gls_np.config import Config, preset

    values = asdict(Config())
    values["device"] = os.environ.get("GLS_NP_DEVICE", values["device"])
    name = given.pop("preset", None)
    if name:
        probe = {**values, **given}
        values.update(preset(name, probe["optimizer"], probe["dataset"], probe["eps"]))
    values.update(given)
    if values.get("resume") == "auto":
        values["resume"] = str(Path(values["out"]) / "checkpoint.h5")
    values["lr_milestones"] = tuple(values["lr_milestones"])
    return Config(**values)


def main(argv=None) -> int:
    parser = build_parser()
    given = {k.replace("-", "_"): v for k, v in vars(parser.parse_args(argv)).items()}
    from gls_np.train import TrainingError, TrainingInterrupted, run

    try:
        cfg = config_from_args(given).validate()
        last = run(cfg)
    except TrainingInterrupted as exc:
        print(exc, file=sys.stderr)
        return 130
    except (ValueError, OSError, TrainingError, RuntimeError) as exc:
        if os.environ.get("GLS_NP_DEBUG"):
            raise
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return 2
    summary = ", ".join(
        f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in last.items()
    )
    print(f"done: {summary}; checkpoint {Path(cfg.out) / 'checkpoint.h5'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
