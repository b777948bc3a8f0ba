# gls_np: two-command setup.  `make demo` runs the paper's method in miniature, `make test` the suite.
# Everything runs from the project virtualenv .venv (created on first use).

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

# The mpich wheel installs its own mpiexec (Hydra) into the venv's bin/. It runs as root
# without extra flags; `-launcher fork` keeps Hydra from ever trying ssh (single host only).
MPIEXEC       ?= $(VENV)/bin/mpiexec
MPIEXEC_FLAGS ?= -launcher fork
# Hydra kills a hung MPI job after this many seconds (exit 255) instead of hanging CI.
export MPIEXEC_TIMEOUT ?= 1800
# The MPI tests take well under a minute; a hang (a rank stuck in a collective) fails after this.
MPI_TEST_TIMEOUT ?= 300
# Ranks of `make demo-mpi` (one process per core is right on a CPU; see docs/mpi.md).
RANKS ?= 2

# One BLAS thread per test process: small GEMMs run several times faster than with threads
# fighting over 2 cores, and the MPI run's two ranks then use one core each.
TEST_ENV := OPENBLAS_NUM_THREADS=$${OPENBLAS_NUM_THREADS:-1} OMP_NUM_THREADS=$${OMP_NUM_THREADS:-1}

# Extra arguments for both pytest runs, e.g. `make test PYTEST_ARGS="-k conv -x"`.
PYTEST_ARGS ?=

ROOT := $(patsubst %/,%,$(dir $(abspath $(lastword $(MAKEFILE_LIST)))))
SHARED_DATA := $(abspath $(ROOT)/../shared/data)

# Read-only mirror of the datasets, used when present unless the user set it already.
ifeq ($(origin GLS_NP_DATA_MIRROR),undefined)
ifneq ($(wildcard $(SHARED_DATA)/.),)
export GLS_NP_DATA_MIRROR := $(SHARED_DATA)
endif
endif

.DEFAULT_GOAL := help
.PHONY: help venv test test-main test-mpi test-gpu-emulated demo demo-ce demo-mpi bench bench-mpi gpu-check clean distclean

help:
	@echo "make demo       the paper's method in miniature: PGD warm start, then PGPE on DeepPoly bounds"
	@echo "make test       run the test suite (mpi-marked tests under mpiexec -n 2, the gpu-marked"
	@echo "                ones on the CuPy emulator tests/gpu_emulator, then the rest)"
	@echo "make demo-ce    standard training: CNN3 on MNIST for one epoch, then inspect the checkpoint"
	@echo "make demo-mpi   IBP warm start, then PGPE on IBP bounds, over RANKS=$(RANKS) MPI ranks (mpiexec)"
	@echo "make bench      run benchmarks/run.py"
	@echo "make bench-mpi  PGPE and GRAD step times over 1 and 2 ranks, and the bytes each sends"
	@echo "make gpu-check  every gpu test, then the benchmark on the GPU (CuPy already installed)"
	@echo "make venv       create $(VENV) and install gls_np with test extras (editable)"
	@echo "make clean      remove caches and build outputs; distclean also removes $(VENV)"

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $@

# No tests collected (pytest exit 5) is a failure for the main run.
test-main: venv
	@$(TEST_ENV) $(PY) -m pytest -m "not mpi" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests: failing" >&2; fi; \
	exit $$rc

# The mpi-marked tests, both ranks running each test (tests/test_mpi.py). Rank 0 prints pytest's
# report; the other ranks print theirs only when they fail. Any rank failing fails the run.
test-mpi: venv
	@$(TEST_ENV) MPIEXEC_TIMEOUT=$(MPI_TEST_TIMEOUT) $(MPIEXEC) $(MPIEXEC_FLAGS) -n 2 sh -c \
	    'if [ "$${PMI_RANK:-0}" = 0 ]; then exec "$$@"; fi; \
	     out=$$("$$@" 2>&1); rc=$$?; [ $$rc -eq 0 ] || printf "rank %s:\n%s\n" "$$PMI_RANK" "$$out"; exit $$rc' \
	    sh $(PY) -m pytest -m mpi -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no mpi tests: failing" >&2; fi; \
	exit $$rc

