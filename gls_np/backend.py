"""The one module that owns the array library.

Every other module gets its arrays through here: ``get_xp(*arrays)`` returns
the module (numpy or cupy) that owns the given arrays, ``default_xp()`` the one
selected for new arrays (``--device gpu`` or env ``GLS_NP_DEVICE=gpu`` selects
CuPy). ``np`` is plain NumPy, re-exported for host-side work at the I/O edges
(data files, checkpoints, logging) and for dtype objects.

CuPy is imported lazily, only when the GPU device is selected or a CuPy array
is seen, so importing gls_np never imports cupy.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

Array = Any

_DTYPES = {"float32": np.float32, "float64": np.float64}
_state = {"device": None}


def _cupy():
    try:
        import cupy
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "device 'gpu' needs CuPy: pip install 'gls_np[gpu]' (cupy-cuda12x)"
        ) from exc
    return cupy


def set_device(device: str) -> None:
    """Select the array library for new arrays: ``"cpu"`` (NumPy) or ``"gpu"`` (CuPy)."""
    if device not in ("cpu", "gpu"):
        raise ValueError(f"device must be 'cpu' or 'gpu', got {device!r}")
    if device == "gpu":
        _cupy()
    _state["device"] = device


def device() -> str:
    """The selected device: set_device's value, else env GLS_NP_DEVICE, else "cpu"."""
    if _state["device"] is None:
        env = os.environ.get("GLS_NP_DEVICE", "cpu").lower()
        set_device(env)
    return _state["device"]


def default_xp():
    """The array module new arrays are made with (numpy or cupy)."""
    return _cupy() if device() == "gpu" else np


def is_cupy(a: Array) -> bool:
    """True for a CuPy array (checked without importing cupy)."""
    return type(a).__module__.split(".")[0] == "cupy"


def get_xp(*arrays: Array):
    """The array module owning ``arrays``: cupy if any is a CuPy array, else numpy.

    Tensors are unwrapped through their ``data`` attribute.
    """
    for a in arrays:
        a = getattr(a, "data", a)
        if is_cupy(a):
            return _cupy()
    return np


def to_host(a: Array) -> np.ndarray:
    """A NumPy copy (or view) of ``a``, wherever it lives."""
    a = getattr(a, "data", a)
    if is_cupy(a):
        return a.get()
    return np.asarray(a)


def to_device(a: Array, dtype=None) -> Array:
    """``a`` as an array of the selected device, optionally cast to ``dtype``."""
    xp = default_xp()
    out = xp.asarray(a)
    if dtype is not None:
        out = out.astype(resolve_dtype(dtype), copy=False)
    return out


def resolve_dtype(dtype) -> np.dtype:
    """Accept ``"float32"``/``"float64"`` or a NumPy float dtype; return the dtype."""
    if isinstance(dtype, str):
        if dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {dtype!r}")
        return np.dtype(_DTYPES[dtype])
    dt = np.dtype(dtype)
    if dt not in (np.float32, np.float64):
        raise ValueError(f"dtype must be float32 or float64, got {dt}")
    return dt


def make_rng(seed: int | None) -> np.random.Generator:
    """The seeded host RNG a run draws from (PCG64); same seed, same stream on CPU and GPU."""
    return np.random.default_rng(seed)


def rng_state(rng: np.random.Generator) -> dict:
    """The generator's state as a JSON-able dict (for checkpoints)."""
    return rng.bit_generator.state


def set_rng_state(rng: np.random.Generator, state: dict) -> None:
    """Restore a state returned by ``rng_state``."""
    rng.bit_generator.state = state


def windows(x: Array, kh: int, kw: int, stride: int, padding: int) -> Array:
    """Sliding windows of an NCHW array (im2col without the final reshape).

    Shapes: x (*lead, C, H, W) -> (*lead, C, kh, kw, Ho, Wo), with
    Ho = (H + 2 padding - kh) // stride + 1 (same for Wo).
    Built from kh*kw strided slices (one copy), so it works unchanged on CuPy.
    """
    xp = get_xp(x)
    *lead, C, H, W = x.shape
    if padding:
        pad = [(0, 0)] * (x.ndim - 2) + [(padding, padding), (padding, padding)]
        x = xp.pad(x, pad)
    Hp, Wp = H + 2 * padding, W + 2 * padding
    Ho = (Hp - kh) // stride + 1
    Wo = (Wp - kw) // stride + 1
    if Ho <= 0 or Wo <= 0:
        raise ValueError(f"kernel {kh}x{kw} larger than padded input {Hp}x{Wp}")
    out = xp.empty((*lead, C, kh, kw, Ho, Wo), dtype=x.dtype)
    for i in range(kh):
        for j in range(kw):
            out[..., i, j, :, :] = x[
                ..., i : i + stride * (Ho - 1) + 1 : stride, j : j + stride * (Wo - 1) + 1 : stride
            ]
    return out


def unwindows(cols: Array, H: int, W: int, stride: int, padding: int) -> Array:
    """Adjoint of ``windows``: scatter-add windows back onto the image (col2im).

    Shapes: cols (*lead, C, kh, kw, Ho, Wo) -> (*lead, C, H, W).
    Math: <windows(x), cols> = <x, unwindows(cols)> for all x.
    """
    xp = get_xp(cols)
    *lead, C, kh, kw, Ho, Wo = cols.shape
    Hp, Wp = H + 2 * padding, W + 2 * padding
    out = xp.zeros((*lead, C, Hp, Wp), dtype=cols.dtype)
    for i in range(kh):
        for j in range(kw):
            out[
                ..., i : i + stride * (Ho - 1) + 1 : stride, j : j + stride * (Wo - 1) + 1 : stride
            ] += cols[..., i, j, :, :]
    if padding:
        out = out[..., padding : padding + H, padding : padding + W]
    return out
