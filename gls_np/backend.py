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

import ctypes
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


def _array(a: Array) -> Array:
    """The array under a Tensor (its ``data``), or ``a`` itself.

    Arrays have a ``data`` attribute too (NumPy's a buffer, CuPy's a device pointer),
    so only what is neither is unwrapped.
    """
    if isinstance(a, np.ndarray) or is_cupy(a):
        return a
    return getattr(a, "data", a)


def get_xp(*arrays: Array):
    """The array module owning ``arrays``: cupy if any is a CuPy array, else numpy.

    Tensors are unwrapped through their ``data`` attribute.
    """
    for a in arrays:
        if is_cupy(_array(a)):
            return _cupy()
    return np


def to_host(a: Array) -> np.ndarray:
    """A NumPy copy (or view) of ``a``, wherever it lives."""
    a = _array(a)
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


def free_memory_bytes() -> int:
    """Bytes free for new arrays on the selected device (``device()``).

    CPU: the kernel's MemAvailable (free memory plus the page cache it can reclaim), from
    /proc/meminfo; where there is no /proc, the free physical pages (``os.sysconf``).
    GPU: the current device's free memory plus the blocks CuPy's pool holds unused.
    """
    if device() == "gpu":
        cupy = _cupy()
        free, _ = cupy.cuda.Device().mem_info
        return int(free + cupy.get_default_memory_pool().free_bytes())
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def tune_allocator(keep_bytes: int = 1 << 31) -> bool:
    """Make the C allocator keep freed memory for reuse instead of unmapping it (glibc).

    By default every temporary over 32 MiB (and, until glibc adapts, over 128 KiB)
    is a fresh mmap whose pages fault in on first touch, each zeroed by the kernel:
    on the convolution and bound workloads that costs as much as the arithmetic.
    Raising malloc's mmap and trim thresholds to ``keep_bytes`` lets freed blocks
    be reused; the process keeps its peak memory mapped. Call it once at start-up
    from an entry point (the training CLI, the benchmarks): importing gls_np never
    does. Env GLS_NP_MALLOC=default leaves the allocator alone. Returns True when
    applied, False where skipped or there is no glibc (harmless: only speed changes).
    """
    if os.environ.get("GLS_NP_MALLOC", "tuned") == "default":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3
    # older glibc caps the mmap threshold at 32 MiB; take the cap if the larger value is refused
    if not libc.mallopt(m_mmap_threshold, keep_bytes):
        libc.mallopt(m_mmap_threshold, 32 << 20)
    return bool(libc.mallopt(m_trim_threshold, keep_bytes) and libc.mallopt(m_top_pad, 64 << 20))


def contiguous(a: Array, block: int = 64) -> Array:
    """Return a C-contiguous copy of ``a`` (``a`` itself when it already is one).

    On NumPy, a transposed view (a strided last axis) is copied ``block`` columns at a
    time: each source cache line then serves ``block`` values before it is evicted,
    2-3x faster than one copy on arrays beyond the cache. On CuPy it is one copy (each
    block would be one more kernel launch). Shapes: unchanged.
    """
    xp = get_xp(a)
    one_copy = a.nbytes < (1 << 20) or is_cupy(a)
    if a.flags.c_contiguous or one_copy or a.strides[-1] == a.itemsize:
        return xp.ascontiguousarray(a)
    out = xp.empty(a.shape, dtype=a.dtype)
    for j in range(0, a.shape[-1], block):
        out[..., j : j + block] = a[..., j : j + block]
    return out


