"""Shared fixtures and hooks for the gls_np test suite.

Fixtures
--------
rng         numpy Generator seeded from a stable hash of the test's node id
xp          the array module, parametrised over numpy and cupy (cupy: marked ``gpu``)
shared_dir  path to the project's shared folder (env ``GLS_NP_SHARED`` or ``<repo>/../shared``)

Markers (declared in pyproject.toml)
------------------------------------
gpu   skipped unless CuPy imports and a CUDA device exists; with tests/gpu_emulator first on
      the path (``make test-gpu-emulated``) they run on its strict NumPy stand-in for CuPy
mpi   run by ``make test`` under ``mpiexec -n 2``; skipped when not launched by mpiexec
slow  informational; deselect with ``-m "not slow"``

Tests may import numpy directly (only package modules go through ``gls_np.backend``).
This file deliberately does not import gls_np, so collection works while it changes.
"""

from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path

import numpy as np
import pytest


def _stable_seed(text: str) -> int:
    """A seed that depends only on ``text`` (unlike ``hash()``, which is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little")


@functools.cache
def _gpu_skip_reason() -> str | None:
    """Why GPU tests cannot run here, or None when CuPy and a CUDA device are available."""
    try:
        import cupy
    except Exception as exc:  # ImportError, or a broken CUDA install raising on import
        return f"cupy not importable ({type(exc).__name__}: {exc})"
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # cupy.cuda.runtime.CUDARuntimeError without a driver
        return f"no CUDA device ({type(exc).__name__}: {exc})"
    if count < 1:
        return "no CUDA device"
    return None


def _gpu_kind() -> str:
    """How the gpu tests run here: on a GPU, on the NumPy emulator, or not at all (why)."""
    reason = _gpu_skip_reason()
    if reason is not None:
        return f"unavailable: {reason}"
    import cupy

    if getattr(cupy, "EMULATED", False):
        return "EMULATED on NumPy (tests/gpu_emulator: CuPy's rules, no GPU)"
    return "available"


def _mpi_world_size() -> int:
    """World size when launched by mpiexec (MPICH/Hydra or Open MPI), else 1."""
    for var in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE"):
        if var in os.environ:
            try:
                return int(os.environ[var])
            except ValueError:
                pass
    return 1


def pytest_report_header(config):
    gpu = _gpu_kind()
    mirror = os.environ.get("GLS_NP_DATA_MIRROR", "<unset>")
    return [
        f"gls_np: numpy {np.__version__}; gpu {gpu}",
        f"gls_np: mpi world size {_mpi_world_size()}; GLS_NP_DATA_MIRROR={mirror}",
    ]


def pytest_collection_modifyitems(config, items):
    gpu_reason = None
    world = _mpi_world_size()
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            if gpu_reason is None:
                gpu_reason = _gpu_skip_reason() or ""
            if gpu_reason:
                item.add_marker(pytest.mark.skip(reason=f"gpu test: {gpu_reason}"))
        if item.get_closest_marker("mpi") is not None and world < 2:
            item.add_marker(
                pytest.mark.skip(reason="mpi test: run under `mpiexec -n 2` (make test does)")
            )


@pytest.fixture
def rng(request) -> np.random.Generator:
    """Generator seeded per test from its node id: reproducible, independent across tests."""
    return np.random.default_rng(_stable_seed(request.node.nodeid))


@pytest.fixture(
    params=[
        pytest.param("numpy", id="numpy"),
        pytest.param("cupy", id="cupy", marks=pytest.mark.gpu),
    ]
)
def xp(request):
    """The array module under test: numpy, or cupy (gpu-marked, skipped without a GPU)."""
    if request.param == "numpy":
        return np
    cupy = pytest.importorskip("cupy")
    reason = _gpu_skip_reason()
    if reason is not None:
        pytest.skip(f"gpu test: {reason}")
    return cupy


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The project's shared folder (datasets, reference numbers); skips the test if absent."""
    env = os.environ.get("GLS_NP_SHARED")
    path = Path(env) if env else Path(__file__).resolve().parents[2] / "shared"
    if not path.is_dir():
        pytest.skip(f"shared folder not found at {path} (set GLS_NP_SHARED)")
    return path
