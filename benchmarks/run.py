#!/usr/bin/env python
"""gls_np benchmarks: throughput next to the machine's GEMM peak, measured in one run.

Usage:
  python benchmarks/run.py                       # gemm, forward, bounds, pgpe (the default)
  python benchmarks/run.py --only gemm,forward,bounds --json results.json
  python benchmarks/run.py --only bounds --archs cnn3 --datasets cifar10 --methods ibp,deeppoly
  python benchmarks/run.py --only train --train-relax ibp,deeppoly --rgs-samples 2
  GLS_NP_MALLOC=default python benchmarks/run.py   # without backend.tune_allocator()
  python benchmarks/run.py --device gpu          # the same workloads on CuPy arrays (a GPU)

Groups (--only): gemm (always measured: the peak of the "of peak" column), forward (forward
pass; cross-entropy loss + gradient), bounds (each relaxation's margin bounds, and its robust
loss + gradient), pgpe (one PGPE fitness evaluation, vectorised population vs a loop over the
members), train (loss + gradient of every objective, and one full GRAD and RGS optimizer step
through gls_np.train's own step code), mpi (a PGPE step over R=1 and R=2 ranks) and certify
(the certification cascade on a checkpoint). Each runs on every --archs x --datasets network
(pgpe, mpi and the full training steps on cnn3 only).

Each workload runs in its own subprocess, so its peak RSS is its own. The table
gives images/s (network-images/s, marked *, where one call evaluates several
networks: PGPE members or RGS points, each on the whole batch), the GFLOP/s that
is (the algorithm's GEMM FLOPs, counted analytically: see ``flops``) and its
fraction of the float32 GEMM GFLOP/s measured at the start of the same run. The
machine is noisy: compare ratios, not seconds.

With --device gpu every array lives on the GPU (CuPy), each timed call ends with a
device synchronisation, the GEMM peak is the GPU's, and the memory column is the
most CuPy's memory pool held (the certify group stays on the CPU: its MILP is).
On tests/gpu_emulator (PYTHONPATH=tests/gpu_emulator) the times are NumPy's and say nothing,
but two more columns do: the device operations (kernel launches on a GPU) and the copies to
the host that one call makes.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

GROUPS = ("gemm", "forward", "bounds", "pgpe", "train", "mpi", "certify")
METHODS = ("ibp", "hbox", "crown-ibp", "deeppoly")
HEAVY = ("deeppoly", "hbox")


def use_device(device: str):
    """Select ``device`` for new arrays; return the function that waits for its queued work.

    On the GPU a call returns once its kernels are queued, so every timed call ends
    with a synchronisation. Raises RuntimeError with one line where CuPy or a GPU is missing.
    """
    from gls_np.backend import default_xp, set_device

    set_device(device)  # a RuntimeError where CuPy is missing
    if device == "cpu":
        return lambda: None
    cupy, why = default_xp(), ""
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError where there is no driver
        count, why = 0, f" ({exc})"
    if count < 1:
        set_device("cpu")  # no GPU selection left behind
        raise RuntimeError(f"--device gpu: CuPy finds no CUDA device{why}")
    return cupy.cuda.Device().synchronize


def peak_memory(device: str) -> dict:
    """This process's peak RSS (MB) and, on the GPU, the most CuPy's memory pool held (MB).

    The pool keeps every block it allocated until it is freed explicitly, so its total
    is the most the workload held at once (give or take the pool's rounding).
    """
    out = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if device == "gpu":
        from gls_np.backend import default_xp

        out["peak_gpu_mb"] = default_xp().get_default_memory_pool().total_bytes() / 2**20
    return out


def best_time(fn, repeats, sync=lambda: None):
    """Best wall time of ``repeats`` calls after one warm-up call, each ended by ``sync()``."""
    fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_gflops(n=2048, repeats=5, device="cpu"):
    """float32 GEMM GFLOP/s of an n x n x n product on ``device``."""
    from gls_np.backend import np, to_device

    sync = use_device(device)
    rng = np.random.default_rng(0)
    a = to_device(rng.standard_normal((n, n), dtype=np.float32))
    b = to_device(rng.standard_normal((n, n), dtype=np.float32))
    return 2 * n**3 / best_time(lambda: a @ b, repeats, sync) / 1e9


def layer_flops(net):
    """Per-sample forward GEMM FLOPs per layer (2 O K L per conv, 2 in out per linear, else 0).

    Normalize, ReLU and Flatten are elementwise or free: 0.
    """
    flops, shapes = [], net.shapes(net.input_shape)
    for layer, out_shape in zip(net.layers, shapes[1:]):
        if layer.type == "conv2d":
            flops.append(2 * math.prod(out_shape) * layer.in_channels * layer.kernel_size**2)
        elif layer.type == "linear":
            flops.append(2 * layer.in_features * layer.out_features)
        else:
            flops.append(0)
    return flops


def ibp_is_exact(net, j):
    """Tell whether DeepPoly takes IBP's bounds for ReLU j: no ReLU, <= 1 weighted layer before."""
    body = [layer.type for layer in net.layers[:j]]
    return "relu" not in body and sum(t in ("conv2d", "linear") for t in body) <= 1


def backsub_flops(net, j, rows):
    """FLOPs of back-substituting ``rows`` rows on the input of layer j to the network input.

    One side (lower or upper). Rows on a conv's output go back as patches (gls_np.bounds.patches):
    window p = 1, then p' = (p - 1) s + k through each conv, costing a direct transposed
    convolution 2 C_out p^2 C_in k^2 per row, while p'^2 < H W of the conv's input; from the
    first layer where not (or a Linear/Flatten) the rows are dense and cost that layer's F.
    """
    f, shapes = layer_flops(net), net.shapes(net.input_shape)
    side = 1 if j and net.layers[j - 1].type == "conv2d" else None
    total = 0
    for i in reversed(range(j)):
        layer = net.layers[i]
        if side is not None and layer.type == "conv2d":
            grown = (side - 1) * layer.stride + layer.kernel_size
            if grown**2 < math.prod(shapes[i][1:]):
                total += 2 * layer.out_channels * side**2 * layer.in_channels * layer.kernel_size**2
                side = grown
                continue
            side = None
        elif layer.type not in ("relu", "normalize"):
            side = None
        if side is None:
            total += f[i]
    return rows * total


def flops(net, workload, spec_rows=9):
    """FLOPs of a workload per image (per network-image for a population), counted analytically.

    forward / none: sum of layer GEMM FLOPs F. none+grad (cross-entropy loss and
    gradient): 3F minus the first layer's dx. IBP: 2F (centre and radius). HBox:
    (G + 2) F with G input generators. CROWN-IBP: IBP + S F (S spec rows
    back-substituted through every layer). DeepPoly: IBP up to the ReLUs where it
    is exact, then every other ReLU input's neurons back-substituted as patches
    (``backsub_flops``), plus the S spec rows; one side, the useful work (the
    Toeplitz GEMM route does more FLOPs to run faster; stable neurons skipped do
    fewer). pgd: 8 attack steps (forward + input gradient) and the forward.
    "+grad": 3x. A PGPE member costs its objective, an RGS point or a GRAD step its
    objective's "+grad".
    """
    f = layer_flops(net)
    total = sum(f)
    kind, _, grad = workload.partition("+")
    if ":" in kind:
        mode, method = kind.split(":")
        return flops(net, method if mode.startswith("pgpe") else f"{method}+grad", spec_rows)
    if kind in ("forward", "none"):
        if grad:
            return 3 * total - next(v for v in f if v)
        out = total
    elif kind == "ibp":
        out = 2 * total
    elif kind == "pgd":
        out = 8 * 2 * total + total
    elif kind == "hbox":
        out = (math.prod(net.input_shape) + 2) * total
    elif kind == "crown-ibp":
        out = 2 * total + spec_rows * total
    elif kind == "deeppoly":
        out = spec_rows * total
        shapes = net.shapes(net.input_shape)
        for j, layer in enumerate(net.layers):
            if layer.type != "relu":
                continue
            if ibp_is_exact(net, j):
                out += 2 * sum(f[:j])
            else:
                out += backsub_flops(net, j, math.prod(shapes[j]))
    else:
        raise ValueError(f"unknown workload {workload!r}")
    return 3 * out if grad else out


def training_step(spec, net, x, y):
    """One full ``grad-step`` / ``rgs-step`` of gls_np.train (loss + gradient, Adam update).

    Returns (fn, networks per call): RGS evaluates ``rgs_samples`` perturbed networks.
    """
    from gls_np import objectives, train
    from gls_np.config import Config

    mode, method = spec["workload"].split(":")
    cfg = Config(
        arch=spec["arch"],
        dataset=spec["dataset"],
        relax=method,
        optimizer=mode.removesuffix("-step"),
        batch_size=spec["batch"],
        eps=spec["eps"],
        rgs_samples=spec.get("rgs_samples", 2),
        device=spec.get("device", "cpu"),
    )
    step = train.build_method(cfg, None, net)
    loss_fn = objectives.make(method, net)
    state, keys = [step.init(net.theta)], itertools.count()

    def fn():
        # (seed, 1, step) as train.run passes it; the state carries on like a run's
        _, state[0] = step.step(state[0], loss_fn, x, y, cfg.eps, cfg.lr, 0.0, (0, 1, next(keys)))

    return fn, cfg.rgs_samples if cfg.optimizer == "rgs" else 1


def worker(spec: dict) -> dict:
    """Run one workload in this process and return its row."""
    from gls_np import bounds, nets, objectives
    from gls_np.backend import np, to_device, tune_allocator
    from gls_np.tensor import value_and_grad

    tune_allocator()  # reuse freed memory instead of page-faulting in new memory
    device = spec.get("device", "cpu")
    sync = use_device(device)
    net = nets.build(spec["arch"], spec["dataset"], init="ibp")
    K = net.layers[-1].out_features
    rng = np.random.default_rng(0)
    B = spec["batch"]
    x = to_device(rng.random((B, *net.input_shape), dtype=np.float32))
    y = to_device(rng.integers(0, K, B))
    kind, _, grad = spec["workload"].partition("+")
    mode, _, method = kind.partition(":")
    networks = 1
    if mode in ("pgpe-vec", "pgpe-chunked", "pgpe-loop"):
        from gls_np.memory import budget_gb

        loss = objectives.make(method, net)
        P = spec["popsize"]
        noise = rng.standard_normal((P, net.n_params), dtype=np.float32)
        thetas = net.theta + 1e-3 * to_device(noise)
        # vec: one call; chunked: the trainer's members per call (--pop-chunk 0); loop: one each
        chunk = {"pgpe-vec": P, "pgpe-loop": 1}.get(mode) or objectives.population_chunk(
            net, method, x.shape, P, budget_gb(0)
        )
        spec = {**spec, "chunk": chunk}

        def fn():
            return [
                loss(thetas[i : i + chunk], x, y, spec["eps"], net.theta, rng)
                for i in range(0, P, chunk)
            ]

        networks = P
    elif mode in ("grad-step", "rgs-step"):
        fn, networks = training_step(spec, net, x, y)
    elif kind == "forward":
        fn = lambda: net(x)  # noqa: E731
    elif grad:
        loss = objectives.make(kind, net)

        def fn():
            return value_and_grad(lambda th: loss(th, x, y, spec["eps"], net.theta, rng), net.theta)

    else:
        box = bounds.linf_box(x, spec["eps"])
        C = bounds.margin_spec(y, K, dtype=net.dtype)
        fn = lambda: bounds.compute(net, box.lb, box.ub, kind, C=C)  # noqa: E731
    t = best_time(fn, spec["repeats"], sync)
    per_call = B * networks
    counted = device_counts(fn) if emulated(device) else {}
    return {
        **spec,
        "unit": "network-images" if networks > 1 else "images",
        "images_per_call": per_call,
        "call_s": t,
        "images_per_s": per_call / t,
        "gflops": per_call * flops(net, spec["workload"]) / t / 1e9,
        **peak_memory(device),
        **counted,
    }


def mpi_worker(spec: dict) -> dict | None:
    """One PGPE or GRAD training step over this MPI job's ranks (mpi group); the row on rank 0.

    The step is gls_np.train's: PGPE asks this rank's pairs, scores them, gathers the losses
    and combines by spec["comm"]; GRAD takes this rank's rows of the batch and allreduces
    the gradient. Its time is the slowest rank's, best of the repeats.
    """
    import mpi_run

    mpi_run.limit_blas_threads()  # before numpy: cores // ranks BLAS threads per rank
    from gls_np import distributed, nets, objectives, train
    from gls_np.backend import np, to_device, tune_allocator
    from gls_np.config import Config

    tune_allocator()  # as mpi_run.py does: the step is timed as training runs it

    comm = distributed.world()
    device = spec.get("device", "cpu")
    if device == "gpu":
        distributed.bind_gpu(comm)  # ranks share the node's GPUs round robin, as training does
    sync = use_device(device)  # after the binding: it waits for this rank's GPU
    optimizer = spec.get("optimizer", "pgpe")
    cfg = Config(
        arch=spec["arch"],
        dataset=spec["dataset"],
        relax=spec["method"],
        optimizer=optimizer,
        popsize=spec.get("popsize", 2),
        batch_size=spec["batch"],
        eps=spec["eps"],
        comm=spec["comm"],
        device=device,
    )
    net = nets.build(spec["arch"], spec["dataset"], init="ibp")
    method = train.build_method(cfg, comm, net)
    loss_fn = objectives.make(spec["method"], net)
    rng = np.random.default_rng(0)
    x = to_device(rng.random((spec["batch"], *net.input_shape), dtype=np.float32))
    y = to_device(rng.integers(0, net.layers[-1].out_features, spec["batch"]))
    state = method.init(net.theta)
    times, sent = [], 0
    for k in range(spec["repeats"] + 1):
        comm.barrier()
        before, t0 = comm.bytes_sent, time.perf_counter()
        _, state = method.step(state, loss_fn, x, y, spec["eps"], 1e-3, 0.0, (0, 1, k))
        sync()
        t = max(comm.allgather(time.perf_counter() - t0))
        sent = comm.bytes_sent - before
        if k:  # the first step warms up
            times.append(t)
    if comm.rank:
        return None
    step_s = min(times)
    members = spec["popsize"] if optimizer == "pgpe" else 1
    per_call = spec["batch"] * members
    return {
        **spec,
        "unit": "network-images" if members > 1 else "images",
        "images_per_call": per_call,
        "call_s": step_s,
        "step_s": step_s,
        "bytes_per_step": sent,
        "images_per_s": per_call / step_s,
        "gflops": per_call * flops(net, spec["workload"]) / step_s / 1e9,
        **peak_memory(device),
    }


def certify_worker(spec: dict) -> dict:
    """The certification cascade on the first ``n`` test samples of a checkpoint (certify group).

    Reports the seconds per sample of each cascade step, over the samples the step ran on.
    """
    from gls_np import checkpoint, data
    from gls_np.backend import np
    from gls_np.certify import cascade

    net, meta = checkpoint.load(spec["checkpoint"], dtype="float64")
    dataset = meta.dataset or "mnist"
    x, y = data.load(dataset, "test")
    n = spec["batch"]
    opts = cascade.Options(eps=spec["eps"], timeout=spec["timeout"])
    t0 = time.perf_counter()
    records, steps = cascade.certify(net, x[:n], y[:n], np.arange(n), opts)
    seconds = time.perf_counter() - t0
    return {
        **spec,
        "arch": meta.arch or "?",
        "dataset": dataset,
        "unit": "images",
        "images_per_call": n,
        "call_s": seconds,
        "images_per_s": n / seconds,
        "gflops": float("nan"),
        **peak_memory("cpu"),
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

    def key(r):
        return r["arch"], r["dataset"], r.get("optimizer", "pgpe"), r["method"]

    for r in rows:
        one = next((o["step_s"] for o in rows if o["ranks"] == 1 and key(o) == key(r)), None)
        speedup = f", {one / r['step_s']:.2f}x R=1" if one else ""
        step = f"{key(r)[2].upper()} step, {r['method']}"
        print(
            f"mpi: {step:<20} {r['arch']} {r['dataset']:<13} R={r['ranks']} "
            f"--comm {r['comm']:<9} {r['step_s'] * 1e3:8.1f} ms{speedup}, "
            f"{r['bytes_per_step']:,} bytes sent per rank and step"
        )


def print_pgpe_summary(rows: list) -> None:
    """Network-images/s of the vectorised population over the loop over members (pgpe group)."""
    done = {(r["arch"], r["dataset"], r["workload"]): r for r in rows if "error" not in r}
    for (arch, dataset, workload), vec in done.items():
        mode, _, method = workload.partition(":")
        loop = done.get((arch, dataset, f"pgpe-loop:{method}"))
        if mode != "pgpe-vec" or loop is None:
            continue
        line = (
            f"pgpe: {arch} {dataset:<13} {method:<9} P={vec['popsize']}: vectorised "
            f"{vec['images_per_s']:,.0f} vs loop {loop['images_per_s']:,.0f} network-images/s, "
            f"vec/loop {vec['images_per_s'] / loop['images_per_s']:.2f}x"
        )
        chunked = done.get((arch, dataset, f"pgpe-chunked:{method}"))
        if chunked is not None:
            rate = chunked["images_per_s"]
            line += (
                f"; the trainer's {chunked['chunk']} members per call "
                f"{rate:,.0f} ({rate / loop['images_per_s']:.2f}x)"
            )
        print(line)


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
    """The workloads to run, one spec each, for every dataset and arch.

    DeepPoly and HBox run at --heavy-batch wherever they are heavy (CNN5, or CIFAR-10's
    3072 input generators / neurons), as do the train group's rows.
    """
    specs = []
    groups = args.only.split(",")
    for dataset, arch in itertools.product(args.datasets.split(","), args.archs.split(",")):
        base = {
            "arch": arch,
            "dataset": dataset,
            "eps": args.eps,
            "repeats": args.repeats,
            "device": args.device,
        }
        light = arch == "cnn3" and dataset != "cifar10"
        if "forward" in groups:
            specs += [
                {**base, "workload": w, "batch": args.batch} for w in ("forward", "none+grad")
            ]
        if "bounds" in groups:
            for m in args.methods.split(","):
                heavy = m in HEAVY
                batch = min(args.batch, args.heavy_batch) if heavy and not light else args.batch
                if m == "hbox" and dataset == "cifar10":
                    batch = min(batch, args.hbox_cifar_batch)
                for w in (m, f"{m}+grad"):
                    specs.append(
                        {
                            **base,
                            "workload": w,
                            "batch": batch,
                            "repeats": 1 if heavy else args.repeats,
                        }
                    )
        if "pgpe" in groups and arch == "cnn3":
            # network-images/s of one PGPE fitness evaluation: vectorised population vs a loop
            for m in args.pgpe_methods.split(","):
                for mode in ("pgpe-vec", "pgpe-chunked", "pgpe-loop"):
                    specs.append(
                        {
                            **base,
                            "workload": f"{mode}:{m}",
                            "batch": args.pgpe_batch,
                            "popsize": args.popsize,
                            "repeats": 1,
                        }
                    )
        if "train" in groups:
            # loss + gradient of every objective (none+grad is the forward group's row)
            objs = ("pgd", *args.methods.split(","))
            for m in objs if "forward" in groups else ("none", *objs):
                batch = args.heavy_batch
                if m == "hbox" and dataset == "cifar10":
                    batch = min(batch, args.hbox_cifar_batch)
                specs.append({**base, "workload": f"{m}+grad", "batch": batch, "repeats": 1})
            if arch == "cnn3":
                # one full optimizer step: GRAD, and RGS over --rgs-samples points
                for m in args.train_relax.split(","):
                    for mode in ("grad-step", "rgs-step"):
                        specs.append(
                            {
                                **base,
                                "workload": f"{mode}:{m}",
                                "batch": args.heavy_batch,
                                "repeats": 1,
                                **({"rgs_samples": args.rgs_samples} if mode == "rgs-step" else {}),
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
            # GRAD, data-parallel: each rank takes half the batch's rows
            for relax, ranks in itertools.product(args.train_relax.split(","), (1, 2)):
                specs.append(
                    {
                        **base,
                        "workload": f"grad-mpi{ranks}:{relax}",
                        "method": relax,
                        "optimizer": "grad",
                        "batch": args.heavy_batch,
                        "ranks": ranks,
                        "comm": "allreduce",
                    }
                )
    if "certify" in groups:
        if not args.checkpoint:
            raise SystemExit("the certify group needs --checkpoint (a trained CNN3)")
        # the checkpoint fixes the arch and dataset; the worker reports them
        specs.append(
            {
                "arch": "?",
                "dataset": "?",
                "eps": args.eps,
                "repeats": 1,
                "workload": "certify",
                "checkpoint": args.checkpoint,
                "batch": args.certify_n,
                "timeout": args.certify_timeout,
            }
        )
    return specs


def parse_args(argv=None):
    """The command line, with --only and --datasets checked."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--only", default="gemm,forward,bounds,pgpe", help=f"comma list of {GROUPS}")
    p.add_argument("--archs", default="cnn3,cnn5")
    p.add_argument(
        "--datasets", default="mnist,cifar10", help="comma list of mnist, fashion-mnist, cifar10"
    )
    p.add_argument("--methods", default=",".join(METHODS), help="relaxations of bounds and train")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument(
        "--heavy-batch",
        type=int,
        default=128,
        help="batch of DeepPoly/HBox on cnn5 or cifar10 and of the train group (memory)",
    )
    p.add_argument(
        "--hbox-cifar-batch",
        type=int,
        default=16,
        help="batch of HBox on cifar10 (3,072 input generators: time and memory)",
    )
    p.add_argument("--repeats", type=int, default=3, help="timed calls after a warm-up (best)")
    p.add_argument(
        "--eps",
        type=float,
        default=0.1,
        help="L-inf radius of every workload; a smaller one leaves more neurons stable, "
        "which DeepPoly skips",
    )
    p.add_argument("--popsize", type=int, default=32, help="PGPE population of pgpe and mpi")
    p.add_argument("--pgpe-batch", type=int, default=128)
    p.add_argument("--pgpe-methods", default="ibp,crown-ibp,deeppoly")
    p.add_argument(
        "--train-relax", default="ibp,deeppoly", help="objectives of the GRAD and RGS steps"
    )
    p.add_argument("--rgs-samples", type=int, default=2, help="RGS points per step")
    p.add_argument("--checkpoint", default="", help="trained CNN3 of the certify group")
    p.add_argument("--certify-n", type=int, default=100, help="test samples of the certify group")
    p.add_argument("--certify-timeout", type=float, default=60.0, help="MILP s per sample")
    p.add_argument(
        "--gemm-size",
        type=int,
        default=0,
        help="n of the n^3 float32 GEMM (default 2048 on the CPU, 8192 on the GPU)",
    )
    p.add_argument(
        "--device",
        choices=("cpu", "gpu"),
        default="cpu",
        help="where the arrays live: NumPy on the CPU, or CuPy on the GPU",
    )
    p.add_argument("--timeout", type=float, default=900, help="seconds per workload")
    p.add_argument("--json", default="", help="also write the results here")
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        return args
    # not in a worker: mpi_worker must limit BLAS threads before numpy is imported
    from gls_np.data import DATASETS

    for flag, given, allowed in (
        ("--only", args.only, GROUPS),
        ("--datasets", args.datasets, DATASETS),
    ):
        unknown = [v for v in given.split(",") if v not in allowed]
        if unknown:
            p.error(f"{flag}: unknown {unknown}; expected a comma list of {list(allowed)}")
    return args


def emulated(device: str) -> bool:
    """True when ``device`` is "gpu" and cupy is the test suite's NumPy emulator, not CuPy."""
    if device != "gpu":
        return False
    from gls_np.backend import default_xp

    return bool(getattr(default_xp(), "EMULATED", False))


def device_counts(fn) -> dict:
    """On the emulator: the device operations (kernel launches on a GPU) and the copies to
    the host that one call of ``fn`` makes (tests/gpu_emulator counts both)."""
    from gls_np.backend import default_xp

    cupy = default_xp()
    ops, copies = cupy.launches["count"], cupy.transfers["count"]
    fn()
    return {
        "device_ops": cupy.launches["count"] - ops,
        "transfers": cupy.transfers["count"] - copies,
    }


def write_json(args, peak: float, rows: list) -> None:
    """Write the GEMM peak, the options and the rows so far to ``--json`` (atomically)."""
    out = {
        "gemm_gflops": peak,
        "gemm_size": args.gemm_size,
        "emulated_gpu": emulated(args.device),
        "options": vars(args),
        "rows": rows,
    }
    path = Path(args.json)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(out, indent=2))
    tmp.replace(path)


def print_row(r: dict, peak: float) -> None:
    lead = f"{r['workload']:<24}{r['arch']:<6}{r['dataset']:<14}{r['batch']:>6}"
    if "error" in r:
        print(f"{lead}  {r['error']}", flush=True)
        return
    star = "*" if r["unit"] == "network-images" else " "
    memory = r.get("peak_gpu_mb", r["peak_rss_mb"])
    counted = f"{r['device_ops']:>11,}{r['transfers']:>10,}" if "device_ops" in r else ""
    print(
        f"{lead}{r['images_per_s']:>11,.1f}{star}{r['gflops']:>8.1f}{r['gflops'] / peak:>9.1%}"
        f"{memory:>12,.0f}{counted}",
        flush=True,
    )


def main(argv=None):
    args = parse_args(argv)
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
    specs = plan(args)
    args.gemm_size = args.gemm_size or (8192 if args.device == "gpu" else 2048)
    try:
        peak = gemm_gflops(args.gemm_size, repeats=args.repeats, device=args.device)
    except RuntimeError as exc:
        raise SystemExit(f"error: {exc}") from None
    lib = "cupy" if args.device == "gpu" else "numpy"
    if emulated(args.device):
        lib = "cupy = tests/gpu_emulator on NumPy: no GPU, these are not GPU numbers"
    print(f"float32 GEMM ({args.gemm_size}^3, {lib}): {peak:.1f} GFLOP/s; eps {args.eps}")
    memory = "peak GPU MB" if args.device == "gpu" else "peak RSS MB"
    counted = f"{'device ops':>11}{'to host':>10}" if emulated(args.device) else ""
    print(
        f"{'workload':<24}{'arch':<6}{'dataset':<14}{'batch':>6}{'img/s':>12}{'GFLOP/s':>8}"
        f"{'of peak':>9}{memory:>12}{counted}"
    )
    rows = []
    for spec in specs:
        rows.append(run_workload(spec, args.timeout))
        print_row(rows[-1], peak)
        if args.json:  # after every row: a run stopped midway keeps what it measured
            write_json(args, peak, rows)
    if any(r.get("unit") == "network-images" for r in rows):
        print(
            "* network-images/s: one call evaluates several networks on the batch "
            "(PGPE: popsize members; RGS: --rgs-samples points)"
        )
    print_pgpe_summary(rows)
    print_mpi_summary(rows)
    print_certify_summary(rows)
    if args.json:
        write_json(args, peak, rows)


if __name__ == "__main__":
    main()
