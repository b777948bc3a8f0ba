"""The layers: hyperparameters and pure maps, no parameters stored on ``self``.

A layer's parameters arrive explicitly as a dict ``p`` of arrays named like
PyTorch's (``{"weight": ..., "bias": ...}``), each with an optional leading
population axis. Activations are ``(*lead, *batch, ...)`` with ``lead`` ``()``
or ``(P,)``; a shared input carries a population axis of size 1.

Every affine-like layer (Linear, Conv2d, Flatten, Normalize) exposes the four
maps the relaxations are written with, so each domain handles just two cases
(affine and ReLU):

- ``linear(p, x)``: W x (no bias),
- ``linear_abs(p, x)``: |W| x,
- ``linear_T(p, y, in_shape)``: W^T y (back-substitution; ``in_shape`` is the
  layer's per-sample input shape),
- ``bias(p, like)``: b as ``(*lead, *out)`` where ``out`` is the per-sample
  output shape or a broadcastable one (``(O, 1, 1)`` for a convolution), or
  None; ``like`` is an activation that gives dtype and device where the bias has
  no parameter (Normalize). ``with_batch_axes`` makes it broadcast over a batch.

``forward(p, x) = linear(p, x) + bias``. The one non-linear layer is ReLU.
"""

from __future__ import annotations

import math

from . import ops
from .backend import get_xp
from .tensor import data


def with_batch_axes(b, nlead, nbatch):
    """Insert ``nbatch`` singleton axes after the ``nlead`` population axes of a bias.

    Shapes: b (*lead, *out) -> (*lead, 1 x nbatch, *out).
    """
    shape = data(b).shape
    return ops.reshape(b, (*shape[:nlead], *(1,) * nbatch, *shape[nlead:]))


class Linear:
    """y = W x + b.  Shapes: x (*lead, *batch, in) -> (*lead, *batch, out); W (*lead, out, in)."""

    type = "linear"

    def __init__(self, in_features: int, out_features: int):
        self.in_features = int(in_features)
        self.out_features = int(out_features)

    def spec(self) -> dict:
        return {
            "type": self.type,
            "in_features": self.in_features,
            "out_features": self.out_features,
        }

    def param_shapes(self) -> dict:
        return {"weight": (self.out_features, self.in_features), "bias": (self.out_features,)}

    def fan_in(self) -> int:
        return self.in_features

    def out_shape(self, in_shape: tuple) -> tuple:
        if tuple(in_shape) != (self.in_features,):
            raise ValueError(
                f"linear layer expects input ({self.in_features},), got {tuple(in_shape)}"
            )
        return (self.out_features,)

    @staticmethod
    def _rows_times(x, M):
        """x @ M with every batch axis folded into the GEMM's rows.

        Shapes: x (*lead, *batch, a), M (*lead, a, b) -> (*lead, *batch, b).
        """
        nl = data(M).ndim - 2
        xd = data(x)
        batch = xd.shape[nl:-1]
        x2 = ops.reshape(x, (*xd.shape[:nl], math.prod(batch), xd.shape[-1]))
        y = ops.matmul(x2, M)
        return ops.reshape(y, (*data(y).shape[:nl], *batch, data(y).shape[-1]))

    def linear(self, p, x):
        return self._rows_times(x, ops.swapaxes(p["weight"], -1, -2))

    def linear_abs(self, p, x):
        return self._rows_times(x, ops.swapaxes(ops.abs(p["weight"]), -1, -2))

    def linear_T(self, p, y, in_shape=None):
        return self._rows_times(y, p["weight"])

    def bias(self, p, like=None):
        return p["bias"]

    def forward(self, p, x):
        y = self.linear(p, x)
        nl = p["weight"].ndim - 2
        return ops.add(y, with_batch_axes(p["bias"], nl, data(y).ndim - nl - 1))


