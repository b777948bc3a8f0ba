#!/usr/bin/env python
"""gls_np benchmarks: throughput next to the machine's GEMM peak, measured in one run.

Usage:
  python benchmarks/run.py                       # every group
  python benchmarks/run.py --only gemm,forward,bounds --json results.json
  python benchmarks/run.py --only bounds --archs cnn3 --methods ibp,deeppoly --batch 128
  GLS_NP_MALLOC=default python benchmarks/run.py   # without backend.tune_allocator()

Each workload runs in its own subprocess, so its peak RSS is its own. The table
gives images/s, the GFLOP/s that is (dense-equivalent GEMM FLOPs, counted
analytically: see ``flops``) and its fraction of the float32 GEMM GFLOP/s
measured at the start of the same run. The machine is noisy: compare ratios,
not seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

METHODS = ("ibp", "hbox", "crown-ibp", "deeppoly")


def best_time(fn, repeats):
    """Best wall time of ``repeats`` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_gflops(n=2048, repeats=5):
    from gls_np.backend import np

    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return 2 * n**3 / best_time(lambda: a @ b, repeats) / 1e9


def layer_flops(net):
    """Per-sample forward GEMM FLOPs per layer (2 O K L per conv, 2 in out per linear, else 0)."""
    flops, shapes = [], net.shapes(net.input_shape)
    for layer, out_shape in zip(net.layers, shapes[1:]):
        if layer.type == "conv2d":
            flops.append(2 * math.prod(out_shape) * layer.in_channels * layer.kernel_size**2)
        elif layer.type == "linear":
            flops.append(2 * layer.in_features * layer.out_features)
        else:
            flops.append(0)
    return flops


def flops(net, workload, spec_rows=9):
    """Dense-equivalent per-sample FLOPs of a workload.

    forward: sum of layer FLOPs F. train step: 3F minus the first layer's dx.
    IBP: 2F (centre and radius). HBox: (G + 2) F with G input generators.
    CROWN-IBP: IBP + S F (S spec rows back-substituted through every layer).
    DeepPoly: for every ReLU input j, its n_j neurons back-substituted through
    the layers before it, plus the S spec rows through all. "+grad": 3x.
    """
    f = layer_flops(net)
    total = sum(f)
    relu_at = [i for i, layer in enumerate(net.layers) if layer.type == "relu"]
    shapes = net.shapes(net.input_shape)
    kind, _, grad = workload.partition("+")
    if kind.startswith("pgpe"):
        # a population member costs what one network's bounds cost
        return flops(net, kind.split(":")[1], spec_rows)
    if kind == "forward":
        out = total
    elif kind == "step":
        first = next(v for v in f if v)
        return 3 * total - first
    elif kind == "ibp":
        out = 2 * total
    elif kind == "pgd":
        # 8 attack steps (forward + input gradient) and the training forward
        out = 8 * 2 * total + total
    elif kind == "hbox":
        out = (math.prod(net.input_shape) + 2) * total
    elif kind == "crown-ibp":
        out = 2 * total + spec_rows * total
    elif kind == "deeppoly":
        out = spec_rows * total + sum(math.prod(shapes[j]) * sum(f[:j]) for j in relu_at)
    else:
        raise ValueError(kind)
    return 3 * out if grad else out


