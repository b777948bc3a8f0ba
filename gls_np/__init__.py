"""gls_np: certified training with Gaussian Loss Smoothing, in pure NumPy/CuPy.

Importing gls_np loads only NumPy-based modules; cupy is imported when the GPU
device is selected, mpi4py by the MPI entry point, h5py with
``gls_np.checkpoint`` (loaded on first attribute access).
"""

import importlib

from . import backend, data, layers, losses, model, nets, ops, tensor
from .backend import get_xp, set_device
from .model import Sequential, from_layers
from .nets import build
from .tensor import Tensor, value_and_grad

__version__ = "0.1.0"

_LAZY = ("attacks", "bounds", "checkpoint", "config", "optim", "train")


def __getattr__(name):
    if name in _LAZY:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'gls_np' has no attribute {name!r}")


__all__ = [
    "Sequential",
    "Tensor",
    "__version__",
    "backend",
    "build",
    "data",
    "from_layers",
    "get_xp",
    "layers",
    "losses",
    "model",
    "nets",
    "ops",
    "set_device",
    "tensor",
    "value_and_grad",
    *_LAZY,
]
