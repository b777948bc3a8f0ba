#!/usr/bin/env python
"""gls_np training entry point: arguments -> Config -> gls_np.train.run.

Runs as a plain process (``python mpi_run.py ...``) or over R MPI ranks
(``mpiexec -n R python mpi_run.py ...``, same arguments, same result up to float
rounding; docs/mpi.md). Values come from, in increasing priority: the Config
defaults, ``--preset``, and the flags given. Bad arguments print one line and
exit 2, without a traceback (set GLS_NP_DEBUG=1 to see it).

``python mpi_run.py certify ...`` and ``... tightness ...`` run those tools of
``python -m gls_np`` (docs/certification.md), with the same per-rank BLAS threads.

Under MPI: only rank 0 prints and writes the run directory; each rank's BLAS
gets cores // (ranks on the node) threads unless OPENBLAS_NUM_THREADS,
OMP_NUM_THREADS or MKL_NUM_THREADS is set; an exception on any rank prints
``rank r: error`` and aborts every rank (the last checkpoint stays valid).
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
_threads_note: list = []


def _env_int(*names: str, default: int) -> int:
    for name in names:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return default


def _cores() -> int:
    """Cores this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def ranks_hint(cores: int, ranks: int, device: str) -> str | None:
    """Return a one-line hint for a lone process on a multi-core CPU, else None.

    NumPy's elementwise passes and copies run on one core whatever the BLAS threads, so
    R ranks of one thread each beat one process of R threads: on 2 cores, CNN3 steps at
    R = 2 ran 1.48x (GRAD DeepPoly, batch 128) and 1.52x (PGPE IBP, P = 256) faster.
    """
    if device != "cpu" or ranks > 1 or cores < 2:
        return None
    return (
        f"hint: one process runs NumPy's elementwise passes on one of the {cores} cores; "
        f"one rank per core (mpiexec -n {cores} python mpi_run.py ...) trains the same "
        "network faster, 1.5x on 2 cores (docs/mpi.md)"
    )


def launch_rank() -> int:
    """Return the MPI rank the launcher gave this process (MPICH/Hydra, Open MPI), else 0."""
    return _env_int("PMI_RANK", "OMPI_COMM_WORLD_RANK", default=0)


