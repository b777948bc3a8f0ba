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

# What this version can train; the rest of RELAXATIONS x OPTIMIZERS comes with
# the training issue and is refused with a clear message until then.
AVAILABLE = {("none", "grad")}


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
    eval_batch_size: int = 1000

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
                raise ConfigError(f"--{name} {getattr(self, name)!r} is unknown; expected one of {list(allowed)}")
        if (self.relax, self.optimizer) not in AVAILABLE:
            raise ConfigError(
                f"--relax {self.relax} --optimizer {self.optimizer} is not available yet "
                f"(this version trains: {', '.join(f'--relax {r} --optimizer {o}' for r, o in sorted(AVAILABLE))})"
            )
        positive = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                    "eval_batch_size": self.eval_batch_size}
        for name, value in positive.items():
            if not value > 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be > 0, got {value}")
        nonneg = {"eps": self.eps, "grad_clip": self.grad_clip, "train_size": self.train_size,
                  "test_size": self.test_size, "max_steps": self.max_steps}
        for name, value in nonneg.items():
            if value < 0:
                raise ConfigError(f"--{name.replace('_', '-')} must be >= 0, got {value}")
        if not 0 < self.lr_factor <= 1:
            raise ConfigError(f"--lr-factor must be in (0, 1], got {self.lr_factor}")
        if not self.out:
            raise ConfigError("--out must name a run directory")
        return self

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict) -> Config:
        """Build from a dict (e.g. a checkpoint's config), ignoring unknown keys."""
        known = {f.name for f in fields(cls)}
        kwargs = {k: v for k, v in d.items() if k in known}
        if "lr_milestones" in kwargs:
            kwargs["lr_milestones"] = tuple(kwargs["lr_milestones"])
        return cls(**kwargs)
