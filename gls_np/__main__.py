"""``python -m gls_np``: the tool subcommands, thin over the library.

Each subcommand is one ``_add_<name>(subparsers)`` function that declares its arguments and
sets ``func``; ``func(args)`` returns the exit status. Library errors (``ValueError``, the
project's error type, ``CheckpointError`` included) print one line to stderr and exit 2, with
no traceback. Subcommands import what they need when run, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2


def _inspect(args: argparse.Namespace) -> int:
    from . import checkpoint

    net, meta = checkpoint.load(args.checkpoint)
    print(checkpoint.summary(net, meta))
    return 0


def _add_inspect(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="summarise a checkpoint: architecture, parameters, config, last metrics, sigma",
        description="Print a readable summary of a gls_np HDF5 checkpoint.",
    )
    p.add_argument("checkpoint", help="path to a checkpoint file (.h5)")
    p.set_defaults(func=_inspect)


def _load_for_certify(args: argparse.Namespace):
    """Load the checkpoint's network in the requested dtype and its samples [start, start + n)."""
    from . import checkpoint, data
    from .backend import set_device

    if args.n < 1 or args.start < 0:
        raise ValueError(f"--n must be >= 1 and --start >= 0, got {args.n} and {args.start}")
    set_device(args.device)
    net, meta = checkpoint.load(args.checkpoint, dtype=args.dtype)
    dataset = args.dataset or meta.dataset
    if dataset is None:
        raise ValueError("the checkpoint does not name its dataset; pass --dataset")
    x, y = data.load(dataset, args.split, args.data_dir or None)
    if args.start >= len(y):
        raise ValueError(
            f"--start {args.start} is past the end of the {args.split} split ({len(y)})"
        )
    stop = min(args.start + args.n, len(y))
    return net, meta, dataset, x[args.start : stop], y[args.start : stop], args.start, stop


def _eps(args: argparse.Namespace, meta) -> float:
    eps = args.eps if args.eps is not None else meta.config.get("eps")
    if eps is None:
        raise ValueError("the checkpoint's config has no eps; pass --eps")
    return float(eps)


def _out_dir(args: argparse.Namespace):
    from pathlib import Path

    out = Path(args.out) if args.out else Path(args.checkpoint).resolve().parent
    out.mkdir(parents=True, exist_ok=True)
    return out


def _certify(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from . import distributed
    from .backend import np
    from .certify import cascade, report
    from .memory import budget_gb
    from .progress import progress

    net, meta, dataset, x, y, start, stop = _load_for_certify(args)
    eps = _eps(args, meta)
    comm = distributed.world()
    opts = cascade.Options(
        eps=eps,
        pgd_steps=args.pgd_steps,
        pgd_restarts=args.pgd_restarts,
        alpha_steps=args.alpha_steps,
        timeout=args.timeout,
        max_memory_gb=budget_gb(args.max_memory_gb, comm),
        seed=args.seed,
    )
    out = _out_dir(args) if comm.rank == 0 else None
    mine = cascade.shard_size(len(y), args.batch_size, comm.rank, comm.size)
    with progress(mine, desc=f"certify eps={eps:g}", unit="sample", enabled=comm.rank == 0) as bar:
        records, steps = cascade.certify(
            net,
            x,
            y,
            np.arange(start, stop),
            opts,
            batch_size=args.batch_size,
            bar=bar,
            comm=comm,
        )
    if comm.rank:
        return 0
    summary = report.summarize(
        records,
        steps,
        checkpoint=str(args.checkpoint),
        arch=meta.arch,
        dataset=dataset,
        split=args.split,
        start=start,
        dtype=args.dtype,
        ranks=comm.size,
        **asdict(opts),
    )
    csv_path, json_path = (out / f"certify-eps{eps:g}.{ext}" for ext in ("csv", "json"))
    report.write_csv(csv_path, records)
    report.write_json(json_path, summary)
    print(report.table(summary))
    print(f"wrote {csv_path} and {json_path}")
    return 0


def _certify_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="path to a checkpoint file (.h5)")
    p.add_argument("--eps", type=float, default=None, help="L-inf radius (default: the run's eps)")
    p.add_argument("--n", type=int, default=1000, help="number of test samples (default 1000)")
    p.add_argument("--start", type=int, default=0, help="index of the first sample (default 0)")
    p.add_argument("--out", default="", help="output folder (default: the checkpoint's folder)")
    p.add_argument("--split", choices=("test", "train"), default="test")
    p.add_argument("--dataset", default="", help="override the checkpoint's dataset")
    p.add_argument("--data-dir", default="", help="dataset cache folder")
    p.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="precision of every bound (default float64: rounding cannot flip a certificate)",
    )
    p.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    p.add_argument("--batch-size", type=int, default=100, help="samples per batched step")
    p.add_argument(
        "--max-memory-gb",
        type=float,
        default=0.0,
        help="memory budget in GB of one bound chunk; 0 (default) = half the free memory "
        "over the ranks on the node, clamped to [0.25, 64], picked at the start",
    )


