"""A strict stand-in for CuPy on NumPy: runs gls_np's GPU path on a machine without a GPU.

Not CuPy and not a GPU: every array is a NumPy array inside a ``cupy.ndarray`` wrapper, so
the numbers are NumPy's and no timing means anything. What it checks is what breaks first
when code written on NumPy meets a real GPU, with CuPy 14's rules:

- a device array never turns into a host array implicitly: ``numpy.asarray(a)``, h5py,
  mpi4py and the buffer protocol raise TypeError (``a.get()`` or ``cupy.asnumpy`` copy);
- a host array (``numpy.ndarray``, 0-d included) never enters a device operation: ufuncs,
  functions and in-place operators raise TypeError; Python and NumPy scalars are fine, and
  so are host index arrays, which CuPy copies to the device;
- reductions and integer indexing give 0-d device arrays, not scalars, and a device array
  cannot be a Python index (no ``__index__``: not as a shape or an axis either);
- ``a.data`` is a device pointer, not a buffer;
- only the names CuPy 14.2 has exist: its top-level functions that NumPy also has
  (``_NAMES``) and its ``ndarray`` methods (``_METHODS``), each with CuPy's keywords
  (``signatures.json``); ``ufunc.reduce`` and ``accumulate`` only for add and multiply,
  ``ufunc.at`` only for add, subtract, maximum, minimum and the bitwise ones, on CuPy's dtypes;
- a basic slice is assigned a scalar (a 0-d host array too) or a device array, never a
  host array or list (CuPy's ``fill`` raises ValueError).

Put this folder first on the path to use it (``make test-gpu-emulated``):
``PYTHONPATH=tests/gpu_emulator python -m pytest -m gpu``. Then ``import cupy`` anywhere,
in subprocesses too, gets this module, and ``cupy.EMULATED`` is True.
"""

from __future__ import annotations

import json
import os
import sys
import types
import weakref
from pathlib import Path

import numpy

EMULATED = True
__version__ = "14.2.0 (NumPy emulator)"

# device -> host copies so far (each one waits for the GPU's queued work): get, asnumpy,
# item, tolist, and bool, int, float, complex or format of a device array
transfers = {"count": 0}
# device operations so far, each a kernel launch on a GPU: every ufunc call, every function
# or method whose result is new memory (a view is no launch, nor is an empty array), every
# gather and every slice assignment
launches = {"count": 0}


def _to_host(a):
    """Count one device-to-host copy (of ``a``, or of a size CuPy reads); return ``a``."""
    transfers["count"] += 1
    return a


def _launched(r, args=()):
    """Count ``r`` as a launch unless it is a view of one of the NumPy arrays in ``args``."""
    first = r[0] if isinstance(r, (tuple, list)) and r else r
    if isinstance(first, numpy.ndarray) and any(
        isinstance(a, numpy.ndarray) and numpy.may_share_memory(first, a) for a in _flat(args)
    ):
        return r
    launches["count"] += 1
    return r


def _flat(args):
    for a in args:
        if isinstance(a, (list, tuple)):
            yield from _flat(a)
        else:
            yield a


