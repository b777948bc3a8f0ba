"""The run configuration: one frozen dataclass, validated once.

``mpi_run.py`` turns its arguments into a ``Config``; ``gls_np.train.run`` takes
nothing else. The config is stored as JSON in every checkpoint and in
``DIR/config.json`` so that a run can be resumed and reproduced.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

from .data import DATASETS
from .nets import ARCHS, INITS

RELAXATIONS = ("none", "pgd", "ibp", "hbox", "crown-ibp", "deeppoly", "sabr", "mtl-ibp")
OPTIMIZERS = ("grad", "pgpe", "rgs")
DEVICES = ("cpu", "gpu")

CENTER_OPTS = ("adam", "clipup")
# How MPI ranks combine a PGPE step (docs/mpi.md): allreduce the partial estimates
# (O(parameters) bytes), or share only fitness values and regenerate every member's noise
# from the seed (O(popsize) bytes, more noise generation per rank).
COMMS = ("allreduce", "seeds")
PRESETS = ("paper", "quick")
# PGPE evaluates hundreds of networks per step without backprop; an attack per
# member would dominate it, so adversarial objectives use the centre's PGD point.


class ConfigError(ValueError):
    """A configuration value is out of range or not available."""


@dataclass(frozen=True)
class Config:
    """Everything a training run depends on."""

    arch: str = "cnn3"
    dataset: str = "mnist"
    relax: str = "none"
    optimizer: str = "grad"
    eps: float = 0.1
    epochs: int = 1
    batch_size: int = 128
    lr: float = 1e-3
    lr_milestones: tuple = ()
    lr_factor: float = 0.2
    grad_clip: float = 0.0
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    init: str = "default"
    out: str = "runs/default"
    resume: str = ""
    data_dir: str = ""
    train_size: int = 0
    test_size: int = 0
    max_steps: int = 0
    keep_epochs: bool = False
    eval_batch_size: int = 1000
    cert_size: int = 200
    eps_warmup: float = 0.0
    eps_ramp: float = 0.0
    pgd_steps: int = 8
    sabr_lambda: float = 0.4
    mtl_alpha: float = 0.5
    popsize: int = 256
    sigma: float = 1e-3
    sigma_lr: float = 0.1
    sigma_max_change: float = 0.2
    rank: bool = True
    center_opt: str = "adam"
    pop_chunk: int = 0  # 0: as many members as fit max_memory_gb (objectives.population_chunk)
    rgs_samples: int = 2
    init_from: str = ""
    # 0: picked from the free memory when the run starts (gls_np.memory); run() records the value
    max_memory_gb: float = 0.0
    comm: str = "allreduce"

    def validate(self) -> Config:
        """Raise ConfigError naming the first bad value; return self."""
        choices = {
            "arch": ARCHS,
            "dataset": DATASETS,
            "relax": RELAXATIONS,
            "optimizer": OPTIMIZERS,
            "device": DEVICES,
            "dtype": ("float32", "float64"),
            "init": INITS,
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ConfigError(
                    f"--{name} {getattr(self, name)!r} is unknown; expected one of {list(allowed)}"
                )
        if self.center_opt not in CENTER_OPTS:
            raise ConfigError(
                f"--center-opt {self.center_opt!r} is unknown; expected one of {list(CENTER_OPTS)}"
            )
        if self.comm not in COMMS:
            raise ConfigError(f"--comm {self.comm!r} is unknown; expected one of {list(COMMS)}")
        if self.optimizer == "pgpe" and (self.popsize < 2 or self.popsize % 2):
            raise ConfigError(
                f"--popsize must be even and >= 2 (antithetic pairs), got {self.popsize}"
            )
        if not 0 < self.sabr_lambda <= 1:
            raise ConfigError(f"--sabr-lambda must be in (0, 1], got {self.sabr_lambda}")
        if not 0 <= self.mtl_alpha <= 1:
            raise ConfigError(f"--mtl-alpha must be in [0, 1], got {self.mtl_alpha}")
        if not 0 < self.sigma_max_change < 1:
            raise ConfigError(f"--sigma-max-change must be in (0, 1), got {self.sigma_max_change}")
        positive = {
            "epochs": self.epochs,
            "batch_size": self.batch_size,
            "lr": self.lr,
            "eval_batch_size": self.eval_batch_size,
            "sigma": self.sigma,
            "rgs_samples": self.rgs_samples,
        }
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        nonneg = {
            "eps": self.eps,
            "grad_clip": self.grad_clip,
            "train_size": self.train_size,
            "test_size": self.test_size,
            "max_steps": self.max_steps,
            "eps_warmup": self.eps_warmup,
            "eps_ramp": self.eps_ramp,
            "pgd_steps": self.pgd_steps,
            "pop_chunk": self.pop_chunk,
            "sigma_lr": self.sigma_lr,
            "cert_size": self.cert_size,
        }
        for name, value in nonneg.items():
            if value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if self.max_memory_gb < 0:
            raise ConfigError(
                f"--max-memory-gb must be >= 0 (0 = from free memory), got {self.max_memory_gb}"
            )
        if not 0 < self.lr_factor <= 1:
            raise ConfigError(f"--lr-factor must be in (0, 1], got {self.lr_factor}")
        if not self.out:
            raise ConfigError("--out must name a run directory")
        return self

    def to_json(self) -> str:
        """Serialise to sorted-key JSON (stored in checkpoints and config.json)."""
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """Build from a dict (e.g. a checkpoint's config), ignoring unknown keys."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        if "lr_milestones" in kwargs:
            kwargs["lr_milestones"] = tuple(kwargs["lr_milestones"])
        return cls(**kwargs)


def preset(name: str, optimizer: str, dataset: str, eps: float) -> dict:
    """Hyper-parameters of a preset, as Config field values.

    ``paper``: App. E of the paper for the optimizer and dataset (eps-annealing
    only for the large eps of PGPE/RGS: MNIST 0.3, CIFAR-10 8/255).
    ``quick``: a CPU-sized variant (2048 examples, 2 epochs, popsize 32) for
    trying things in minutes.
    """
    cifar = dataset == "cifar10"
    large_eps = eps >= (0.3 if not cifar else 8 / 255 - 1e-9)
    if name == "quick":
        return {
            "train_size": 2048,
            "test_size": 500,
            "cert_size": 100,
            "epochs": 2,
            "batch_size": 256 if optimizer != "pgpe" else 128,
            "popsize": 32,
            "lr": 1e-3 if optimizer != "pgpe" else 3e-4,
        }
    if name != "paper":
        raise ConfigError(f"--preset {name!r} is unknown; expected one of {list(PRESETS)}")
    if optimizer == "grad":
        # App. E.1 (Shi et al. 2021's schedule, batch size and gradient clipping)
        return {
            "lr": 5e-4,
            "epochs": 160 if cifar else 70,
            "eps_ramp": 80 if cifar else 20,
            "lr_milestones": (120, 140) if cifar else (50, 60),
            "lr_factor": 0.2,
            "batch_size": 128 if cifar else 256,
            "grad_clip": 10.0,
            "init": "ibp",
        }
    if optimizer == "pgpe":
        # App. E.2
        return {
            "lr": 3e-4,
            "epochs": 150,
            "lr_milestones": (110, 130),
            "lr_factor": 0.4,
            "batch_size": 128 if cifar else 512,
            "popsize": 256,
            "sigma": 1e-3,
            "eps_ramp": 50 if large_eps else 0,
        }
    # App. E.3: 60 (MNIST) / 80 (CIFAR-10) epochs, +20 of annealing for the large eps,
    # lr decayed by 0.4 twice over the last 2 x 10 epochs
    extra = 20 if large_eps else 0
    epochs = (80 if cifar else 60) + extra
    return {
        "lr": 5e-4,
        "epochs": epochs,
        "eps_ramp": extra,
        "lr_milestones": (epochs - 20, epochs - 10),
        "lr_factor": 0.4,
        "batch_size": 128 if cifar else 256,
        "rgs_samples": 2,
        "sigma": 1e-3,
    }
