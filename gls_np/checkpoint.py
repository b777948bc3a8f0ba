"""HDF5 checkpoints: a network, its run's config, optimiser and RNG state, and metric history.

One file per checkpoint, readable with plain h5py (the layout is documented key by key in
docs/checkpoint.md):

- group ``params``: one dataset per ``state_dict`` key, PyTorch layout (``0.weight`` OIHW);
- root attributes: ``format_version`` (1), ``layers`` (JSON layer specs), ``dtype``,
  ``input_shape`` (JSON, optional), ``arch``, ``dataset`` (optional), ``config`` (JSON),
  ``epoch``, ``step``, ``rng`` (JSON bit-generator state, optional);
- group ``optimizer`` (optional): the optimiser state tree, dicts as groups, arrays as
  datasets, scalars as attributes;
- dataset ``history``: one JSON string per epoch's metrics.

Saves are atomic: the file is written beside the target, fsynced and renamed onto it, so an
exception, Ctrl-C or crash during a save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import h5py

from .backend import np, rng_state, set_rng_state, to_host
from .model import Sequential, from_layers

FORMAT_VERSION = 1

PathLike = str | os.PathLike

# marks a group that stores a list or tuple (children named "0", "1", ...) rather than a dict
_SEQUENCE_ATTR = "__sequence__"
# attributes read back as these NumPy types came from Python scalars (or equal NumPy ones)
_PYTHON_SCALARS = (np.bool_, np.int64, np.float64)


class CheckpointError(ValueError):
    """A checkpoint that cannot be written or read; the message names the file and the problem."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """Everything in a checkpoint except the parameters (see ``load`` for those).

    Attributes
    ----------
    path : str
    format_version : int
    layers : list of dict
        Layer specs with PyTorch's argument names, as ``Sequential.layer_specs()`` gives.
    dtype : str
        ``"float32"`` or ``"float64"``: the dtype the parameters were saved in.
    input_shape : tuple or None
        Per-sample input shape ``(C, H, W)`` when the network knew it.
    arch, dataset : str or None
    config : dict
        The run's full config.
    epoch, step : int
    optimizer : dict, list, tuple or None
        Optimiser state tree (host NumPy arrays), None when none was saved.
    rng_state : dict or None
        ``bit_generator.state`` of the run's Generator, None when none was saved.
    history : list of dict
        Per-epoch metrics, oldest first.
    """

    path: str
    format_version: int
    layers: list
    dtype: str
    input_shape: tuple | None
    arch: str | None
    dataset: str | None
    config: dict
    epoch: int
    step: int
    optimizer: dict | list | tuple | None
    rng_state: dict | None
    history: list

    def restore_rng(self) -> np.random.Generator | None:
        """Return a Generator positioned where the saved one was (same bit generator), or None."""
        if self.rng_state is None:
            return None
        bit_generator = getattr(np.random, self.rng_state["bit_generator"])
        rng = np.random.Generator(bit_generator())
        set_rng_state(rng, self.rng_state)
        return rng


# ------------------------------------------------------------------ writing


def save(
    path: PathLike,
    net: Sequential,
    *,
    arch: str | None = None,
    dataset: str | None = None,
    config: Any = None,
    optimizer: Any = None,
    rng: np.random.Generator | Mapping | None = None,
    epoch: int = 0,
    step: int = 0,
    history: list | None = None,
) -> None:
    """Write ``net`` and the run's state to the HDF5 file ``path``, atomically.

    Parameters
    ----------
    path : str or PathLike
        Target file; its directory is created if needed.
    net : Sequential
    arch, dataset : str, optional
    config : dict or dataclass, optional
        The run's config, stored as JSON (NumPy scalars and paths are converted).
    optimizer : dict, list or tuple, optional
        Optimiser state: nested dicts (or lists/tuples) of arrays (NumPy or CuPy), scalars
        (bool, int, float, str, NumPy scalars) and None.
    rng : numpy.random.Generator or dict, optional
        The run's generator, or its ``bit_generator.state``.
    epoch, step : int
    history : list of dict, optional
        Per-epoch metrics.

    Notes
    -----
    Why it is safe: everything goes to a hidden temporary file in the target's directory,
    which is fsynced and then ``os.replace``d onto ``path`` (atomic on POSIX); on any
    exception, KeyboardInterrupt included, the temporary file is removed and ``path`` is
    untouched. A killed process can leave a stale ``.<name>.<hex>.tmp`` file behind.
    """
    path = Path(path)
    attrs = {
        "format_version": FORMAT_VERSION,
        "layers": _dumps(net.layer_specs(), "layers"),
        "dtype": net.dtype.name,
        "config": _dumps(_config_dict(config), "config"),
        "epoch": int(epoch),
        "step": int(step),
    }
    for key, value in (("arch", arch), ("dataset", dataset)):
        if value is not None:
            attrs[key] = str(value)
    if net.input_shape is not None:
        attrs["input_shape"] = _dumps(list(net.input_shape), "input_shape")
    if rng is not None:
        attrs["rng"] = _dumps(rng if isinstance(rng, Mapping) else rng_state(rng), "rng")
    if optimizer is not None and not isinstance(optimizer, (Mapping, list, tuple)):
        raise CheckpointError(
            f"optimizer state must be a dict, list or tuple, got {type(optimizer).__name__}"
        )
    entries = [_dumps(entry, "history") for entry in (history or [])]
    params = net.state_dict()

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.urandom(4).hex()}.tmp")
    try:
        with h5py.File(tmp, "w-") as f:
            f.attrs.update(attrs)
            group = f.create_group("params")
            for key, value in params.items():
                group.create_dataset(key, data=value)
            if optimizer is not None:
                _write_tree(f, "optimizer", optimizer, "optimizer")
            f.create_dataset("history", data=entries, dtype=h5py.string_dtype())
        _fsync(tmp)
        os.replace(tmp, path)
        _fsync(path.parent)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    """Flush a file's (or directory's) data to disk, so a rename never exposes a partial file."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _config_dict(config: Any) -> dict:
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return dataclasses.asdict(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise CheckpointError(f"config must be a dict or a dataclass, got {type(config).__name__}")


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return to_host(value).tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _dumps(value: Any, what: str) -> str:
    try:
        return json.dumps(value, default=_json_default)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot store {what} as JSON: {exc}") from None


def _write_tree(parent: h5py.Group, key: str, value: Any, where: str) -> None:
    """Store ``value`` under ``parent[key]``.

    Dicts, lists and tuples become groups, arrays datasets, scalars and None attributes of
    ``parent``; ``where`` names the value in error messages.
    """
    if isinstance(value, Mapping):
        group = parent.create_group(key)
        for k, v in value.items():
            if not isinstance(k, str) or not k or "/" in k or k in (".", _SEQUENCE_ATTR):
                raise CheckpointError(
                    f"cannot store {where}: key {k!r} must be a non-empty str without '/'"
                )
            _write_tree(group, k, v, f"{where}[{k!r}]")
    elif isinstance(value, (list, tuple)):
        group = parent.create_group(key)
        group.attrs[_SEQUENCE_ATTR] = type(value).__name__
        for i, v in enumerate(value):
            _write_tree(group, str(i), v, f"{where}[{i}]")
    elif value is None:
        parent.attrs[key] = h5py.Empty("f4")
    elif isinstance(value, (str, bool, int, float, np.generic)):
        try:
            parent.attrs[key] = value
        except (TypeError, OverflowError) as exc:
            raise CheckpointError(f"cannot store {where}={value!r}: {exc}") from None
    elif hasattr(value, "shape") and hasattr(value, "dtype"):
        try:
            parent.create_dataset(key, data=to_host(value))
        except (TypeError, ValueError) as exc:
            raise CheckpointError(f"cannot store array {where}: {exc}") from None
    else:
        raise CheckpointError(
            f"cannot store {where} of type {type(value).__name__}; "
            "expected a dict, list, tuple, array, scalar or None"
        )


# ------------------------------------------------------------------ reading


def load(path: PathLike, dtype: Any = None) -> tuple[Sequential, Checkpoint]:
    """Load the network saved in ``path`` and its metadata.

    Parameters
    ----------
    path : str or PathLike
    dtype : {"float32", "float64"}, optional
        Dtype of the returned network; default the saved one (then parameters are bit-exact).

    Returns
    -------
    net : Sequential
        Built by ``from_layers`` on the selected device, parameters loaded.
    meta : Checkpoint

    Raises
    ------
    CheckpointError
        Missing or unreadable file, not a gls_np checkpoint, unsupported format_version,
        missing or misshapen parameters.
    """
    with _open(path) as (f, name):
        meta = _read_meta(f, name)
        net = from_layers(meta.layers, dtype or meta.dtype, meta.input_shape)
        net.load_state_dict(_read_params(f, net, name))
    return net, meta


def load_meta(path: PathLike) -> Checkpoint:
    """Read the metadata of ``path`` (all but the parameters), without building the network."""
    with _open(path) as (f, name):
        return _read_meta(f, name)


@contextmanager
def _open(path: PathLike) -> Iterator[tuple[h5py.File, str]]:
    """Open a checkpoint for reading; any failure inside becomes a one-line CheckpointError."""
    name = os.fspath(path)
    if not os.path.exists(name):
        raise CheckpointError(f"{name}: no such file (expected a gls_np checkpoint)")
    if not os.path.isfile(name):
        raise CheckpointError(f"{name}: not a file (expected a gls_np checkpoint)")
    if not h5py.is_hdf5(name):
        raise CheckpointError(f"{name}: not an HDF5 file (expected a gls_np checkpoint)")
    try:
        with h5py.File(name, "r") as f:
            yield f, name
    except CheckpointError:
        raise
    except (OSError, KeyError, TypeError, ValueError) as exc:
        message = " ".join(str(exc).split())
        raise CheckpointError(f"{name}: {message}") from None


def _read_meta(f: h5py.File, name: str) -> Checkpoint:
    version = f.attrs.get("format_version")
    if version is None:
        raise CheckpointError(f"{name}: not a gls_np checkpoint (no 'format_version' attribute)")
    if version != FORMAT_VERSION:
        raise CheckpointError(
            f"{name}: format_version {version} is not supported; expected {FORMAT_VERSION}"
        )
    for key in ("layers", "dtype", "config", "epoch", "step"):
        if key not in f.attrs:
            raise CheckpointError(f"{name}: missing root attribute {key!r}")
    input_shape = _loads(f.attrs, "input_shape")
    history = f["history"].asstr()[()] if "history" in f else []
    return Checkpoint(
        path=name,
        format_version=int(version),
        layers=_loads(f.attrs, "layers"),
        dtype=str(f.attrs["dtype"]),
        input_shape=tuple(input_shape) if input_shape is not None else None,
        arch=_str_attr(f.attrs, "arch"),
        dataset=_str_attr(f.attrs, "dataset"),
        config=_loads(f.attrs, "config"),
        epoch=int(f.attrs["epoch"]),
        step=int(f.attrs["step"]),
        optimizer=_read_tree(f["optimizer"]) if "optimizer" in f else None,
        rng_state=_loads(f.attrs, "rng"),
        history=[json.loads(entry) for entry in history],
    )


def _loads(attrs: h5py.AttributeManager, key: str) -> Any:
    return json.loads(attrs[key]) if key in attrs else None


def _str_attr(attrs: h5py.AttributeManager, key: str) -> str | None:
    return str(attrs[key]) if key in attrs else None


def _read_params(f: h5py.File, net: Sequential, name: str) -> dict:
    """Read the ``params`` datasets, checked against the network's keys and shapes."""
    if not isinstance(f.get("params"), h5py.Group):
        raise CheckpointError(f"{name}: missing the 'params' group")
    group = f["params"]
    expected = {e.key: e.shape for e in net.param_spec.entries}
    missing = [k for k in expected if k not in group]
    unexpected = sorted(set(group) - set(expected))
    if missing or unexpected:
        raise CheckpointError(
            f"{name}: params keys differ from the layers' (missing {missing}, "
            f"unexpected {unexpected})"
        )
    params = {}
    for key, shape in expected.items():
        ds = group[key]
        if not isinstance(ds, h5py.Dataset) or ds.shape != shape:
            got = ds.shape if isinstance(ds, h5py.Dataset) else "a group"
            raise CheckpointError(f"{name}: params/{key} has shape {got}, expected {shape}")
        params[key] = ds[()]
    return params


def _read_tree(group: h5py.Group) -> dict | list | tuple:
    """Inverse of ``_write_tree``: a dict, list or tuple of host arrays and scalars."""
    out = {}
    for key, child in group.items():
        out[key] = _read_tree(child) if isinstance(child, h5py.Group) else np.asarray(child[()])
    for key, value in group.attrs.items():
        if key == _SEQUENCE_ATTR:
            continue
        if isinstance(value, h5py.Empty):
            value = None
        elif isinstance(value, _PYTHON_SCALARS):
            value = value.item()
        out[key] = value
    kind = group.attrs.get(_SEQUENCE_ATTR)
    if kind is None:
        return out
    items = [out[str(i)] for i in range(len(out))]
    return tuple(items) if kind == "tuple" else items


# ------------------------------------------------------------------ summary


def summary(net: Sequential, meta: Checkpoint) -> str:
    """Describe a loaded checkpoint in readable lines (what ``python -m gls_np inspect`` prints)."""
    size = os.path.getsize(meta.path) if os.path.exists(meta.path) else 0
    shape = "unknown" if meta.input_shape is None else _fmt(meta.input_shape)
    lines = [
        f"checkpoint: {meta.path} (format {meta.format_version}, {size / 1024:.1f} KiB)",
        f"arch: {meta.arch or '?'}  dataset: {meta.dataset or '?'}  dtype: {meta.dtype}  "
        f"input: {shape}",
        f"epoch: {meta.epoch}  step: {meta.step}",
        "",
        "layers:",
    ]
    shapes = net.shapes(meta.input_shape) if meta.input_shape is not None else None
    for i, layer in enumerate(net.layers):
        n = sum(math.prod(s) for s in layer.param_shapes().values())
        out = _fmt(shapes[i + 1]) if shapes is not None else "?"
        args = " ".join(f"{k}={_fmt(v)}" for k, v in layer.spec().items() if k != "type")
        lines.append(f"  {i:>2}  {layer.type:<10} {n:>10} params  -> {out:<14} {args}".rstrip())
    lines.append(f"total params: {net.n_params}")
    lines += ["", "config:"] + _key_values(meta.config)
    if meta.history:
        lines += ["", f"last metrics ({len(meta.history)} entries):"]
        lines += _key_values(meta.history[-1])
    if meta.optimizer is not None:
        lines += _sigma_lines(meta.optimizer, "optimizer")
    return "\n".join(lines)


def _key_values(d: dict, prefix: str = "") -> list:
    if not d:
        return ["  (none)"] if not prefix else []
    lines = []
    for key, value in d.items():
        if isinstance(value, dict):
            lines += _key_values(value, f"{prefix}{key}.")
        else:
            lines.append(f"  {prefix}{key}: {_fmt(value)}")
    return lines


def _sigma_lines(tree: dict | list | tuple, where: str) -> list:
    """Statistics of every array named ``sigma`` in the optimiser state (PGPE's search widths)."""
    items = tree.items() if isinstance(tree, dict) else enumerate(tree)
    lines = []
    for key, value in items:
        path = f"{where}.{key}"
        if isinstance(value, (dict, list, tuple)):
            lines += _sigma_lines(value, path)
        elif key == "sigma" and isinstance(value, (float, np.floating, np.ndarray)):
            s = np.asarray(value, dtype=np.float64).ravel()
            if s.size:
                lines += [
                    "",
                    f"{path}: {s.size} values, min {s.min():.4g}  median {np.median(s):.4g}  "
                    f"mean {s.mean():.4g}  max {s.max():.4g}",
                ]
    return lines


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.6g}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_fmt(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    if isinstance(value, list):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    return str(value)


__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "load",
    "load_meta",
    "save",
    "summary",
]