# The gpu-marked tests once more, on tests/gpu_emulator: a strict NumPy stand-in for CuPy that
# refuses every host/device mix a real GPU would refuse (no GPU needed; no GPU numbers either).
test-gpu-emulated: venv
	@$(TEST_ENV) PYTHONPATH=$(ROOT)/tests/gpu_emulator $(PY) -m pytest -m gpu -q -p no:cacheprovider $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no gpu tests: failing" >&2; fi; \
	exit $$rc

# The MPI run goes first and the main run last, so that its summary (with its skip report)
# closes the output; all three always run, and any failing fails `make test`.
test: venv
	@$(MAKE) --no-print-directory test-mpi; mpi=$$?; \
	$(MAKE) --no-print-directory test-gpu-emulated; emu=$$?; \
	$(MAKE) --no-print-directory test-main; main=$$?; \
	if [ $$mpi -ne 0 ]; then echo "make test: the MPI run failed (exit $$mpi)" >&2; fi; \
	if [ $$emu -ne 0 ]; then echo "make test: the emulated GPU run failed (exit $$emu)" >&2; fi; \
	test $$mpi -eq 0 && test $$emu -eq 0 && test $$main -eq 0

# The paper's recipe (Sec. 4, App. E.2) at CPU size: a short PGD warm start, then PGPE on the
# DeepPoly robust loss.  Small sizes: dense DeepPoly runs at tens of network-images/s on 2 cores.
demo: venv
	$(PY) mpi_run.py --arch cnn3 --dataset mnist --relax pgd --eps 0.1 --epochs 1 --train-size 5000 \
	    --pgd-steps 5 --batch-size 64 --lr 3e-3 --cert-size 100 --seed 0 --out runs/demo-pgd
	$(PY) mpi_run.py --arch cnn3 --dataset mnist --relax deeppoly --optimizer pgpe --eps 0.1 \
	    --init-from runs/demo-pgd/checkpoint.h5 --train-size 256 --batch-size 32 --epochs 1 \
	    --popsize 16 --lr 5e-4 --cert-size 50 --seed 0 --out runs/demo-pgpe
	$(PY) -m gls_np inspect runs/demo-pgpe/checkpoint.h5
	$(PY) -m gls_np certify runs/demo-pgpe/checkpoint.h5 --n 100 --timeout 5

# `make demo` over RANKS ranks, with IBP: a data-parallel IBP warm start (GRAD splits each batch),
# then PGPE on IBP bounds (the population split between the ranks). Same command lines as one process.
demo-mpi: venv
	$(MPIEXEC) $(MPIEXEC_FLAGS) -n $(RANKS) $(PY) mpi_run.py --arch cnn3 --dataset mnist --relax ibp \
	    --optimizer grad --eps 0.1 --eps-warmup 0.2 --eps-ramp 0.6 --init ibp --train-size 10000 \
	    --batch-size 64 --lr 3e-3 --epochs 1 --cert-size 100 --seed 0 --out runs/demo-mpi-grad
	$(MPIEXEC) $(MPIEXEC_FLAGS) -n $(RANKS) $(PY) mpi_run.py --arch cnn3 --dataset mnist --relax ibp \
	    --optimizer pgpe --eps 0.1 --init-from runs/demo-mpi-grad/checkpoint.h5 --train-size 1024 \
	    --batch-size 64 --epochs 1 --popsize 32 --lr 5e-4 --cert-size 100 --seed 0 --out runs/demo-mpi
	$(PY) -m gls_np inspect runs/demo-mpi/checkpoint.h5

demo-ce: venv
	$(PY) mpi_run.py --arch cnn3 --dataset mnist --relax none --optimizer grad --epochs 1 \
	    --batch-size 32 --lr 3e-3 --seed 0 --out runs/demo
	$(PY) -m gls_np inspect runs/demo/checkpoint.h5

bench: venv
	$(PY) benchmarks/run.py

bench-mpi: venv
	$(PY) benchmarks/run.py --only mpi --archs cnn3

# No venv: a GPU machine has CuPy in its own Python and is often offline (see the script).
GPU_OUT ?= benchmarks/results
gpu-check:
	sh benchmarks/gpu_check.sh $(GPU_OUT)

clean:
	rm -rf build dist *.egg-info .pytest_cache .hypothesis runs/demo runs/demo-pgd runs/demo-pgpe runs/demo-mpi-grad runs/demo-mpi
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