def limit_blas_threads() -> str:
    """Give each rank cores // local ranks BLAS threads; say what was set.

    A thread count the user chose is kept unless, times the ranks on this node, it would
    exceed the cores: oversubscribed BLAS threads spin against each other (a PGPE step of
    CNN3 at R = 2 on 2 cores took 813 ms with 2 threads per rank, 98 ms with 1), so it is
    lowered to cores // local ranks, and the message says so.
    Must run before numpy is imported: BLAS reads these variables once, when it loads; later
    calls (``main`` run again in one process) return the first call's message.
    """
    if _threads_note:
        return _threads_note[0]
    local = _env_int("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", default=1)
    cores = _cores()
    threads = max(1, cores // max(local, 1))
    chosen = {v: os.environ[v] for v in THREAD_VARS if v in os.environ}
    lowered = {
        v: n for v, n in chosen.items() if n.isdigit() and int(n) * local > max(cores, local)
    }
    for var in THREAD_VARS:
        if var in lowered:
            os.environ[var] = str(threads)
        os.environ.setdefault(var, str(threads))
    where = f"({cores} cores, {local} ranks on this node)"
    if lowered:
        given = ", ".join(f"{k}={v}" for k, v in lowered.items())
        _threads_note.append(
            f"threads: {given} from the environment would oversubscribe the cores; "
            f"{threads} BLAS threads per rank {where}"
        )
    elif chosen:
        given = ", ".join(f"{k}={v}" for k, v in chosen.items())
        _threads_note.append(f"threads: {given} as set by the user {where}")
    else:
        _threads_note.append(f"threads: {threads} BLAS threads per rank {where}")
    return _threads_note[0]


EXAMPLES = """examples:
  python mpi_run.py --arch cnn3 --dataset mnist --relax none --optimizer grad --epochs 1 \\
      --out runs/std
  python mpi_run.py --relax ibp --optimizer grad --eps 0.1 --preset paper --out runs/ibp
  python mpi_run.py --relax pgd --eps 0.1 --epochs 5 --out runs/pgd
  python mpi_run.py --relax deeppoly --optimizer pgpe --eps 0.1 \\
      --init-from runs/pgd/checkpoint.h5 --out runs/pgpe
  python mpi_run.py --relax deeppoly --optimizer rgs --eps 0.1 \\
      --init-from runs/pgd/checkpoint.h5 --out runs/rgs
  python mpi_run.py --out runs/std --epochs 2 --resume
  mpiexec -n 4 python mpi_run.py --relax deeppoly --optimizer pgpe --eps 0.1 --out runs/pgpe4
  python -m gls_np inspect runs/std/checkpoint.h5
"""


class OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad argument in one line (no usage dump) and exits 2."""

    def error(self, message):
        """Print one line naming the bad argument and exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def build_parser():
    """Build the argument parser (imports gls_np, hence numpy: set BLAS threads first)."""
    from gls_np.config import (
        CENTER_OPTS,
        COMMS,
        DEVICES,
        OPTIMIZERS,
        PRESETS,
        RELAXATIONS,
        Config,
    )
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
        help="objective: none = cross-entropy, pgd = adversarial training, "
        "ibp/hbox/crown-ibp/deeppoly = robust CE from that relaxation's bounds, "
        "sabr = IBP on a small box around the PGD point, "
        f"mtl-ibp = alpha*IBP + (1-alpha)*adversarial; default {d.relax}",
    )
    g(
        "--optimizer",
        choices=OPTIMIZERS,
        help="grad = backprop + Adam, pgpe = PGPE (gradient-free), "
        f"rgs = randomized gradient smoothing; default {d.optimizer}",
    )
    g(
        "--preset",
        choices=PRESETS,
        help="paper = App. E hyper-parameters for the optimizer/dataset/eps; "
        "quick = a CPU-sized variant",
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
        "--keep-epochs",
        action="store_true",
        help="also keep a copy of the checkpoint of every finished epoch (checkpoint-eNNN.h5)",
    )
    g(
        "--cert-size",
        type=int,
        help=f"test examples for per-epoch adversarial/certified accuracy; default {d.cert_size}",
    )
    g(
        "--max-memory-gb",
        type=float,
        help="memory budget in GB of one loss evaluation (its bound chunks and PGPE population "
        "chunk) and of one certification chunk; 0 = half the free memory (GPU memory with "
        "--device gpu) over the ranks on the node, clamped to [0.25, 64], picked at the start "
        f"and recorded in config.json (a resumed run keeps it); default {d.max_memory_gb:g}",
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
    s(
        "--pop-chunk",
        type=int,
        help="evaluate at most N population members at once "
        "(0 = as many as fit --max-memory-gb; crown-ibp/deeppoly: about 512 network-images "
        "per call); default 0",
    )
    s("--rgs-samples", type=int, help=f"RGS perturbed points per step; default {d.rgs_samples}")

    m = p.add_argument_group("mpi (mpiexec -n R python mpi_run.py ...; docs/mpi.md)").add_argument
    m(
        "--comm",
        choices=COMMS,
        help="how ranks combine a PGPE step: allreduce = sum each rank's share of the estimate "
        "(2 D float64 per step), seeds = share only the losses and regenerate every member's "
        f"noise from the seed (P float64 per step); default {d.comm}",
    )
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


def _say(message: str, rank: int) -> None:
    if rank == 0:
        print(message, file=sys.stderr, flush=True)


TOOLS = ("certify", "tightness")


def main(argv=None) -> int:
    """Train as the arguments say; return the exit status (0, 2 on errors, 130 on Ctrl-C).

    ``mpi_run.py certify ...`` and ``mpi_run.py tightness ...`` run those tools of
    ``python -m gls_np`` instead, with the same per-rank BLAS threads.
    """
    threads = limit_blas_threads()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in TOOLS:
        from gls_np.__main__ import main as tools

        return tools(argv)  # it tunes the allocator itself
    from gls_np.backend import tune_allocator

    tune_allocator()  # reuse freed memory instead of page-faulting in new memory
    rank = launch_rank()
    parser = build_parser()
    given = {k.replace("-", "_"): v for k, v in vars(parser.parse_args(argv)).items()}
    from gls_np import distributed
    from gls_np.train import TrainingError, TrainingInterrupted, run

    try:
        cfg = config_from_args(given).validate()
    except ValueError as exc:
        # every rank sees the same arguments: each exits, rank 0 says why
        _say(f"{parser.prog}: error: {exc}", rank)
        return 2
    comm = distributed.world()
    try:
        if comm.size > 1:
            _say(f"mpi: {comm.size} ranks, --comm {cfg.comm}; {threads}", rank)
        if cfg.device == "gpu":
            gpus = comm.allgather(distributed.bind_gpu(comm))
            _say("gpus: " + ", ".join(f"rank {r} -> GPU {g}" for r, g in enumerate(gpus)), rank)
        last = run(cfg, comm)
    except TrainingInterrupted as exc:
        _say(str(exc), comm.rank)
        return 130
    except TrainingError as exc:
        # raised on every rank at once (losses and parameters are global): a clean exit
        if os.environ.get("GLS_NP_DEBUG"):
            raise
        _say(f"{parser.prog}: error: {exc}", comm.rank)
        return 2
    except Exception as exc:
        if comm.size == 1:
            expected = isinstance(exc, (ValueError, OSError, RuntimeError))
            if os.environ.get("GLS_NP_DEBUG") or not expected:
                raise
            print(f"{parser.prog}: error: {exc}", file=sys.stderr)
            return 2
        if os.environ.get("GLS_NP_DEBUG"):
            traceback.print_exc()
        distributed.abort_all(comm, parser.prog, exc)
    if comm.rank == 0:
        summary = ", ".join(
            f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in last.items()
        )
        print(f"done: {summary}; checkpoint {Path(cfg.out) / 'checkpoint.h5'}")
    hint = ranks_hint(_cores(), comm.size, cfg.device)
    if hint:
        _say(hint, comm.rank)
    return 0


if __name__ == "__main__":
    sys.exit(main())
