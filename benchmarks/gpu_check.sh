#!/bin/sh
# The GPU check of issue #7, item 4, as one command for a machine with a GPU and CuPy already
# installed (such machines are often offline: this installs nothing and needs no venv):
# every gpu-marked test, then the benchmark on the GPU (and, for the ratio, on its CPU).
#
#   sh benchmarks/gpu_check.sh [OUT_DIR]       # default OUT_DIR: benchmarks/results
#
# The training-run and certification tests read MNIST and the reference networks from the
# shared folder (env GLS_NP_SHARED, default ../shared); a machine without it skips them. To
# take them to a machine that gets only the repository, pack 13 MB into an ignored folder:
#   echo /.gpu_shared/ >>.git/info/exclude; mkdir -p .gpu_shared/data
#   cp -r ../shared/data/SHA256SUMS ../shared/data/mnist .gpu_shared/data/
#   cp -r ../shared/reference .gpu_shared/
# and run there with GLS_NP_SHARED=$PWD/.gpu_shared.
#
# Env: PYTHON (default python3), GPU_BENCH_ONLY (default gemm,forward,bounds,pgpe),
# GPU_BENCH_TIMEOUT (seconds per workload, default 120: a lent GPU's time is short).
# Writes OUT_DIR/gpu_tests.log, OUT_DIR/gpu.json and OUT_DIR/gpu_bench.log; exits non-zero
# when CuPy sees no GPU or any step fails.
set -u
cd "$(dirname "$0")/.."
out=${1:-benchmarks/results}
py=${PYTHON:-python3}
only=${GPU_BENCH_ONLY:-gemm,forward,bounds,pgpe}
timeout=${GPU_BENCH_TIMEOUT:-120}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

if ! "$py" -c 'import cupy, sys; sys.exit(cupy.cuda.runtime.getDeviceCount() < 1)' 2>/dev/null; then
    echo "gpu_check: CuPy finds no CUDA device with $py; nothing was run" >&2
    exit 2
fi
"$py" -c 'import cupy, numpy; d = cupy.cuda.runtime.getDeviceProperties(0);
print("cupy", cupy.__version__, "numpy", numpy.__version__, "on", d["name"].decode())'

# POSIX sh has no pipefail: pytest's exit status goes through a file past tee
{ "$py" -m pytest -m gpu -q -p no:cacheprovider tests; echo $? >"$out/.pytest_rc"; } 2>&1 |
    tee "$out/gpu_tests.log"
tests=$(cat "$out/.pytest_rc")
rm -f "$out/.pytest_rc"

"$py" benchmarks/run.py --device gpu --only "$only" --datasets mnist --timeout "$timeout" \
    --json "$out/gpu.json" \
    2>&1 | tee "$out/gpu_bench.log"
# a workload that failed is a row with an "error" (the table goes on past it)
"$py" -c 'import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
bad = [(r["workload"], r["arch"], r["error"]) for r in rows if "error" in r]
print(*bad, sep="\n")
sys.exit(1 if bad or not rows else 0)' "$out/gpu.json"
bench=$?

echo "gpu_check: tests $([ $tests -eq 0 ] && echo ok || echo FAILED)," \
    "benchmark $([ $bench -eq 0 ] && echo ok || echo FAILED)"
[ $tests -eq 0 ] && [ $bench -eq 0 ]