def worker(spec: dict) -> dict:
    """Run one workload in this process and return its row."""
    from gls_np import bounds, nets, objectives
    from gls_np.backend import np, tune_allocator
    from gls_np.losses import cross_entropy
    from gls_np.tensor import value_and_grad

    tune_allocator()  # reuse freed memory instead of page-faulting in new memory
    net = nets.build(spec["arch"], spec["dataset"], init="ibp")
    rng = np.random.default_rng(0)
    B = spec["batch"]
    x = rng.random((B, *net.input_shape), dtype=np.float32)
    y = rng.integers(0, 10, B)
    kind, _, grad = spec["workload"].partition("+")
    per_call = B
    if kind.startswith("pgpe"):
        mode, method = kind.split(":")
        loss = objectives.make(method, net)
        thetas = net.theta + 1e-3 * rng.standard_normal(
            (spec["popsize"], net.n_params), dtype=np.float32
        )
        if mode == "pgpe-vec":
            fn = lambda: loss(thetas, x, y, spec["eps"], net.theta, rng)  # noqa: E731
        else:
            fn = lambda: [loss(t, x, y, spec["eps"], net.theta, rng) for t in thetas]  # noqa: E731
        per_call = B * spec["popsize"]
    elif kind == "forward":
        fn = lambda: net(x)  # noqa: E731
    elif kind == "step":
        fn = lambda: value_and_grad(lambda th: cross_entropy(net.forward(x, th), y), net.theta)  # noqa: E731
    elif grad:
        loss = objectives.make(kind, net)

        def fn():
            return value_and_grad(lambda th: loss(th, x, y, spec["eps"], net.theta, rng), net.theta)

    else:
        box = bounds.linf_box(x, spec["eps"])
        C = bounds.margin_spec(y, 10, dtype=net.dtype)
        fn = lambda: bounds.compute(net, box.lb, box.ub, kind, C=C)  # noqa: E731
    t = best_time(fn, spec["repeats"])
    return {
        **spec,
        "images_per_s": per_call / t,
        "gflops": per_call * flops(net, spec["workload"]) / t / 1e9,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def mpi_worker(spec: dict) -> dict | None:
    """One PGPE training step over this MPI job's ranks (mpi group); the row on rank 0 only.

    The step is train.pgpe_method's (ask this rank's pairs, score them, gather the losses,
    combine by spec["comm"], update); its time is the slowest rank's, best of the repeats.
    """
    import mpi_run

    mpi_run.limit_blas_threads()  # before numpy: cores // ranks BLAS threads per rank
    from gls_np import distributed, nets, objectives, train
    from gls_np.backend import np
    from gls_np.config import Config

    comm = distributed.world()
    cfg = Config(
        arch=spec["arch"],
        relax=spec["method"],
        optimizer="pgpe",
        popsize=spec["popsize"],
        batch_size=spec["batch"],
        eps=spec["eps"],
        comm=spec["comm"],
    )
    net = nets.build(spec["arch"], spec["dataset"], init="ibp")
    method = train.pgpe_method(cfg, comm)
    loss_fn = objectives.make(spec["method"], net)
    rng = np.random.default_rng(0)
    x = rng.random((spec["batch"], *net.input_shape), dtype=np.float32)
    y = rng.integers(0, 10, spec["batch"])
    state = method.init(net.theta)
    times, sent = [], 0
    for k in range(spec["repeats"] + 1):
        comm.barrier()
        before, t0 = comm.bytes_sent, time.perf_counter()
        _, state = method.step(state, loss_fn, x, y, spec["eps"], 1e-3, 0.0, (0, 1, k))
        t = max(comm.allgather(time.perf_counter() - t0))
        sent = comm.bytes_sent - before
        if k:  # the first step warms up
            times.append(t)
    if comm.rank:
        return None
    step_s = min(times)
    return {
        **spec,
        "step_s": step_s,
        "bytes_per_step": sent,
        "images_per_s": spec["batch"] * spec["popsize"] / step_s,
        "gflops": spec["batch"] * spec["popsize"] * flops(net, spec["workload"]) / step_s / 1e9,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def certify_worker(spec: dict) -> dict:
    """The certification cascade on the first ``n`` test samples of a checkpoint (certify group).

    Reports the seconds per sample of each cascade step, over the samples the step ran on.
    """
    from gls_np import checkpoint, data
    from gls_np.backend import np
    from gls_np.certify import cascade

    net, meta = checkpoint.load(spec["checkpoint"], dtype="float64")
    x, y = data.load(meta.dataset or "mnist", "test")
    n = spec["batch"]
    opts = cascade.Options(eps=spec["eps"], timeout=spec["timeout"])
    t0 = time.perf_counter()
    records, steps = cascade.certify(net, x[:n], y[:n], np.arange(n), opts)
    seconds = time.perf_counter() - t0
    return {
        **spec,
        "arch": meta.arch or "?",
        "images_per_s": n / seconds,
        "gflops": float("nan"),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "steps": {k: {"seconds": v[0], "samples": v[1]} for k, v in steps.items()},
        "certified": sum(r["status"] == "certified" for r in records) / n,
        "timeouts": sum(r["status"] == "timeout" for r in records),
    }


def print_certify_summary(rows: list) -> None:
    """Seconds per sample of each cascade step (certify group)."""
    for r in rows:
        if "steps" not in r:
            continue
        print(
            f"certify: {r['checkpoint']}, eps {r['eps']}, {r['batch']} samples, "
            f"certified {r['certified']:.1%}, timeouts {r['timeouts']}"
        )
        print(f"  {'step':<12}{'ran on':>8}{'s/sample':>10}")
        for step, d in r["steps"].items():
            per = f"{d['seconds'] / d['samples']:>10.4f}" if d["samples"] else f"{'-':>10}"
            print(f"  {step:<12}{d['samples']:>8}{per}")


def mpi_command(ranks: int) -> list:
    """``mpiexec -launcher fork -n R`` from this Python's bin/ (the mpich wheel), or the PATH's."""
    import shutil

    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.is_file() else shutil.which("mpiexec")
    if not found:
        raise RuntimeError("no mpiexec: pip install mpi4py mpich")
    return [found, "-launcher", "fork", "-n", str(ranks)]


def print_mpi_summary(rows: list) -> None:
    """Step time and bytes per rank and step of the mpi group, and R=2's speed-up over R=1."""
    rows = [r for r in rows if "ranks" in r and "step_s" in r]
    one = next((r["step_s"] for r in rows if r["ranks"] == 1), None)
    for r in rows:
        speedup = f", {one / r['step_s']:.2f}x R=1" if one else ""
        print(
            f"mpi: PGPE step R={r['ranks']} --comm {r['comm']:<9} {r['step_s'] * 1e3:8.1f} ms"
            f"{speedup}, {r['bytes_per_step']:,} bytes sent per rank and step"
        )


def run_workload(spec: dict, timeout: float) -> dict:
    cmd = [sys.executable, __file__, "--worker", json.dumps(spec)]
    if "ranks" in spec:
        try:
            cmd = [*mpi_command(spec["ranks"]), *cmd]
        except RuntimeError as exc:
            return {**spec, "error": str(exc)}
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {**spec, "error": f"timed out after {timeout:.0f} s"}
    if res.returncode != 0:
        return {**spec, "error": (res.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(res.stdout.strip().splitlines()[-1])


def plan(args) -> list:
    """The workloads to run, with a batch each (DeepPoly on CNN5 runs at a smaller batch)."""
    specs = []
    groups = args.only.split(",")
    for arch in args.archs.split(","):
        base = {"arch": arch, "dataset": "mnist", "eps": 0.1, "repeats": args.repeats}
        if "forward" in groups:
            specs += [{**base, "workload": w, "batch": args.batch} for w in ("forward", "step")]
        if "bounds" in groups:
            for m in args.methods.split(","):
                batch = args.batch
                if m in ("deeppoly", "hbox") and arch != "cnn3":
                    batch = min(batch, args.heavy_batch)
                for w in (m, f"{m}+grad"):
                    specs.append(
                        {
                            **base,
                            "workload": w,
                            "batch": batch,
                            "repeats": 1 if m in ("deeppoly", "hbox") else args.repeats,
                        }
                    )
        if "pgpe" in groups and arch == "cnn3":
            # network-images/s of one PGPE fitness evaluation: vectorised population vs a loop
            for m in args.pgpe_methods.split(","):
                for mode in ("pgpe-vec", "pgpe-loop"):
                    specs.append(
                        {
                            **base,
                            "workload": f"{mode}:{m}",
                            "batch": args.pgpe_batch,
                            "popsize": args.popsize,
                            "repeats": 1,
                        }
                    )
        if "mpi" in groups and arch == "cnn3":
            # PGPE over 1 and 2 ranks: R=1 (combining is trivial) and R=2 with both --comm
            for ranks, comm in ((1, "allreduce"), (2, "allreduce"), (2, "seeds")):
                specs.append(
                    {
                        **base,
                        "workload": f"pgpe-mpi{ranks}-{comm}:ibp",
                        "method": "ibp",
                        "batch": args.pgpe_batch,
                        "popsize": args.popsize,
                        "ranks": ranks,
                        "comm": comm,
                    }
                )
        if "certify" in groups and arch == "cnn3":
            if not args.checkpoint:
                raise SystemExit("the certify group needs --checkpoint (a trained CNN3)")
            specs.append(
                {
                    **base,
                    "workload": "certify",
                    "checkpoint": args.checkpoint,
                    "batch": args.certify_n,
                    "timeout": args.certify_timeout,
                }
            )
        if "train" in groups:
            for m in ("none", "pgd", *args.methods.split(",")):
                specs.append(
                    {
                        **base,
                        "workload": f"{m}+grad" if m != "none" else "step",
                        "batch": args.heavy_batch,
                        "repeats": 1,
                    }
                )
    return specs


def main(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--only",
        default="gemm,forward,bounds,pgpe",
        help="comma list of gemm, forward, bounds, pgpe, train, mpi, certify",
    )
    p.add_argument("--checkpoint", default="", help="trained CNN3 of the certify group")
    p.add_argument("--certify-n", type=int, default=100, help="test samples of the certify group")
    p.add_argument("--certify-timeout", type=float, default=60.0, help="MILP s per sample")
    p.add_argument("--archs", default="cnn3,cnn5")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--batch", type=int, default=512)
    p.add_argument(
        "--heavy-batch", type=int, default=128, help="batch of DeepPoly/HBox on cnn5 (memory)"
    )
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--popsize", type=int, default=32, help="PGPE population of the pgpe group")
    p.add_argument("--pgpe-batch", type=int, default=128)
    p.add_argument("--pgpe-methods", default="ibp,crown-ibp,deeppoly")
    p.add_argument("--timeout", type=float, default=900, help="seconds per workload")
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        spec = json.loads(args.worker)
        if "ranks" in spec:
            row = mpi_worker(spec)
        elif spec["workload"] == "certify":
            row = certify_worker(spec)
        else:
            row = worker(spec)
        if row is not None:
            print(json.dumps(row))
        return
    peak = gemm_gflops(repeats=args.repeats)
    print(f"float32 GEMM (2048^3, numpy): {peak:.1f} GFLOP/s")
    rows = []
    header = (
        f"{'workload':<26}{'arch':<6}{'batch':>6}{'img/s':>11}{'GFLOP/s':>9}{'of peak':>9}"
        f"{'peak RSS MB':>12}"
    )
    print(header)
    for spec in plan(args):
        r = run_workload(spec, args.timeout)
        rows.append(r)
        if "error" in r:
            print(f"{r['workload']:<26}{r['arch']:<6}{r['batch']:>6}  {r['error']}")
        else:
            print(
                f"{r['workload']:<26}{r['arch']:<6}{r['batch']:>6}{r['images_per_s']:>11,.1f}{r['gflops']:>9.1f}"
                f"{r['gflops'] / peak:>9.1%}{r['peak_rss_mb']:>12,.0f}",
                flush=True,
            )
    print_mpi_summary(rows)
    print_certify_summary(rows)
    if args.json:
        Path(args.json).write_text(json.dumps({"gemm_gflops": peak, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