class Conv2d:
    """PyTorch's Conv2d (square kernel, same stride/padding both ways).

    Shapes: x (*lead, *batch, C, H, W) -> (*lead, *batch, O, Ho, Wo);
    weight (*lead, O, C, k, k), bias (*lead, O).
    """

    type = "conv2d"

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0):
        self.in_channels = int(in_channels)
        self.out_channels = int(out_channels)
        self.kernel_size = int(kernel_size)
        self.stride = int(stride)
        self.padding = int(padding)

    def spec(self) -> dict:
        return {
            "type": self.type,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "kernel_size": self.kernel_size,
            "stride": self.stride,
            "padding": self.padding,
        }

    def param_shapes(self) -> dict:
        k = self.kernel_size
        return {"weight": (self.out_channels, self.in_channels, k, k), "bias": (self.out_channels,)}

    def fan_in(self) -> int:
        return self.in_channels * self.kernel_size**2

    def out_shape(self, in_shape: tuple) -> tuple:
        if len(in_shape) != 3 or in_shape[0] != self.in_channels:
            raise ValueError(
                f"conv2d layer expects input ({self.in_channels}, H, W), got {tuple(in_shape)}"
            )
        _, H, W = in_shape
        k, s, p = self.kernel_size, self.stride, self.padding
        Ho, Wo = (H + 2 * p - k) // s + 1, (W + 2 * p - k) // s + 1
        if Ho <= 0 or Wo <= 0:
            raise ValueError(f"conv2d kernel {k} too large for input {tuple(in_shape)}")
        return (self.out_channels, Ho, Wo)

    def linear(self, p, x):
        return ops.conv2d(x, p["weight"], self.stride, self.padding)

    def linear_abs(self, p, x):
        return ops.conv2d(x, ops.abs(p["weight"]), self.stride, self.padding)

    def linear_T(self, p, y, in_shape):
        return ops.conv2d_T(y, p["weight"], self.stride, self.padding, in_hw=tuple(in_shape[-2:]))

    def bias(self, p, like=None):
        b = p["bias"]
        return ops.reshape(b, (*data(b).shape, 1, 1))

    def forward(self, p, x):
        y = self.linear(p, x)
        nl = p["weight"].ndim - 4
        return ops.add(y, with_batch_axes(self.bias(p), nl, data(y).ndim - nl - 3))


class ReLU:
    """y = max(x, 0), elementwise."""

    type = "relu"

    def spec(self) -> dict:
        return {"type": self.type}

    def param_shapes(self) -> dict:
        return {}

    def out_shape(self, in_shape):
        return tuple(in_shape)

    def forward(self, p, x):
        return ops.relu(x)


class Flatten:
    """(*lead, *batch, C, H, W) -> (*lead, *batch, C*H*W), PyTorch's row-major order."""

    type = "flatten"

    def spec(self) -> dict:
        return {"type": self.type}

    def param_shapes(self) -> dict:
        return {}

    def out_shape(self, in_shape):
        if len(in_shape) != 3:
            raise ValueError(f"flatten expects a (C, H, W) input, got {tuple(in_shape)}")
        return (math.prod(in_shape),)

    def linear(self, p, x):
        xd = data(x)
        return ops.reshape(x, (*xd.shape[:-3], math.prod(xd.shape[-3:])))

    linear_abs = linear
    forward = linear

    def linear_T(self, p, y, in_shape):
        yd = data(y)
        return ops.reshape(y, (*yd.shape[:-1], *in_shape))

    def bias(self, p, like=None):
        return None


class Normalize:
    """y = (x - mean) / std per channel; no parameters (CIFAR-10's input scaling).

    As an affine map: W = diag(1/std) per channel, b = -mean/std.
    Shapes: x (*lead, *batch, C, H, W) -> same.
    """

    type = "normalize"

    def __init__(self, mean, std):
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]
        if len(self.mean) != len(self.std) or any(s <= 0 for s in self.std):
            raise ValueError(
                f"normalize needs equal-length mean/std with std > 0, got {mean}, {std}"
            )

    def spec(self) -> dict:
        return {"type": self.type, "mean": list(self.mean), "std": list(self.std)}

    def param_shapes(self) -> dict:
        return {}

    def out_shape(self, in_shape):
        if len(in_shape) != 3 or in_shape[0] != len(self.mean):
            raise ValueError(
                f"normalize expects ({len(self.mean)}, H, W) input, got {tuple(in_shape)}"
            )
        return tuple(in_shape)

    def _col(self, values, like):
        xp = get_xp(data(like))
        return xp.asarray(values, dtype=data(like).dtype).reshape(-1, 1, 1)

    def linear(self, p, x):
        return ops.mul(x, 1.0 / self._col(self.std, x))

    linear_abs = linear

    def linear_T(self, p, y, in_shape=None):
        return ops.mul(y, 1.0 / self._col(self.std, y))

    def bias(self, p, like):
        """-mean/std as a (C, 1, 1) array of ``like``'s dtype and device."""
        return -self._col(self.mean, like) / self._col(self.std, like)

    def forward(self, p, x):
        return ops.add(self.linear(p, x), self.bias(p, x))


LAYER_TYPES = {cls.type: cls for cls in (Linear, Conv2d, ReLU, Flatten, Normalize)}


def from_spec(spec: dict):
    """Build one layer from its checkpoint spec (``{"type": "conv2d", ...}``)."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"a layer spec must be a dict with a 'type' key, got {spec!r}")
    kind = spec["type"]
    if kind not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {kind!r}; expected one of {sorted(LAYER_TYPES)}")
    kwargs = {k: v for k, v in spec.items() if k != "type"}
    try:
        return LAYER_TYPES[kind](**kwargs)
    except TypeError as exc:
        raise ValueError(f"bad arguments for layer {kind!r}: {exc}") from None
