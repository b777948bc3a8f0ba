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
    ("numpy.asarray(d)", "TypeError"),
    ("memoryview(d)", "TypeError"),
    ("d + h", "TypeError"),
    ("h + d", "TypeError"),
    ("h * d", "TypeError"),
    ("cupy.matmul(d, h)", "TypeError"),
    ("cupy.concatenate([d, h])", "TypeError"),
    ("numpy.concatenate([d, h])", "TypeError"),
    ("cupy.maximum(d, numpy.array(0.0))", "TypeError"),
    ("d.__iadd__(h)", "TypeError"),
    ("range(cupy.asarray(3))", "TypeError"),
    ("cupy.zeros((cupy.asarray(3), 2))", "TypeError"),
    ("d.sum(axis=cupy.asarray(1))", "TypeError"),
    ("cupy.float32(d.sum())", "TypeError"),
    # CuPy fills a basic slice with a scalar only
    ("d.__setitem__(slice(None), h)", "ValueError"),
    ("d.__setitem__(slice(None), [1.0, 2.0, 3.0])", "ValueError"),
    # what CuPy's ufuncs, functions and methods lack
    ("cupy.maximum.reduce(d)", "NotImplementedError"),
    ("cupy.multiply.at(d, (0, 0), 2.0)", "NotImplementedError"),
    ("cupy.add.at(d > 0, (0, 0), True)", "TypeError"),
    ("cupy.exp(d, order='C')", "TypeError"),
    ("d.sum(where=d > 0)", "TypeError"),
    ("d.max(initial=0.0)", "TypeError"),
    ("d.astype('float32', casting='unsafe')", "TypeError"),
    ("cupy.sum(d, initial=0.0)", "TypeError"),
    ("cupy.searchsorted(d[0], numpy.float32(1.0))", "NotImplementedError"),
    ("cupy.clip([1.0, 2.0], 0.0, 1.0)", "TypeError"),
    ("cupy.sum([1.0, 2.0])", "TypeError"),
    ("cupy.broadcast_to(2.0, (3,))", "TypeError"),
    ("d.set(numpy.ones((2, 3), dtype='float32'))", "TypeError"),
    ("d.flags.writeable", "AttributeError"),
]


@pytest.mark.parametrize("expr,error", REFUSED)
def test_what_cupy_refuses_is_refused(expr, error):
    out = run_emulated(
        f"""
        import numpy, cupy
        d, h = cupy.ones((2, 3)), numpy.ones((2, 3))
        try:
            {expr}
        except Exception as exc:
            print(type(exc).__name__)
        """
    )
    assert out.strip() == error


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
        # what CuPy takes from the host: 0-d arrays in comparisons and fills, host indices
        assert bool((d < numpy.array(100.0)).all())
        d[0] = numpy.array(5.0)
        assert d.get()[0].tolist() == [5.0, 5.0, 5.0]
        assert cupy.take(d, numpy.array([1]), axis=0).get().tolist() == [[3.0, 4.0, 8.0]]
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


def test_counts_launches_but_not_views():
    out = run_emulated(
        """
        import cupy
        a, n = cupy.ones((4, 4)), cupy.launches
        c = n["count"]
        a.T, a.reshape(16), cupy.moveaxis(a, 0, 1), a[1:], cupy.empty(3)
        views = n["count"] - c
        c = n["count"]
        a + 1, cupy.exp(a), a.sum(), a[cupy.asarray([0, 1])]
        a[0] = 2.0
        print(views, n["count"] - c)
        """
    )
    assert out.split() == ["0", "5"]


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