# CuPy 14.2's top-level names that NumPy 2 also has (dir(cupy), its submodules aside)
_NAMES = frozenset(
    """abs absolute acos acosh add all allclose amax amin angle any append apply_along_axis
    apply_over_axes arange arccos arccosh arcsin arcsinh arctan arctan2 arctanh argmax argmin
    argpartition argsort argwhere around array array2string array_equal array_equiv
    array_repr array_split array_str asanyarray asarray asarray_chkfinite ascontiguousarray
    asfortranarray asin asinh astype atan atan2 atanh atleast_1d atleast_2d atleast_3d average
    bartlett base_repr binary_repr bincount bitwise_and bitwise_count bitwise_invert
    bitwise_left_shift bitwise_not bitwise_or bitwise_right_shift bitwise_xor blackman bool
    bool_ broadcast broadcast_arrays broadcast_shapes broadcast_to byte c_ can_cast cbrt
    cdouble ceil choose clip column_stack common_type complex128 complex64 complexfloating
    compress concat concatenate conj conjugate convolve copy copysign copyto corrcoef
    correlate cos cosh count_nonzero cov cross csingle cumprod cumsum cumulative_prod
    cumulative_sum deg2rad degrees delete diag diag_indices diag_indices_from diagflat
    diagonal diff digitize divide divmod dot double dsplit dstack dtype e ediff1d einsum empty
    empty_like equal euler_gamma exp exp2 expand_dims expm1 extract eye fabs fill_diagonal
    finfo fix flatiter flatnonzero flip fliplr flipud float16 float32 float64 float_power
    floating floor floor_divide fmax fmin fmod format_float_positional
    format_float_scientific frexp from_dlpack frombuffer fromfile fromfunction fromiter
    fromstring full full_like gcd generic genfromtxt get_printoptions gradient greater
    greater_equal half hamming hanning heaviside histogram histogram2d histogramdd hsplit
    hstack hypot i0 identity iinfo imag index_exp indices inexact inf inner int16 int32 int64
    int8 int_ intc integer interp intersect1d intp invert isclose iscomplex iscomplexobj
    isdtype isfinite isfortran isin isinf isnan isneginf isposinf isreal isrealobj isscalar
    issubdtype iterable ix_ kaiser kron lcm ldexp left_shift less less_equal lexsort linspace
    load loadtxt log log10 log1p log2 logaddexp logaddexp2 logical_and logical_not logical_or
    logical_xor logspace long longlong mask_indices matmul matrix_transpose max maximum
    may_share_memory mean median meshgrid mgrid min min_scalar_type minimum mintypecode mod
    modf moveaxis multiply nan nan_to_num nanargmax nanargmin nancumprod nancumsum nanmax
    nanmean nanmedian nanmin nanprod nanstd nansum nanvar ndim ndindex negative newaxis
    nextafter nonzero not_equal number ogrid ones ones_like outer packbits pad partition
    percentile permute_dims pi piecewise place poly poly1d polyadd polyfit polymul polysub
    polyval positive pow power printoptions prod promote_types ptp put put_along_axis putmask
    quantile r_ rad2deg radians ravel ravel_multi_index real real_if_close reciprocal
    remainder repeat require reshape resize result_type right_shift rint roll rollaxis roots
    rot90 round row_stack s_ save savetxt savez savez_compressed searchsorted select
    set_printoptions setdiff1d setxor1d shape shares_memory short show_config sign signbit
    signedinteger sin sinc single sinh size sort sort_complex split sqrt square squeeze stack
    std subtract sum swapaxes take take_along_axis tan tanh tensordot tile trace transpose
    trapezoid tri tril tril_indices tril_indices_from trim_zeros triu triu_indices
    triu_indices_from true_divide trunc typename ubyte ufunc uint uint16 uint32 uint64 uint8
    uintc uintp ulong ulonglong union1d unique unique_all unique_counts unique_inverse
    unique_values unpackbits unravel_index unsignedinteger unwrap ushort vander var vdot
    vectorize vsplit vstack where zeros zeros_like""".split()
)

# CuPy 14.2's public cupy.ndarray methods that NumPy's ndarray also has
_METHODS = frozenset(
    """all any argmax argmin argpartition argsort byteswap choose clip compress conj conjugate
    copy cumprod cumsum diagonal dot dump dumps fill flatten item max mean min nonzero
    partition prod ptp put ravel repeat reshape round searchsorted sort squeeze std sum
    swapaxes take tobytes tofile tolist trace transpose var view""".split()
)


_SIGNATURES = json.loads((Path(__file__).with_name("signatures.json")).read_text())


def _check_call(name, table, args, kwargs):
    """Raise TypeError, as CuPy does, for a keyword or an argument count its signature lacks."""
    sig = _SIGNATURES[table].get(name)
    if sig is None:
        return
    if not sig["varkw"]:
        unknown = sorted(set(kwargs) - set(sig["params"]))
        if unknown:
            raise TypeError(f"cupy {name}() got an unexpected keyword argument {unknown[0]!r}")
    if not sig["varpos"] and len(args) > len(sig["params"]):
        raise TypeError(f"cupy {name}() takes at most {len(sig['params'])} arguments")


# CuPy 14's ufunc methods beyond __call__ (others raise NotImplementedError)
_REDUCIBLE = {"add", "multiply"}
_AT = {"add", "subtract", "maximum", "minimum", "bitwise_and", "bitwise_or", "bitwise_xor"}
_AT_DTYPES = {
    "add": "int32 int64 float16 float32 float64 uint32 uint64",
    "maximum": "int32 int64 float32 float64 uint32 uint64",
    "minimum": "int32 int64 float32 float64 uint32 uint64",
}
_UFUNC_KEYWORDS = {"out", "dtype", "casting", "where"}
_COMPARISONS = {"equal", "not_equal", "less", "less_equal", "greater", "greater_equal"}


