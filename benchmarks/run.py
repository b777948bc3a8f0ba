#!/usr/bin/env python
"""gls_np benchmarks: throughput next to the machine's GEMM peak, measured in one run.

Usage: python benchmarks/run.py [--only forward,gemm] [--batch 512] [--repeats 5] [--json out.json]

Prints one table row per workload: images/s, GFLOP/s achieved (analytic FLOP
counts of the GEMM work) and its ratio to the float32 GEMM GFLOP/s measured at
the start of the same run. The machine is noisy: compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gls_np import nets  # noqa: E402
from gls_np.backend import np  # noqa: E402
from gls_np.losses import cross_entropy  # noqa: E402
from gls_np.tensor import value_and_grad  # noqa: E402


def best_time(fn, repeats):
    fn()  # warm-up: allocations, BLAS threads
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)


def gemm_gflops(n=2048, repeats=5):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    return 2 * n**3 / best_time(lambda: a @ b, repeats) / 1e9


def layer_flops(net, batch):
    """GEMM FLOPs of each parametric layer's forward: 2 B O K L per conv, 2 B in out per linear."""
    flops, shapes = [], net.shapes(net.input_shape)
    for layer, out_shape in zip(net.layers, shapes[1:]):
        if layer.type == "conv2d":
            flops.append(2 * batch * math.prod(out_shape) * layer.in_channels * layer.kernel_size**2)
        elif layer.type == "linear":
            flops.append(2 * batch * layer.in_features * layer.out_features)
    return flops


def step_flops(net, batch):
    """Forward + backward: dW costs one forward GEMM per layer, dx another except at the first."""
    f = layer_flops(net, batch)
    return 3 * sum(f) - f[0]


def bench_forward(args, peak):
    rows = []
    rng = np.random.default_rng(0)
    for arch in ("cnn3", "cnn5"):
        net = nets.build(arch, "mnist")
        x = rng.random((args.batch, *net.input_shape), dtype=np.float32)
        y = rng.integers(0, 10, args.batch)
        t = best_time(lambda: net(x), args.repeats)
        f = sum(layer_flops(net, args.batch))
        rows.append(row(f"{arch} forward", args.batch / t, f / t / 1e9, peak))

        def step():
            return value_and_grad(lambda th: cross_entropy(net.forward(x, th), y), net.theta)

        t = best_time(step, args.repeats)
        f = step_flops(net, args.batch)
        rows.append(row(f"{arch} forward+backward", args.batch / t, f / t / 1e9, peak))
    return rows


def row(name, per_s, gflops, peak):
    return {
        "workload": name,
        "images_per_s": per_s,
        "gflops": gflops,
        "fraction_of_gemm_peak": gflops / peak,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


BENCHES = {"forward": bench_forward}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--only", default=",".join(BENCHES), help=f"comma list of {list(BENCHES)}")
    p.add_argument("--batch", type=int, default=512)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", default="", help="also write the results here")
    args = p.parse_args(argv)
    peak = gemm_gflops(repeats=args.repeats)
    print(f"float32 GEMM (2048^3, numpy): {peak:.1f} GFLOP/s")
    rows = []
    for name in args.only.split(","):
        if name not in BENCHES:
            p.error(f"unknown benchmark {name!r}; expected one of {list(BENCHES)}")
        rows += BENCHES[name](args, peak)
    print(f"{'workload':<34}{'img/s':>12}{'GFLOP/s':>10}{'of peak':>9}{'peak RSS MB':>13}")
    for r in rows:
        print(f"{r['workload']:<34}{r['images_per_s']:>12,.0f}{r['gflops']:>10.1f}"
              f"{r['fraction_of_gemm_peak']:>9.1%}{r['peak_rss_mb']:>13,.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"gemm_gflops": peak, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()
