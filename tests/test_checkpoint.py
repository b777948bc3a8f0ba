"""Tests for gls_np.checkpoint and the ``python -m gls_np inspect`` tool."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

from gls_np import checkpoint, nets
from gls_np.backend import make_rng, rng_state
from gls_np.checkpoint import CheckpointError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def net():
    return nets.build("cnn3", "mnist", dtype="float64", seed=1)


def _optimizer_state(rng):
    """A state tree using every supported kind of leaf."""
    return {
        "m": rng.standard_normal(5).astype(np.float32),
        "v": rng.standard_normal((2, 3)),
        "t": 7,
        "lr": 0.1,
        "nesterov": False,
        "name": "adam",
        "beta": np.float32(0.9),
        "count": np.int32(3),
        "zero_d": np.array(2.5),
        "empty": np.zeros((0, 4)),
        "none": None,
        "pgpe": {"sigma": rng.uniform(0.01, 0.1, 6), "inner": {"k": np.arange(4)}},
        "chain": ({"mu": np.ones(2)}, [1, 2.5], ()),
    }


def _assert_tree_equal(a, b, where="state"):
    """Same structure, same types, bit-identical arrays."""
    assert type(a) is type(b), f"{where}: {type(a)} vs {type(b)}"
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_tree_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            _assert_tree_equal(x, y, f"{where}[{i}]")
    elif isinstance(a, (np.ndarray, np.generic)):
        assert a.dtype == b.dtype and a.shape == b.shape, where
        assert a.tobytes() == b.tobytes(), where
    else:
        assert a == b, where


# ------------------------------------------------------------------ round trips


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("dataset", ["mnist", "cifar10"])
def test_round_trip_is_bit_exact(tmp_path, dataset, dtype):
    net = nets.build("cnn3", dataset, dtype=dtype, seed=3)
    path = tmp_path / "ckpt.h5"
    checkpoint.save(path, net, arch="cnn3", dataset=dataset, epoch=4, step=123)
    loaded, meta = checkpoint.load(path)
    assert loaded.dtype == net.dtype and loaded.theta.dtype == net.theta.dtype
    assert loaded.theta.tobytes() == net.theta.tobytes()
    for key, value in net.state_dict().items():
        got = loaded.state_dict()[key]
        assert got.dtype == value.dtype and got.tobytes() == value.tobytes(), key
    assert loaded.layer_specs() == net.layer_specs()
    assert loaded.input_shape == net.input_shape
    assert (meta.arch, meta.dataset, meta.dtype) == ("cnn3", dataset, dtype)
    assert (meta.epoch, meta.step, meta.format_version) == (4, 123, checkpoint.FORMAT_VERSION)
    x = make_rng(0).uniform(0, 1, (2, *net.input_shape))
    assert np.array_equal(loaded(x), net(x))


def test_load_can_cast_dtype(tmp_path, net):
    checkpoint.save(tmp_path / "c.h5", net)
    loaded, meta = checkpoint.load(tmp_path / "c.h5", dtype="float32")
    assert meta.dtype == "float64" and loaded.dtype == np.float32
    assert np.array_equal(loaded.theta, net.theta.astype(np.float32))


def test_layout_with_plain_h5py(tmp_path):
    net = nets.build("cnn3", "cifar10", seed=0)
    path = tmp_path / "c.h5"
    history = [{"epoch": 1, "loss": np.float32(0.5)}, {"epoch": 2, "loss": float("nan")}]
    checkpoint.save(
        path,
        net,
        arch="cnn3",
        dataset="cifar10",
        config={"lr": 1e-3},
        rng=make_rng(5),
        epoch=2,
        step=10,
        history=history,
    )
    with h5py.File(path, "r") as f:
        assert set(f["params"]) == set(net.state_dict())
        for key, value in net.state_dict().items():
            assert f["params"][key].shape == value.shape
            assert np.array_equal(f["params"][key][()], value)
        assert f["params/1.weight"].shape == (8, 3, 5, 5)  # OIHW, after the normalize layer
        assert f["params/6.weight"].shape == (10, 512)  # [out, in]
        assert json.loads(f.attrs["layers"]) == net.layer_specs()
        assert json.loads(f.attrs["layers"])[0]["type"] == "normalize"
        assert f.attrs["format_version"] == 1
        assert (f.attrs["arch"], f.attrs["dataset"], f.attrs["dtype"]) == (
            "cnn3",
            "cifar10",
            "float32",
        )
        assert json.loads(f.attrs["config"]) == {"lr": 1e-3}
        assert json.loads(f.attrs["input_shape"]) == [3, 32, 32]
        assert (f.attrs["epoch"], f.attrs["step"]) == (2, 10)
        assert json.loads(f.attrs["rng"])["bit_generator"] == "PCG64"
        entries = [json.loads(s) for s in f["history"].asstr()[()]]
        assert entries[0] == {"epoch": 1, "loss": 0.5} and np.isnan(entries[1]["loss"])
        assert "optimizer" not in f


def test_optimizer_state_round_trips_exactly(tmp_path, net, rng):
    state = _optimizer_state(rng)
    checkpoint.save(tmp_path / "c.h5", net, optimizer=state)
    _, meta = checkpoint.load(tmp_path / "c.h5")
    _assert_tree_equal(state, meta.optimizer)
    with h5py.File(tmp_path / "c.h5", "r") as f:  # the documented layout
        assert f["optimizer/pgpe/sigma"].shape == (6,)
        assert f["optimizer"].attrs["t"] == 7


def test_rng_state_round_trips(tmp_path, net):
    rng = make_rng(123)
    rng.normal(size=17)
    checkpoint.save(tmp_path / "c.h5", net, rng=rng)
    expected_state = rng_state(rng)
    expected_draws = rng.normal(size=10)
    meta = checkpoint.load_meta(tmp_path / "c.h5")
    assert meta.rng_state == expected_state
    assert np.array_equal(meta.restore_rng().normal(size=10), expected_draws)


def test_metadata_round_trips(tmp_path, net):
    @dataclasses.dataclass(frozen=True)
    class Config:
        lr: float = 1e-3
        out: Path = Path("runs/x")
        widths: tuple = (1, 2)

    history = [{"epoch": 1, "acc": np.float64(0.25)}, {"epoch": 2, "acc": 0.5}]
    checkpoint.save(
        tmp_path / "c.h5",
        net,
        arch="cnn3",
        dataset="mnist",
        config=Config(),
        history=history,
        epoch=2,
        step=9,
    )
    meta = checkpoint.load_meta(tmp_path / "c.h5")
    assert meta.config == {"lr": 1e-3, "out": "runs/x", "widths": [1, 2]}
    assert meta.history == [{"epoch": 1, "acc": 0.25}, {"epoch": 2, "acc": 0.5}]
    assert meta.layers == net.layer_specs() and meta.input_shape == (1, 28, 28)
    assert meta.optimizer is None and meta.rng_state is None and meta.restore_rng() is None


def test_unstorable_optimizer_values_are_rejected(tmp_path, net):
    for bad in ({"f": object()}, {"a/b": 1}, {1: 2}, {"big": 2**70}, np.ones(3)):
        with pytest.raises(CheckpointError):
            checkpoint.save(tmp_path / "c.h5", net, optimizer=bad)
    assert os.listdir(tmp_path) == []


# ------------------------------------------------------------------ atomic writes


@pytest.mark.parametrize("error", [RuntimeError, KeyboardInterrupt])
def test_failed_save_keeps_previous_checkpoint(tmp_path, net, monkeypatch, error):
    path = tmp_path / "ckpt.h5"
    checkpoint.save(path, net, epoch=1)
    before = path.read_bytes()

    def fail(*args, **kwargs):  # called after the params are written
        raise error("simulated crash")

    monkeypatch.setattr(checkpoint, "_write_tree", fail)
    newer = nets.build("cnn3", "mnist", dtype="float64", seed=2)
    with pytest.raises(error):
        checkpoint.save(path, newer, epoch=2, optimizer={"t": 1})
    assert os.listdir(tmp_path) == ["ckpt.h5"]
    assert path.read_bytes() == before
    loaded, meta = checkpoint.load(path)
    assert meta.epoch == 1 and np.array_equal(loaded.theta, net.theta)


def test_failed_rename_leaves_no_temp_file(tmp_path, net, monkeypatch):
    path = tmp_path / "ckpt.h5"

    def fail(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.os, "replace", fail)
    with pytest.raises(OSError):
        checkpoint.save(path, net)
    assert os.listdir(tmp_path) == []


def test_save_overwrites_and_creates_directories(tmp_path, net):
    path = tmp_path / "run" / "sub" / "ckpt.h5"
    checkpoint.save(path, net, epoch=1)
    checkpoint.save(path, net, epoch=2)
    assert checkpoint.load_meta(path).epoch == 2
    assert os.listdir(path.parent) == ["ckpt.h5"]


# ------------------------------------------------------------------ errors


def _rewrite(path, edit):
    with h5py.File(path, "r+") as f:
        edit(f)


@pytest.mark.parametrize(
    "case, expected",
    [
        ("missing", "no such file"),
        ("directory", "not a file"),
        ("garbage", "not an HDF5 file"),
        ("foreign_hdf5", "no 'format_version'"),
        ("future_version", "format_version 2 is not supported; expected 1"),
        ("no_params", "missing the 'params' group"),
        ("missing_key", "missing ['0.weight']"),
        ("extra_key", "unexpected ['9.weight']"),
        ("wrong_shape", "params/5.weight has shape (10, 3), expected (10, 392)"),
        ("bad_layers", "unknown layer type 'dense'"),
        ("no_layers", "missing root attribute 'layers'"),
    ],
)
def test_load_errors_are_one_line(tmp_path, net, case, expected):
    path = tmp_path / "c.h5"
    checkpoint.save(path, net)
    if case == "missing":
        path.unlink()
    elif case == "directory":
        path.unlink()
        path.mkdir()
    elif case == "garbage":
        path.write_bytes(b"certainly not HDF5\n" * 10)
    elif case == "foreign_hdf5":
        path.unlink()
        with h5py.File(path, "w") as f:
            f["x"] = np.arange(3)
    elif case == "future_version":
        _rewrite(path, lambda f: f.attrs.__setitem__("format_version", 2))
    elif case == "no_params":
        _rewrite(path, lambda f: f.__delitem__("params"))
    elif case == "missing_key":
        _rewrite(path, lambda f: f["params"].__delitem__("0.weight"))
    elif case == "extra_key":
        _rewrite(path, lambda f: f["params"].create_dataset("9.weight", data=np.ones(2)))
    elif case == "wrong_shape":

        def edit(f):
            del f["params/5.weight"]
            f["params/5.weight"] = np.zeros((10, 3))

        _rewrite(path, edit)
    elif case == "bad_layers":
        _rewrite(path, lambda f: f.attrs.__setitem__("layers", json.dumps([{"type": "dense"}])))
    elif case == "no_layers":
        _rewrite(path, lambda f: f.attrs.__delitem__("layers"))
    with pytest.raises(CheckpointError) as info:
        checkpoint.load(path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert expected in message and str(path) in message and "\n" not in message


# ------------------------------------------------------------------ inspect


def _run_tool(*args):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "gls_np", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


def test_inspect_prints_summary(tmp_path, rng):
    net = nets.build("cnn3", "mnist", seed=0)
    path = tmp_path / "c.h5"
    sigma = rng.uniform(0.5, 1.5, net.n_params)
    checkpoint.save(
        path,
        net,
        arch="cnn3",
        dataset="mnist",
        config={"lr": 0.001, "epochs": 3},
        optimizer={"pgpe": {"sigma": sigma}},
        epoch=3,
        step=42,
        history=[{"loss": 2.0}, {"loss": 0.25, "acc": 0.875}],
    )
    result = _run_tool("inspect", str(path))
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "arch: cnn3" in out and "dataset: mnist" in out and "dtype: float32" in out
    assert f"total params: {net.n_params}" in out and net.n_params == 5170
    assert "conv2d" in out and "(8, 14, 14)" in out and "(10,)" in out
    assert "lr: 0.001" in out and "epochs: 3" in out
    assert "epoch: 3  step: 42" in out
    assert "loss: 0.25" in out and "acc: 0.875" in out and "loss: 2" not in out
    assert f"median {np.median(sigma):.4g}" in out and f"max {sigma.max():.4g}" in out


@pytest.mark.parametrize("content", [None, b"garbage"])
def test_inspect_bad_input_exits_2_with_one_line(tmp_path, content):
    path = tmp_path / "c.h5"
    if content is not None:
        path.write_bytes(content)
    result = _run_tool("inspect", str(path))
    assert result.returncode == 2
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0]


def test_tool_help_lists_subcommands():
    result = _run_tool("--help")
    assert result.returncode == 0 and "inspect" in result.stdout