def _ufunc_method(uf, method, a=None):
    """Raise as CuPy does for a ufunc method it does not have (for ``a``'s dtype)."""
    if method in ("reduce", "accumulate") and uf.__name__ not in _REDUCIBLE:
        raise NotImplementedError(f"cupy {uf.__name__}.{method} is not supported")
    if method == "reduceat":
        raise NotImplementedError(f"cupy {uf.__name__}.reduceat is not supported")
    if method == "at":
        if uf.__name__ not in _AT:
            raise NotImplementedError(f"cupy {uf.__name__}.at is not supported")
        dtypes = _AT_DTYPES.get(uf.__name__)
        if dtypes and a is not None and a.dtype.name not in dtypes.split():
            raise TypeError(f"cupy {uf.__name__}.at does not support {a.dtype}")


def _refuse(what) -> TypeError:
    return TypeError(f"Unsupported type {type(what)} (emulated CuPy: a host array in a device op)")


class _NoIndex(numpy.ndarray):
    """A 0-d device integer inside NumPy: a CuPy array is no Python index (shape, axis)."""

    def __index__(self):
        raise TypeError("'ndarray' object cannot be interpreted as an integer")


def _device(x):
    """The NumPy array under a device array; host arrays refused; lists and tuples walked."""
    if isinstance(x, ndarray):
        if x._a.ndim == 0 and x._a.dtype.kind in "iu":
            return x._a.view(_NoIndex)
        return x._a
    if isinstance(x, numpy.ndarray):
        raise _refuse(x)
    if isinstance(x, (list, tuple)):
        return type(x)(_device(v) for v in x)
    return x


def _host0(x) -> bool:
    return isinstance(x, numpy.ndarray) and x.ndim == 0


def _plain(v):
    """A value CuPy copies to the device where needed (device arrays unwrapped)."""
    return v._a if isinstance(v, ndarray) else v


def _index(key):
    """An index into a device array: device arrays unwrapped, host index arrays allowed.

    A 0-d device integer as a slice bound is read on the host, as CuPy does (a transfer).
    """
    if isinstance(key, tuple):
        return tuple(_index(k) for k in key)
    if isinstance(key, slice):
        ends = (key.start, key.stop, key.step)
        return slice(*(int(b) if isinstance(b, ndarray) else b for b in ends))
    return key._a if isinstance(key, ndarray) else key


def _masked(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (ndarray, numpy.ndarray)) and k.dtype == bool for k in keys)


def _advanced(key) -> bool:
    keys = key if isinstance(key, tuple) else (key,)
    return any(isinstance(k, (ndarray, numpy.ndarray, list)) for k in keys)


def _wrap(r):
    """NumPy results as device arrays (NumPy scalars as 0-d arrays, as CuPy returns)."""
    if isinstance(r, numpy.ndarray):
        return ndarray._of(r if type(r) is numpy.ndarray else r.view(numpy.ndarray))
    if isinstance(r, numpy.generic):
        return ndarray._of(numpy.asarray(r))
    if isinstance(r, tuple):
        return tuple(_wrap(v) for v in r)
    if isinstance(r, list):
        return [_wrap(v) for v in r]
    return r


def _outs(kwargs):
    """Unwrap an ``out=`` argument (device arrays only) in place; return the caller's out."""
    out = kwargs.get("out")
    if out is None:
        return None
    kwargs["out"] = (
        tuple(_device_out(o) for o in out) if isinstance(out, tuple) else _device_out(out)
    )
    return out


def _device_out(o):
    if not isinstance(o, ndarray):
        raise _refuse(o)
    return o._a


class MemoryPointer:
    """A device pointer: what ``cupy.ndarray.data`` is (not a buffer)."""

    def __init__(self, a):
        self.ptr = a.__array_interface__["data"][0]


MemoryPointer.__module__ = "cupy.cuda.memory"


class _Flags:
    """CuPy's flags: only these three."""

    def __init__(self, a):
        self.c_contiguous = a.flags.c_contiguous
        self.f_contiguous = a.flags.f_contiguous
        self.owndata = a.flags.owndata

    def __getitem__(self, name):
        names = {"C_CONTIGUOUS": "c_contiguous", "F_CONTIGUOUS": "f_contiguous"}
        return getattr(self, names.get(name, "owndata" if name == "OWNDATA" else name))


