"""tests/gpu_emulator: the strict NumPy stand-in for CuPy keeps CuPy's rules.

Each check runs in a subprocess with the emulator first on the path, as
``make test-gpu-emulated`` runs the gpu tests, so this process never imports it as cupy.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_emulated(code: str) -> str:
    """Run ``code`` with ``import cupy`` resolving to the emulator; return its stdout."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "tests" / "gpu_emulator"), str(ROOT)])
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


REFUSED = [
    "numpy.asarray(d)",
    "memoryview(d)",
    "d + h",
    "h + d",
    "h * d",
    "cupy.matmul(d, h)",
    "cupy.concatenate([d, h])",
    "numpy.concatenate([d, h])",
    "cupy.maximum(d, numpy.array(0.0))",
    "d.__iadd__(h)",
    "d.__setitem__(slice(None), h)",
    "range(cupy.asarray(3))",
    "cupy.float32(d.sum())",
]


@pytest.mark.parametrize("expr", REFUSED)
def test_host_and_device_arrays_do_not_mix(expr):
    out = run_emulated(
        f"""
        import numpy, cupy
        d, h = cupy.ones((2, 3)), numpy.ones((2, 3))
        try:
            {expr}
        except TypeError:
            print("refused")
        """
    )
    assert out.strip() == "refused"


def test_allowed_crossings_and_cupy_results():
    out = run_emulated(
        """
        import numpy, cupy
        h = numpy.arange(6.0).reshape(2, 3)
        d = cupy.asarray(h)
        h[0, 0] = 100.0  # asarray copied: the device array keeps 0
        assert float(d[0, 0]) == 0.0
        s = d.sum()
        assert type(s) is cupy.ndarray and s.shape == () and float(s) == 15.0
        assert type(d[1, 2]) is cupy.ndarray
        assert type(d.get()) is numpy.ndarray and type(cupy.asnumpy(d)) is numpy.ndarray
        d[numpy.array([0, 1]), numpy.array([2, 2])] = numpy.array([7.0, 8.0])  # host indices
        cupy.add.at(d, (numpy.array([0, 0]), numpy.array([1, 1])), 1.0)
        assert d.get().tolist() == [[0.0, 3.0, 7.0], [3.0, 4.0, 8.0]]
        assert type(numpy.concatenate([d, d])) is cupy.ndarray  # NumPy dispatches to CuPy
        assert 2.0 * d is not None and (d > 1).any()
        print("ok")
        """
    )
    assert out.strip() == "ok"


def test_names_missing_from_cupy_are_missing():
    out = run_emulated(
        """
        import cupy
        for get in (lambda: cupy.fromregex, lambda: cupy.random_thing, lambda: cupy.ones(2).resize):
            try:
                get()
            except AttributeError:
                print("missing")
        assert not hasattr(cupy.ones(2), "__index__")
        """
    )
    assert out.split() == ["missing"] * 3


def test_counts_transfers_and_pool_bytes():
    out = run_emulated(
        """
        import cupy
        pool = cupy.get_default_memory_pool()
        a = cupy.zeros((1000, 250), dtype="float32")
        v = a.reshape(-1)
        assert pool.used_bytes() == 10**6 and pool.total_bytes() == 10**6
        del a, v
        assert pool.used_bytes() == 0 and pool.total_bytes() == 10**6
        n = cupy.transfers["count"]
        b = cupy.ones(3)
        b.get(); float(b[0]); bool(b[1] > 0); b.tolist()
        print(cupy.transfers["count"] - n)
        """
    )
    assert out.strip() == "4"


def test_gls_np_backend_on_emulated_arrays():
    # a CuPy array's .data is a device pointer: to_host once mistook it for a Tensor's data
    out = run_emulated(
        """
        import numpy, cupy
        from gls_np import backend
        from gls_np.tensor import Tensor
        d = cupy.arange(4.0)
        assert backend.is_cupy(d) and backend.get_xp(d) is cupy
        assert backend.get_xp(Tensor(d)) is cupy and backend.get_xp(numpy.ones(2)) is numpy
        h = backend.to_host(d)
        assert type(h) is numpy.ndarray and h.tolist() == [0.0, 1.0, 2.0, 3.0]
        assert backend.to_host(Tensor(d)).tolist() == h.tolist()
        print("ok")
        """
    )
    assert out.strip() == "ok"