def _taps(n_in: int, n_out: int, k: int, stride: int, padding: int) -> list:
    """List, per kernel offset i, the outputs whose tap reads inside the image.

    Returns (lo, hi, start) per i: the outputs lo..hi-1 whose input index
    stride * o + i - padding lies in [0, n_in), and the input index of output lo.
    Padding is handled by these ranges instead of a padded copy of the input.
    """
    taps = []
    for i in range(k):
        lo = max(0, -((i - padding) // stride))
        hi = max(lo, min(n_out, (n_in - 1 + padding - i) // stride + 1))
        taps.append((lo, hi, stride * lo + i - padding))
    return taps


def _spatial(shape, trailing: int, kh: int, kw: int, stride: int, padding: int):
    """(H, W, Ho, Wo) of the spatial axes that sit ``trailing`` axes from the end."""
    H, W = shape[len(shape) - 2 - trailing : len(shape) - trailing]
    Ho = (H + 2 * padding - kh) // stride + 1
    Wo = (W + 2 * padding - kw) // stride + 1
    if Ho <= 0 or Wo <= 0:
        raise ValueError(
            f"kernel {kh}x{kw} larger than padded input {H + 2 * padding}x{W + 2 * padding}"
        )
    return H, W, Ho, Wo


def _band(tap: tuple, r0: int, r1: int, stride: int) -> tuple:
    """Restrict a tap's (lo, hi, start) to the output rows [r0, r1)."""
    lo, hi, start = tap
    blo = min(max(lo, r0), r1)
    return blo, max(min(hi, r1), blo), start + stride * (blo - lo)


def windows(
    x: Array,
    kh: int,
    kw: int,
    stride: int,
    padding: int,
    trailing: int = 0,
    rows: tuple | None = None,
    out: Array | None = None,
) -> Array:
    """Sliding windows of an image array (im2col without the final reshape).

    Shapes: x (*lead, H, W, *trail) -> (*lead, kh, kw, Ho, Wo, *trail), with
    Ho = (H + 2 padding - kh) // stride + 1 (same for Wo) and ``trailing`` = len(trail);
    for NCHW, lead ends in C and trail is empty. ``rows=(r0, r1)`` takes only the
    windows of output rows r0..r1-1 (a band: r1 - r0 rows instead of Ho), and
    ``out`` is an array of the result's shape to write into (a reused block buffer).
    Built from kh*kw strided slice copies (plus zeroed borders where a window
    overhangs the padding). With the batch as a trailing axis (``trailing=1``), every
    copy moves contiguous runs of the whole batch, which is what makes the
    convolutions of ``ops`` fast. On CuPy, where each copy is a kernel launch, it is
    one copy of a strided view of the zero-padded image instead (``_windows_view``).
    """
    xp = get_xp(x)
    H, W, Ho, Wo = _spatial(x.shape, trailing, kh, kw, stride, padding)
    r0, r1 = (0, Ho) if rows is None else rows
    lead, trail = x.shape[: x.ndim - 2 - trailing], x.shape[x.ndim - trailing :]
    shape = (*lead, kh, kw, r1 - r0, Wo, *trail)
    if out is None:
        out = xp.empty(shape, dtype=x.dtype)
    elif tuple(out.shape) != shape:
        raise ValueError(f"windows: out must have shape {shape}, got {tuple(out.shape)}")
    if is_cupy(x):
        out[...] = _windows_view(x, kh, kw, stride, padding, trailing, (r0, r1))
        return out
    tail = (slice(None),) * trailing
    n = r1 - r0
    wtaps = _taps(W, Wo, kw, stride, padding)
    for i, tap in enumerate(_taps(H, Ho, kh, stride, padding)):
        a0, a1, h0 = _band(tap, r0, r1, stride)
        a0, a1 = a0 - r0, a1 - r0
        for j, (b0, b1, w0) in enumerate(wtaps):
            o = out[(Ellipsis, i, j, slice(None), slice(None), *tail)]
            if a1 > a0 and b1 > b0:
                rs = slice(h0, h0 + stride * (a1 - a0 - 1) + 1, stride)
                cs = slice(w0, w0 + stride * (b1 - b0 - 1) + 1, stride)
                o[(Ellipsis, slice(a0, a1), slice(b0, b1), *tail)] = x[(Ellipsis, rs, cs, *tail)]
            # the zero padding: outputs whose window tap falls outside the image
            for rs, cs, empty in (
                (slice(0, a0), slice(None), a0 == 0),
                (slice(a1, n), slice(None), a1 == n),
                (slice(a0, a1), slice(0, b0), a1 == a0 or b0 == 0),
                (slice(a0, a1), slice(b1, Wo), a1 == a0 or b1 == Wo),
            ):
                if not empty:
                    o[(Ellipsis, rs, cs, *tail)] = 0
    return out


def _windows_view(
    x: Array, kh: int, kw: int, stride: int, padding: int, trailing: int, rows: tuple
) -> Array:
    """``windows`` of output rows [r0, r1) as a strided view of the zero-padded image.

    Shapes: x (*lead, H, W, *trail) -> view (*lead, kh, kw, r1 - r0, Wo, *trail). Two
    kernels on a GPU (the padding and the caller's copy), where ``windows``' slice copies
    are k^2 or more; on a CPU those slice copies run faster than one copy of this view.
    """
    xp = get_xp(x)
    hax = x.ndim - 2 - trailing
    _, _, _, Wo = _spatial(x.shape, trailing, kh, kw, stride, padding)
    r0, r1 = rows
    if padding:
        width = [(0, 0)] * x.ndim
        width[hax] = width[hax + 1] = (padding, padding)
        x = xp.pad(x, width)
    x = x[(slice(None),) * hax + (slice(r0 * stride, None),)]
    view = _sliding(x, hax, kh, kw, stride, (r1 - r0, Wo))
    return xp.moveaxis(view, (hax + 2, hax + 3), (hax, hax + 1))


def _sliding(x: Array, hax: int, kh: int, kw: int, stride: int, out_hw: tuple) -> Array:
    """View the (kh, kw) windows at ``stride`` of the spatial axes hax, hax + 1 (no copy).

    Shapes: x (*lead, H, W, *trail) -> (*lead, Ho, Wo, kh, kw, *trail) with (Ho, Wo) =
    ``out_hw``; window (i, j) starts at x[..., i stride, j stride, ...]. The caller makes
    sure every window lies inside x.
    """
    sh, sw = x.strides[hax : hax + 2]
    shape = (*x.shape[:hax], *out_hw, kh, kw, *x.shape[hax + 2 :])
    strides = (*x.strides[:hax], sh * stride, sw * stride, sh, sw, *x.strides[hax + 2 :])
    return get_xp(x).lib.stride_tricks.as_strided(x, shape, strides)


def unwindows(
    cols: Array,
    H: int,
    W: int,
    stride: int,
    padding: int,
    trailing: int = 0,
    rows: tuple | None = None,
    out: Array | None = None,
) -> Array:
    """Adjoint of ``windows``: scatter-add windows back onto the image (col2im).

    Shapes: cols (*lead, kh, kw, Ho, Wo, *trail) -> (*lead, H, W, *trail).
    Math: <windows(x), cols> = <x, unwindows(cols)> for all x.
    Taps that read the padding are dropped, so the sum lands on the unpadded image.
    ``rows=(r0, r1)`` says that cols holds only the windows of output rows r0..r1-1
    (a band of ``windows``), and ``out`` is a zero-initialised image they are added
    into (so a band at a time accumulates the whole adjoint).
    """
    xp = get_xp(cols)
    nd = cols.ndim - trailing
    kh, kw, n, Wo = cols.shape[nd - 4 : nd]
    r0, r1 = (0, n) if rows is None else rows
    if r1 - r0 != n:
        raise ValueError(f"unwindows: cols hold {n} rows of windows, rows={rows}")
    lead, trail = cols.shape[: nd - 4], cols.shape[nd:]
    if out is None:
        out = xp.zeros((*lead, H, W, *trail), dtype=cols.dtype)
    tail = (slice(None),) * trailing
    # windows no larger than the stride never overlap: plain copies, no additions
    overlap = kh > stride or kw > stride
    wtaps = _taps(W, Wo, kw, stride, padding)
    for i, tap in enumerate(_taps(H, r1, kh, stride, padding)):
        a0, a1, h0 = _band(tap, r0, r1, stride)
        for j, (b0, b1, w0) in enumerate(wtaps):
            if a1 > a0 and b1 > b0:
                rs = slice(h0, h0 + stride * (a1 - a0 - 1) + 1, stride)
                cs = slice(w0, w0 + stride * (b1 - b0 - 1) + 1, stride)
                tap_cols = cols[(Ellipsis, i, j, slice(a0 - r0, a1 - r0), slice(b0, b1), *tail)]
                if overlap:
                    out[(Ellipsis, rs, cs, *tail)] += tap_cols
                else:
                    out[(Ellipsis, rs, cs, *tail)] = tap_cols
    return out


def patch_view(x: Array, p: int, stride: int, rows_hw: tuple) -> Array:
    """View the (p, p) window of every row position of a map, without a copy (never written).

    Shapes: x (..., C, H, W) -> (..., C, Hk, Wk, p, p) with (Hk, Wk) = ``rows_hw``;
    window (i, j) is x[..., i stride : i stride + p, j stride : j stride + p].
    The caller pads x so that every window lies inside it (H >= (Hk - 1) stride + p).
    """
    Hk, Wk = rows_hw
    H, W = x.shape[-2:]
    if (Hk - 1) * stride + p > H or (Wk - 1) * stride + p > W:
        raise ValueError(f"patch_view: {Hk}x{Wk} windows of {p} at stride {stride} overrun {H}x{W}")
    return _sliding(x, x.ndim - 2, p, p, stride, rows_hw)


# a sorted index with at most this many distinct values is summed one run at a time
_MAX_RUNS = 4096


def scatter_add(g: Array, idx: Array, n: int) -> Array:
    """Sum the rows of ``g`` into ``n`` rows at ``idx``: the adjoint of ``a[idx]``.

    Shapes: g (len(idx), ...), idx (len(idx),) integer in [0, n) -> (n, ...).
    A strictly increasing index is a plain assignment; on NumPy a sorted one with few
    distinct values (rows grouped by sample) sums each run of equal entries as a
    slice, far faster than ``add.at``, which is the general case (and CuPy's only one:
    one atomic kernel there, where each run would be a launch).
    """
    xp = get_xp(g, idx)
    out = xp.zeros((n, *g.shape[1:]), dtype=g.dtype)
    if len(idx) == 0:
        return out
    step = idx[1:] - idx[:-1]
    if bool((step > 0).all()):
        out[idx] = g
        return out
    if not is_cupy(g) and bool((step >= 0).all()):
        starts = to_host(xp.flatnonzero(step)) + 1
        if len(starts) < _MAX_RUNS:
            bounds = [0, *starts.tolist(), len(idx)]
            rows = to_host(idx[bounds[:-1]]).tolist()
            for row, s, e in zip(rows, bounds[:-1], bounds[1:]):
                g[s:e].sum(axis=0, keepdims=True, out=out[row : row + 1])
            return out
    # ufunc.at on both backends: CuPy has add.at (since v12) and deprecates cupyx.scatter_add
    xp.add.at(out, idx, g)
    return out
