#!/bin/sh
# The GPU check of issue #7, item 4, as one command for a machine with a GPU and CuPy already
# installed (such machines are often offline: this installs nothing and needs no venv):
# every gpu-marked test, then the benchmark on the GPU.
#
#   sh benchmarks/gpu_check.sh [OUT_DIR]       # default OUT_DIR: benchmarks/results
#
# The training-run and certification tests read MNIST and the reference networks from the
# shared folder (env GLS_NP_SHARED, else .gpu_shared in the repository when it exists, else
# ../shared). To take them to a machine that gets only the repository, pack 13 MB into an
# ignored folder and send it along (the device tool: carry [".gpu_shared"]):
#   echo /.gpu_shared/ >>.git/info/exclude; mkdir -p .gpu_shared/data
#   cp -r ../shared/data/SHA256SUMS ../shared/data/mnist .gpu_shared/data/
#   cp -r ../shared/reference .gpu_shared/
#
# Env: PYTHON (default python3), GPU_BENCH_ONLY (default gemm,forward,bounds,pgpe),
# GPU_BENCH_ARCHS (default cnn3,cnn5), GPU_BENCH_TIMEOUT (seconds per workload, default 120:
# a lent GPU's time is short; the JSON is rewritten after every row, so a run stopped midway
# keeps what it measured).
# Writes OUT_DIR/gpu_tests.log, OUT_DIR/gpu.json and OUT_DIR/gpu_bench.log. Exits non-zero
# when the GPU or a package is missing, a test fails or is skipped, or a workload fails.
set -u
out=${1:-benchmarks/results}
case $out in /*) ;; *) out="$PWD/$out" ;; esac
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}
only=${GPU_BENCH_ONLY:-gemm,forward,bounds,pgpe}
archs=${GPU_BENCH_ARCHS:-cnn3,cnn5}
timeout=${GPU_BENCH_TIMEOUT:-120}
mkdir -p "$out"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if [ -z "${GLS_NP_SHARED:-}" ] && [ -d .gpu_shared ]; then
    export GLS_NP_SHARED="$PWD/.gpu_shared"
fi

if ! "$py" -c 'import cupy, sys; sys.exit(cupy.cuda.runtime.getDeviceCount() < 1)' 2>/dev/null; then
    echo "gpu_check: CuPy finds no CUDA device with $py; nothing was run" >&2
    exit 2
fi
if "$py" -c 'import cupy, sys; sys.exit(not getattr(cupy, "EMULATED", False))' 2>/dev/null; then
    echo "gpu_check: cupy is the NumPy emulator of tests/gpu_emulator, not CuPy; nothing was run" >&2
    exit 2
fi
if ! "$py" -c 'import pytest, scipy, h5py, tqdm, matplotlib, hypothesis'; then
    echo "gpu_check: $py lacks a package gls_np or its tests need; nothing was run" >&2
    exit 2
fi
"$py" -c 'import cupy, numpy; d = cupy.cuda.runtime.getDeviceProperties(0);
print("cupy", cupy.__version__, "numpy", numpy.__version__, "on", d["name"].decode())'

# POSIX sh has no pipefail: each exit status goes through a file past tee
{ "$py" -m pytest -m gpu -q -p no:cacheprovider tests; echo $? >"$out/.rc"; } 2>&1 |
    tee "$out/gpu_tests.log"
tests=$(cat "$out/.rc")
verdict=$([ "$tests" -eq 0 ] && echo ok || echo FAILED)
# a skipped gpu test ran nothing: the check is incomplete (the summary line counts them)
skipped=$(tail -n 1 "$out/gpu_tests.log" | grep -Eo '[0-9]+ skipped' | grep -Eo '[0-9]+')
if [ "${skipped:-0}" -gt 0 ] && [ "$tests" -eq 0 ]; then
    tests=1
    verdict="INCOMPLETE ($skipped skipped)"
fi

rm -f "$out/gpu.json"
{
    "$py" benchmarks/run.py --device gpu --only "$only" --archs "$archs" --datasets mnist \
        --timeout "$timeout" --json "$out/gpu.json"
    echo $? >"$out/.rc"
} 2>&1 | tee "$out/gpu_bench.log"
bench=$(cat "$out/.rc")
rm -f "$out/.rc"
# a workload that failed is a row with an "error" (the table goes on past it)
if [ "$bench" -eq 0 ]; then
    "$py" -c 'import json, sys
rows = json.load(open(sys.argv[1]))["rows"]
bad = [(r["workload"], r["arch"], r["error"]) for r in rows if "error" in r]
print(*bad, sep="\n")
sys.exit(1 if bad or not rows else 0)' "$out/gpu.json"
    bench=$?
fi

echo "gpu_check: tests $verdict, benchmark $([ "$bench" -eq 0 ] && echo ok || echo FAILED);" \
    "results in $out"
[ "$tests" -eq 0 ] && [ "$bench" -eq 0 ]
