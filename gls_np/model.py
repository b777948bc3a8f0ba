"""A sequential network whose parameters live in one flat vector theta.

``ParamSpec`` maps the flat vector ``theta`` (``[D]``, or ``[P, D]`` for a
population of P perturbed networks) to per-layer views shaped like PyTorch's
parameters, with the population axis in front. PGPE and RGS perturb ``theta``
directly; the layers never own their parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from . import ops
from .backend import default_xp, get_xp, resolve_dtype, to_host
from .layers import from_spec
from .tensor import Tensor, data


@dataclass(frozen=True)
class ParamEntry:
    """One parameter array inside theta: layer index, PyTorch name, shape, offset."""

    layer: int
    name: str
    shape: tuple
    offset: int

    @property
    def size(self) -> int:
        return math.prod(self.shape)

    @property
    def key(self) -> str:
        return f"{self.layer}.{self.name}"


class ParamSpec:
    """The layout of theta: entries in layer order, weight before bias (PyTorch's order)."""

    def __init__(self, layers):
        entries, offset = [], 0
        for i, layer in enumerate(layers):
            for name, shape in layer.param_shapes().items():
                entries.append(ParamEntry(i, name, tuple(shape), offset))
                offset += math.prod(shape)
        self.entries = entries
        self.size = offset
        self.n_layers = len(layers)

    def unravel(self, theta):
        """Per-layer dicts of views into theta.

        Shapes: theta (*lead, D) -> [{"weight": (*lead, *shape), "bias": ...}, ...],
        one dict per layer (empty for parameter-free layers). Views, not copies,
        on bare arrays; recorded slices on a Tensor.
        """
        td = data(theta)
        if td.shape[-1] != self.size:
            raise ValueError(f"theta must end in {self.size} parameters, got shape {td.shape}")
        lead = td.shape[:-1]
        out = [{} for _ in range(self.n_layers)]
        for e in self.entries:
            piece = ops.getitem(theta, (Ellipsis, slice(e.offset, e.offset + e.size)))
            out[e.layer][e.name] = ops.reshape(piece, (*lead, *e.shape))
        return out

    def counts(self) -> list:
        """(key, shape, size) per parameter array."""
        return [(e.key, e.shape, e.size) for e in self.entries]


class Sequential:
    """A stack of layers applied in order, parameters in one flat vector.

    Parameters
    ----------
    layers : list
        Layer objects of ``gls_np.layers``.
    dtype : str
        ``"float32"`` (default) or ``"float64"``: theta's dtype and the dtype
        every forward pass computes in.
    input_shape : tuple, optional
        Per-sample input shape ``(C, H, W)`` when known (builders set it).

    Attributes
    ----------
    theta : array [n_params]
        The parameter vector the layers read from.
    """

    def __init__(self, layers, dtype="float32", input_shape=None):
        self.layers = list(layers)
        self.dtype = resolve_dtype(dtype)
        self.param_spec = ParamSpec(self.layers)
        self.input_shape = tuple(input_shape) if input_shape is not None else None
        self.theta = default_xp().zeros(self.param_spec.size, dtype=self.dtype)
        if self.input_shape is not None:
            self.shapes(self.input_shape)

    @property
    def n_params(self) -> int:
        return self.param_spec.size

    def layer_specs(self) -> list:
        """The JSON layer list of the checkpoint format (PyTorch argument names)."""
        return [layer.spec() for layer in self.layers]

    def shapes(self, in_shape) -> list:
        """Per-sample shapes: [input of layer 0, input of layer 1, ..., output]."""
        shapes = [tuple(in_shape)]
        for i, layer in enumerate(self.layers):
            try:
                shapes.append(layer.out_shape(shapes[-1]))
            except ValueError as exc:
                raise ValueError(f"layer {i} ({layer.type}): {exc}") from None
        return shapes

    def unravel(self, theta=None):
        """Per-layer parameter dicts of ``theta`` (default: the network's own)."""
        return self.param_spec.unravel(self.theta if theta is None else theta)

    def forward(self, x, theta=None):
        """Logits for input x under parameters theta (taped when either is a Tensor).

        Shapes: x (B, C, H, W); theta (D,) -> (B, K), or (P, D) -> (P, B, K).
        """
        theta = self.theta if theta is None else theta
        if not isinstance(x, Tensor):
            # a host batch goes to the parameters' device (net(x) on a GPU network)
            x = get_xp(x, data(theta)).asarray(x, dtype=self.dtype)
        if data(theta).ndim == 2:
            # NOTE: a shared input gets a population axis of size 1, so the first
            # layer stacks the P weight tensors into one GEMM
            x = ops.reshape(x, (1, *data(x).shape))
        params = self.param_spec.unravel(theta)
        for layer, p in zip(self.layers, params):
            x = layer.forward(p, x)
        return x

    def __call__(self, x, params=None, chunk=None):
        """Logits: ``net(x)`` (B, K), or ``net(x, params)`` with params (P, D) -> (P, B, K).

        ``chunk`` bounds memory by evaluating at most that many members at once.
        """
        if params is None:
            return self.forward(x)
        pd = data(params)
        if pd.ndim != 2 or pd.shape[1] != self.n_params:
            raise ValueError(f"params must be (P, {self.n_params}), got {pd.shape}")
        if chunk is None or chunk >= pd.shape[0]:
            return self.forward(x, params)
        parts = [
            self.forward(x, ops.getitem(params, slice(i, i + chunk)))
            for i in range(0, pd.shape[0], chunk)
        ]
        return ops.concatenate(parts, axis=0)

    def state_dict(self) -> dict:
        """Host copies of the parameters under PyTorch nn.Sequential keys ("0.weight", ...)."""
        views = self.unravel()
        return {e.key: to_host(views[e.layer][e.name]).copy() for e in self.param_spec.entries}

    def load_state_dict(self, state: dict) -> None:
        """Copy parameters from a dict keyed and shaped like ``state_dict()``."""
        expected = {e.key: e for e in self.param_spec.entries}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise ValueError(f"state_dict keys differ: missing {missing}, unexpected {unexpected}")
        xp = get_xp(self.theta)
        theta = xp.empty_like(self.theta)
        for key, e in expected.items():
            value = state[key]
            value = value.detach().cpu().numpy() if hasattr(value, "detach") else value
            arr = xp.asarray(value, dtype=self.dtype)
            if tuple(arr.shape) != e.shape:
                raise ValueError(
                    f"state_dict[{key!r}] has shape {tuple(arr.shape)}, expected {e.shape}"
                )
            theta[e.offset : e.offset + e.size] = arr.reshape(-1)
        self.theta = theta

    def __repr__(self) -> str:
        body = ",\n".join(f"  ({i}): {layer.spec()}" for i, layer in enumerate(self.layers))
        return f"Sequential(n_params={self.n_params}, dtype={self.dtype.name},\n{body}\n)"


def from_layers(specs, dtype="float32", input_shape=None) -> Sequential:
    """The network a checkpoint's ``layers`` list describes (parameters zero)."""
    if not isinstance(specs, (list, tuple)) or not specs:
        raise ValueError(f"layers must be a non-empty list of layer specs, got {specs!r}")
    return Sequential([from_spec(s) for s in specs], dtype=dtype, input_shape=input_shape)
