"""The paper's architectures (Table 5) and their initialisations.

CNN3 and CNN5 follow Table 5 of the paper: every listed layer is followed by a
ReLU, then a final Linear to 10 classes. CNN7 is the CNN7 of Shi et al. (2021)
without batch norm. CIFAR-10 networks start with a ``Normalize`` layer, so
perturbations are measured in [0, 1] pixel space (paper App. E.5).
"""

from __future__ import annotations

import math

from .backend import make_rng, np, to_device
from .layers import Conv2d, Flatten, Linear, Normalize, ReLU
from .model import Sequential, from_layers

ARCHS = ("cnn3", "cnn5", "cnn7")
INITS = ("default", "ibp")

# (out_channels, kernel, stride, padding) per conv, then the hidden FC widths
_BODIES = {
    "cnn3": ([(8, 5, 2, 2), (8, 4, 2, 1)], []),
    "cnn5": ([(16, 5, 2, 2), (16, 4, 2, 1), (32, 4, 2, 1)], [512]),
    "cnn7": ([(64, 3, 1, 1), (64, 3, 1, 1), (128, 3, 2, 1), (128, 3, 1, 1), (128, 3, 1, 1)], [512]),
}


def build(arch: str, dataset: str, dtype="float32", init="default", seed=0) -> Sequential:
    """The network ``arch`` for ``dataset``, initialised from ``seed``.

    Parameters
    ----------
    arch : {"cnn3", "cnn5", "cnn7"}
    dataset : {"mnist", "fashion-mnist", "cifar10"}
    dtype : {"float32", "float64"}
    init : {"default", "ibp"}
        PyTorch's default (Kaiming-uniform) or the IBP initialisation of Shi et al. (2021).
    """
    from . import data

    if arch not in _BODIES:
        raise ValueError(f"unknown arch {arch!r}; expected one of {list(ARCHS)}")
    if dataset not in data.DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; expected one of {list(data.DATASETS)}")
    C, H, W = data.input_shape(dataset)
    layers = []
    if dataset in data.NORMALIZATION:
        mean, std = data.NORMALIZATION[dataset]
        layers.append(Normalize(mean, std))
    convs, fcs = _BODIES[arch]
    shape = (C, H, W)
    for out_ch, k, s, p in convs:
        conv = Conv2d(shape[0], out_ch, k, s, p)
        layers += [conv, ReLU()]
        shape = conv.out_shape(shape)
    layers.append(Flatten())
    width = math.prod(shape)
    for h in fcs:
        layers += [Linear(width, h), ReLU()]
        width = h
    layers.append(Linear(width, data.num_classes(dataset)))
    net = Sequential(layers, dtype=dtype, input_shape=(C, H, W))
    initialize(net, make_rng(seed), init)
    return net


def initialize(net: Sequential, rng, method: str = "default") -> None:
    """Fill ``net.theta`` in place of the old vector.

    ``default``: PyTorch's Linear/Conv2d reset, weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    (kaiming_uniform with a = sqrt(5)).
    ``ibp``: as default, then every weight but the last layer's is redrawn from
    N(0, 2 pi / fan_in^2) (Shi et al. 2021, "Fast certified robust training with
    short warmup"), which keeps IBP bound widths constant in depth at initialisation.
    """
    if method not in INITS:
        raise ValueError(f"unknown init {method!r}; expected one of {list(INITS)}")
    theta = np.empty(net.n_params, dtype=np.float64)
    weights = [e for e in net.param_spec.entries if e.name == "weight"]
    for e in net.param_spec.entries:
        bound = 1.0 / math.sqrt(net.layers[e.layer].fan_in())
        theta[e.offset : e.offset + e.size] = rng.uniform(-bound, bound, e.size)
    if method == "ibp":
        for e in weights[:-1]:
            std = math.sqrt(2 * math.pi) / net.layers[e.layer].fan_in()
            theta[e.offset : e.offset + e.size] = rng.normal(0.0, std, e.size)
    net.theta = to_device(theta, net.dtype)


__all__ = ["ARCHS", "INITS", "build", "from_layers", "initialize"]