def _add_certify(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "certify",
        help="natural, adversarial and certified accuracy with a cascade ending in a MILP",
        description=(
            "Per test sample: natural prediction, PGD attack, IBP, CROWN-IBP, DeepPoly, "
            "alpha-CROWN, then a complete MILP check, stopping at the first decisive step. "
            "Writes certify-eps<EPS>.csv (per sample) and .json (summary) and prints a table."
        ),
    )
    _certify_common(p)
    p.add_argument(
        "--timeout", type=float, default=60.0, help="MILP seconds per sample (0: no MILP)"
    )
    p.add_argument("--pgd-steps", type=int, default=40)
    p.add_argument("--pgd-restarts", type=int, default=5)
    p.add_argument("--alpha-steps", type=int, default=20, help="alpha-CROWN steps (0: skip it)")
    p.add_argument("--seed", type=int, default=0, help="seed of the attack's random starts")
    p.set_defaults(func=_certify)


def _tightness(args: argparse.Namespace) -> int:
    from . import distributed
    from .backend import np
    from .certify import report, tightness
    from .memory import budget_gb
    from .progress import progress

    net, meta, dataset, x, y, start, stop = _load_for_certify(args)
    budget = budget_gb(args.max_memory_gb, distributed.world())
    eps_max = args.eps_max if args.eps_max is not None else 2 * _eps(args, meta)
    if eps_max <= 0 or args.points < 2:
        raise ValueError(f"need --eps-max > 0 and --points >= 2, got {eps_max} and {args.points}")
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in tightness.TIGHTNESS_METHODS]
    if bad or not methods:
        raise ValueError(
            f"--methods {args.methods!r}: expected a comma list of "
            f"{list(tightness.TIGHTNESS_METHODS)}"
        )
    eps_values = np.linspace(0.0, eps_max, args.points)
    with progress(len(methods) * args.points, desc="tightness", unit="point") as bar:
        result = tightness.curves(
            net,
            x,
            y,
            eps_values,
            methods,
            batch_size=args.batch_size,
            max_memory_gb=budget,
            bar=bar,
        )
    result.update(
        checkpoint=str(args.checkpoint),
        dataset=dataset,
        start=start,
        dtype=args.dtype,
        max_memory_gb=budget,
    )
    out = _out_dir(args)
    report.write_json(out / "tightness.json", result)
    title = f"{meta.arch or 'network'} on {dataset}, {len(y)} samples"
    tightness.plot(out / "tightness.png", result, title=title)
    print(
        f"{'method':<12}{'AUC':>8}   certified accuracy at eps = "
        + ", ".join(f"{e:.3g}" for e in eps_values)
    )
    for m, d in result["methods"].items():
        accs = " ".join(f"{100 * a:5.1f}" for a in d["accuracy"])
        print(f"{m:<12}{100 * d['auc']:7.2f}%   {accs}")
    print(f"wrote {out / 'tightness.json'} and {out / 'tightness.png'}")
    return 0


def _add_tightness(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "tightness",
        help="certified accuracy against eps for each relaxation, its AUC, and a plot",
        description=(
            "Sweep eps over [0, --eps-max] and compute each relaxation's certified accuracy "
            "(Jovanovic et al. 2022's tightness). Writes tightness.json and tightness.png."
        ),
    )
    _certify_common(p)
    p.set_defaults(n=200)
    p.add_argument("--eps-max", type=float, default=None, help="default: twice the run's eps")
    p.add_argument("--points", type=int, default=9, help="number of eps values (default 9)")
    p.add_argument(
        "--methods",
        default="ibp,hbox,crown-ibp,deeppoly",
        help="comma list among ibp, hbox, crown-ibp, deeppoly, alpha-crown",
    )
    p.set_defaults(func=_tightness)


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose usage errors are one line: ``prog: error: message``, exit 2."""

    def error(self, message):
        """Print one line naming the bad argument and exit 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``python -m gls_np`` parser with every subcommand registered."""
    parser = OneLineParser(
        prog="python -m gls_np",
        description="gls_np tools. Training is `python mpi_run.py`; these work on its outputs.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_inspect(subparsers)
    _add_certify(subparsers)
    _add_tightness(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns the process exit status."""
    args = build_parser().parse_args(argv)
    from .backend import tune_allocator

    tune_allocator()  # reuse freed memory instead of page-faulting in new memory
    try:
        return args.func(args)
    except ValueError as exc:
        print(f"gls_np {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"gls_np {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:
        from . import distributed

        comm = distributed.world()
        if comm.size == 1:
            raise
        distributed.abort_all(comm, f"gls_np {args.command}", exc)
        return 2


if __name__ == "__main__":
    sys.exit(main())