class ndarray:
    """A device array: a NumPy array that refuses to mix with host arrays."""

    __slots__ = ("_a",)
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, shape, dtype=float, order="C"):
        self._a = numpy.empty(shape, dtype=dtype, order=order)
        _POOL._hold(self._a)

    @classmethod
    def _of(cls, a):
        out = object.__new__(cls)
        out._a = a
        _POOL._hold(a)
        return out

    # the boundary with the host
    def __array__(self, dtype=None, copy=None):
        raise TypeError(
            "Implicit conversion to a NumPy array is not allowed. "
            "Please use `.get()` to construct a NumPy array explicitly."
        )

    def get(self, stream=None, order="C", out=None):
        """A host copy."""
        if out is not None:
            if not isinstance(out, numpy.ndarray):
                raise TypeError("Only numpy.ndarray can be obtained from cupy.ndarray")
            if out.dtype != self.dtype or out.shape != self.shape:
                raise (TypeError if out.dtype != self.dtype else ValueError)(
                    f"out {out.dtype} {out.shape} does not match {self.dtype} {self.shape}"
                )
            out[...] = _to_host(self._a)
            return out
        return numpy.array(_to_host(self._a), order=order)

    def set(self, arr, stream=None):
        """Copy a host array in."""
        if not isinstance(arr, numpy.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        if arr.dtype != self.dtype:
            raise TypeError(f"{arr.dtype} cannot be set to a {self.dtype} cupy.ndarray")
        if arr.shape != self.shape:
            raise ValueError(f"Shape mismatch: {arr.shape} cannot be set to {self.shape}")
        self._a[...] = arr

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        _ufunc_method(ufunc, method, inputs[0] if method == "at" else None)
        if method == "__call__" and set(kwargs) - _UFUNC_KEYWORDS:
            raise TypeError(f"Wrong arguments {sorted(set(kwargs) - _UFUNC_KEYWORDS)}")
        if method == "__call__" and ufunc.__name__ in _COMPARISONS:
            # CuPy compares with a 0-d host array through its item() (numpy#12142)
            inputs = [x.item() if _host0(x) else x for x in inputs]
        if method == "at":
            args = [_device(inputs[0]), _index(inputs[1]), *(_plain(v) for v in inputs[2:])]
        else:
            args = [_device(x) for x in inputs]
        out = _outs(kwargs)
        kwargs = {k: v if k == "out" else _device(v) for k, v in kwargs.items()}
        r = _launched(getattr(ufunc, method)(*args, **kwargs))
        if method == "at":
            return None
        if out is not None:
            return out[0] if isinstance(out, tuple) and len(out) == 1 else out
        return _wrap(r)

    def __array_function__(self, func, types, args, kwargs):
        name = func.__name__
        if func.__module__.startswith("numpy.linalg"):
            known = hasattr(linalg, name)
        else:
            known = name in _NAMES
        if not known:
            return NotImplemented
        kwargs = dict(kwargs)
        out = _outs(kwargs)
        args = _device(args)
        r = func(*args, **{k: v if k == "out" else _device(v) for k, v in kwargs.items()})
        _launched(r, () if out is not None else args)
        return out if out is not None else _wrap(r)

    # attributes
    shape = property(lambda s: s._a.shape, lambda s, v: setattr(s._a, "shape", v), doc="The shape.")
    dtype = property(lambda s: s._a.dtype)
    ndim = property(lambda s: s._a.ndim)
    size = property(lambda s: s._a.size)
    strides = property(lambda s: s._a.strides)
    itemsize = property(lambda s: s._a.itemsize)
    nbytes = property(lambda s: s._a.nbytes)
    flags = property(lambda s: _Flags(s._a))
    T = property(lambda s: ndarray._of(s._a.T))
    mT = property(lambda s: ndarray._of(s._a.mT))
    real = property(lambda s: ndarray._of(s._a.real))
    imag = property(lambda s: ndarray._of(s._a.imag))
    base = property(lambda s: None if s._a.base is None else ndarray._of(s._a.base))
    data = property(lambda s: MemoryPointer(s._a))
    device = property(lambda s: cuda.Device(0))

    def __getattr__(self, name):
        if name not in _METHODS:
            raise AttributeError(f"'cupy.ndarray' object has no attribute '{name}'")
        if name == "ptp":  # NumPy 2 has the function only
            method = lambda *a, **k: numpy.ptp(self._a, *a, **k)  # noqa: E731
        else:
            method = getattr(_to_host(self._a) if name in ("item", "tolist") else self._a, name)
        lenient = name in ("take", "put")  # CuPy copies host indices to the device

        def call(*args, **kwargs):
            _check_call(name, "methods", args, kwargs)
            if name == "nonzero":
                _to_host(None)  # the count of nonzeros sizes the result
            args = [_index(a) if lenient else _device(a) for a in args]
            out = _outs(kwargs)
            r = method(*args, **{k: v if k == "out" else _device(v) for k, v in kwargs.items()})
            if name not in ("item", "tolist"):
                _launched(r if r is not None else (), () if out is not None else (self._a,))
            return out if out is not None else _wrap(r)

        return call

    def astype(self, dtype, order="K", casting=None, subok=None, copy=True):
        if casting is not None or subok is not None:
            raise TypeError("casting and subok are not supported yet (CuPy's astype)")
        return ndarray._of(_launched(self._a.astype(dtype, order=order, copy=copy), (self._a,)))

    # indexing
    def __getitem__(self, key):
        if _masked(key):
            _to_host(None)  # the mask's count sizes the result
        r = self._a[_index(key)]
        if isinstance(r, numpy.ndarray):
            _launched(r, (self._a,))
        return _wrap(r)

    def __setitem__(self, key, value):
        if not _advanced(key) and isinstance(value, (numpy.ndarray, list, tuple)):
            if not _host0(value):
                # CuPy fills a basic slice with a scalar only (ndarray.fill)
                raise ValueError("non-scalar numpy.ndarray cannot be used for fill")
            value = value.item()
        if _masked(key):
            _to_host(None)
        _launched(None)
        self._a[_index(key)] = value._a if isinstance(value, ndarray) else value

    def __len__(self):
        return len(self._a)

    def __iter__(self):
        return (_wrap(row) for row in self._a)

    # conversions to Python scalars (CuPy synchronises and copies one value)
    def __bool__(self):
        return bool(_to_host(self._a))

    def __float__(self):
        return float(_to_host(self._a))

    def __int__(self):
        return int(_to_host(self._a))

    def __complex__(self):
        return complex(_to_host(self._a))

    def __format__(self, spec):
        return format(_to_host(self._a), spec) if self._a.ndim == 0 else format(repr(self), spec)

    def __repr__(self):
        return repr(_to_host(self._a))

    def __str__(self):
        return str(_to_host(self._a))

    def __copy__(self):
        return ndarray._of(self._a.copy())

    def __deepcopy__(self, memo):
        return ndarray._of(self._a.copy())

    def __reduce__(self):
        return (_from_host, (self._a.copy(),))


def _from_host(a):
    return ndarray._of(a)


def _binary(ufunc, reflected=False, inplace=False):
    if inplace:
        return lambda s, o: ufunc(s, o, out=(s,))
    if reflected:
        return lambda s, o: ufunc(o, s)
    return lambda s, o: ufunc(s, o)


for _name, _uf in {
    "add": numpy.add,
    "sub": numpy.subtract,
    "mul": numpy.multiply,
    "truediv": numpy.true_divide,
    "floordiv": numpy.floor_divide,
    "mod": numpy.remainder,
    "pow": numpy.power,
    "matmul": numpy.matmul,
    "and": numpy.bitwise_and,
    "or": numpy.bitwise_or,
    "xor": numpy.bitwise_xor,
    "lshift": numpy.left_shift,
    "rshift": numpy.right_shift,
}.items():
    setattr(ndarray, f"__{_name}__", _binary(_uf))
    setattr(ndarray, f"__r{_name}__", _binary(_uf, reflected=True))
    if _name != "matmul":
        setattr(ndarray, f"__i{_name}__", _binary(_uf, inplace=True))
for _name, _uf in {
    "eq": numpy.equal,
    "ne": numpy.not_equal,
    "lt": numpy.less,
    "le": numpy.less_equal,
    "gt": numpy.greater,
    "ge": numpy.greater_equal,
}.items():
    setattr(ndarray, f"__{_name}__", _binary(_uf))
ndarray.__divmod__ = lambda s, o: numpy.divmod(s, o)
ndarray.__neg__ = lambda s: numpy.negative(s)
ndarray.__pos__ = lambda s: numpy.positive(s)
ndarray.__abs__ = lambda s: numpy.absolute(s)
ndarray.__invert__ = lambda s: numpy.invert(s)


class _Ufunc:
    """A NumPy ufunc that takes device arrays only (host index arrays allowed in ``at``)."""

    def __init__(self, uf):
        self._uf = uf
        self.__name__, self.nin, self.nout = uf.__name__, uf.nin, uf.nout

    def __call__(self, *args, **kwargs):
        if set(kwargs) - _UFUNC_KEYWORDS:
            raise TypeError(f"Wrong arguments {sorted(set(kwargs) - _UFUNC_KEYWORDS)}")
        out = _outs(kwargs)
        kwargs = {k: v if k == "out" else _device(v) for k, v in kwargs.items()}
        r = _launched(self._uf(*_device(args), **kwargs))
        if out is not None:
            return out[0] if isinstance(out, tuple) and len(out) == 1 else out
        return _wrap(r)

    def at(self, a, indices, b=None):
        if not isinstance(a, ndarray):
            raise _refuse(a)
        _ufunc_method(self._uf, "at", a)
        b = b._a if isinstance(b, ndarray) else b
        args = (indices,) if b is None else (_index(indices), b)
        _launched(self._uf.at(a._a, *args))

    def reduce(self, *args, **kwargs):
        _ufunc_method(self._uf, "reduce")
        out = _outs(kwargs)
        r = _launched(self._uf.reduce(*_device(args), **kwargs))
        return out if out is not None else _wrap(r)

    def accumulate(self, *args, **kwargs):
        _ufunc_method(self._uf, "accumulate")
        out = _outs(kwargs)
        r = _launched(self._uf.accumulate(*_device(args), **kwargs))
        return out if out is not None else _wrap(r)

    def outer(self, a, b, **kwargs):
        return _wrap(_launched(self._uf.outer(_device(a), _device(b), **kwargs)))


# functions whose result size CuPy reads from the device first (a transfer each)
_SIZED_ON_HOST = {"nonzero", "flatnonzero", "argwhere", "compress", "extract", "unique"}
# functions whose first argument CuPy takes only as a device array (a list, a Python or
# NumPy scalar raises: seen on the real 14.2 package)
_ARRAY_FIRST = set(
    """all any argmax argsort ascontiguousarray broadcast_to clip empty_like expand_dims
    flatnonzero max mean min moveaxis ones_like pad repeat reshape searchsorted sort sum
    swapaxes take take_along_axis where zeros_like""".split()
)
# functions whose second argument may be host indices (CuPy copies them over)
_INDEXED = {"take", "put", "take_along_axis", "put_along_axis"}


def _function(f, table="functions"):
    """A NumPy function that takes device arrays only and returns device arrays."""
    name = f.__name__

    def call(*args, **kwargs):
        _check_call(name, table, args, kwargs)
        if name in _ARRAY_FIRST and args and not isinstance(args[0], ndarray):
            raise TypeError(f"cupy.{name}: argument 1 must be a cupy.ndarray, not {type(args[0])}")
        v = args[1] if len(args) > 1 else kwargs.get("v")
        if name == "searchsorted" and isinstance(v, numpy.generic) and not isinstance(v, float):
            raise NotImplementedError("cupy.searchsorted: v must be a Python scalar or an array")
        if name in _SIZED_ON_HOST:
            _to_host(None)
        if name in _INDEXED and len(args) > 1 and isinstance(args[1], numpy.ndarray):
            args = (args[0], asarray(args[1]), *args[2:])
        out = _outs(kwargs)
        args = _device(args)
        r = f(*args, **{k: v if k == "out" else _device(v) for k, v in kwargs.items()})
        if name not in ("empty", "empty_like"):  # an allocation, no kernel
            _launched(r, () if out is not None else args)
        return out if out is not None else _wrap(r)

    call.__name__ = call.__qualname__ = name
    return call


# host <-> device: the only ways across
def asarray(a, dtype=None, order=None, copy=None, *, blocking=False):
    """``a`` on the device: a device array as is (or cast, or copied); anything else copied."""
    if isinstance(a, ndarray):
        if copy:
            return a.astype(a.dtype if dtype is None else dtype, copy=True)
        return a if dtype is None or a.dtype == dtype else a.astype(dtype)
    return ndarray._of(numpy.array(a, dtype=dtype, order=order or "K", copy=True))


def array(obj, dtype=None, copy=True, order="K", subok=False, ndmin=0, *, blocking=False):
    """A new device array (a copy of a device or host array)."""
    host = obj._a if isinstance(obj, ndarray) else obj
    return ndarray._of(numpy.array(host, dtype=dtype, copy=True, order=order, ndmin=ndmin))


def asnumpy(a, stream=None, order="C", out=None, *, blocking=True):
    """A host copy of a device array (a host array as is)."""
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return numpy.asarray(a, order=order)


class _MemoryPool:
    """The default memory pool, counting the bytes of the arrays that own their memory.

    As CuPy's pool keeps the blocks of freed arrays for reuse, ``total_bytes`` is the
    most held at once (no rounding to block sizes). Only what gls_np and its benchmark call.
    """

    def __init__(self):
        self._live, self._used, self._total = {}, 0, 0

    def _hold(self, a):
        if a.base is not None or id(a) in self._live:
            return
        self._live[id(a)] = a.nbytes
        self._used += a.nbytes
        self._total = max(self._total, self._used)
        weakref.finalize(a, self._release, id(a))

    def _release(self, key):
        self._used -= self._live.pop(key, 0)

    def used_bytes(self):
        return self._used

    def total_bytes(self):
        return self._total

    def free_bytes(self):
        return self._total - self._used


_POOL = _MemoryPool()


def get_default_memory_pool():
    """The device memory pool."""
    return _POOL


def _host_memory():
    page = os.sysconf("SC_PAGE_SIZE")
    return os.sysconf("SC_AVPHYS_PAGES") * page, os.sysconf("SC_PHYS_PAGES") * page


class _Device:
    """``cupy.cuda.Device``: one emulated device, 0, whose memory is the host's."""

    def __init__(self, device=None):
        self.id = 0 if device is None else int(getattr(device, "id", device))

    def use(self):
        if self.id != 0:
            raise runtime.CUDARuntimeError(f"cudaErrorInvalidDevice: device {self.id}")

    def synchronize(self):
        return None

    @property
    def mem_info(self):
        return _host_memory()


class CUDARuntimeError(RuntimeError):
    """CuPy's error for a failed CUDA runtime call."""


runtime = types.ModuleType("cupy.cuda.runtime")
runtime.CUDARuntimeError = CUDARuntimeError
runtime.getDeviceCount = lambda: 1
runtime.getDeviceProperties = lambda device: {
    "name": b"NumPy emulator (tests/gpu_emulator), not a GPU",
    "totalGlobalMem": _host_memory()[1],
}
memory = types.ModuleType("cupy.cuda.memory")
memory.MemoryPointer = MemoryPointer
cuda = types.ModuleType("cupy.cuda")
cuda.Device, cuda.runtime, cuda.memory = _Device, runtime, memory
cuda.MemoryPointer = MemoryPointer

stride_tricks = types.ModuleType("cupy.lib.stride_tricks")
stride_tricks.as_strided = lambda x, shape=None, strides=None: ndarray._of(
    numpy.lib.stride_tricks.as_strided(_device(x), shape, strides)
)
lib = types.ModuleType("cupy.lib")
lib.stride_tricks = stride_tricks

linalg = types.ModuleType("cupy.linalg")
for _name in (
    "cholesky cond cross det eig eigh eigvals eigvalsh inv lstsq matmul matrix_power "
    "matrix_rank matrix_transpose norm pinv qr slogdet solve svd tensorinv tensorsolve"
).split():
    setattr(linalg, _name, _function(getattr(numpy.linalg, _name), "linalg"))
linalg.LinAlgError = numpy.linalg.LinAlgError

for _mod in (cuda, runtime, memory, lib, stride_tricks, linalg):
    sys.modules[_mod.__name__] = _mod

_served: dict = {}


def __getattr__(name):
    """CuPy's top-level names: NumPy's, taking and giving device arrays."""
    if name not in _NAMES:
        raise AttributeError(f"module 'cupy' has no attribute '{name}'")
    if name not in _served:
        attr = getattr(numpy, name)
        if isinstance(attr, numpy.ufunc):
            attr = _Ufunc(attr)
        elif callable(attr) and not isinstance(attr, type):
            attr = _function(attr)
        _served[name] = attr
    return _served[name]
