"""Standard training: a tiny run, exact resume, Ctrl-C and NaN safety."""

import json

import numpy as np
import pytest

from gls_np import checkpoint, data, memory, objectives, train
from gls_np.config import Config, ConfigError


def tiny(tmp_path, name, **kw):
    base = dict(
        cert_size=0,
        arch="cnn3",
        dataset="mnist",
        epochs=2,
        batch_size=64,
        lr=2e-3,
        train_size=256,
        test_size=100,
        seed=3,
        out=str(tmp_path / name),
        data_dir=str(tmp_path / "data"),
    )
    base.update(kw)
    return Config(**base)


@pytest.fixture(autouse=True)
def quiet(monkeypatch, shared_dir):
    monkeypatch.setenv("GLS_NP_PROGRESS", "0")
    monkeypatch.setenv("GLS_NP_DATA_MIRROR", str(shared_dir / "data"))


def test_tiny_run_writes_checkpoint_config_and_metrics(tmp_path):
    cfg = tiny(tmp_path, "a")
    last = train.run(cfg)
    out = tmp_path / "a"
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2] and rows[-1] == last
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    assert 0.0 <= last["test_acc"] <= 1.0
    assert last["ranks"] == 1 and "comm_bytes_per_step" not in last  # one process sends nothing
    config = json.loads((out / "config.json").read_text())
    assert config["seed"] == 3
    # the automatic budget, resolved at the start, is recorded where the run's settings go
    assert config["max_memory_gb"] > 0 and all(
        r["max_memory_gb"] == config["max_memory_gb"] for r in rows
    )
    net, meta = checkpoint.load(out / "checkpoint.h5")
    assert meta.epoch == 2 and meta.step == 8 and len(meta.history) == 2
    assert meta.config["arch"] == "cnn3" and meta.optimizer["opt"]["0"]["t"] == 8
    x, y = data.load("mnist", "test", tmp_path / "data")
    assert train.evaluate(net, x[:100], y[:100]) == pytest.approx(last["test_acc"])


def test_keep_epochs_copies_each_finished_epoch(tmp_path):
    train.run(tiny(tmp_path, "k", keep_epochs=True))
    out = tmp_path / "k"
    assert sorted(p.name for p in out.glob("checkpoint*.h5")) == [
        "checkpoint-e001.h5",
        "checkpoint-e002.h5",
        "checkpoint.h5",
    ]
    assert checkpoint.load(out / "checkpoint-e001.h5")[1].step == 4
    last, _ = checkpoint.load(out / "checkpoint.h5")
    np.testing.assert_array_equal(checkpoint.load(out / "checkpoint-e002.h5")[0].theta, last.theta)
    assert not list(out.glob("*.tmp"))


def test_resume_reaches_the_uninterrupted_result(tmp_path, monkeypatch):
    full = tiny(tmp_path, "full")
    train.run(full)
    part = tiny(tmp_path, "part", max_steps=5)
    train.run(part)
    assert checkpoint.load(tmp_path / "part" / "checkpoint.h5")[1].step == 5
    picked = json.loads((tmp_path / "part" / "config.json").read_text())["max_memory_gb"]
    # free memory changed meanwhile: the resumed run keeps the budget it started with
    monkeypatch.setattr(memory, "free_memory_bytes", lambda: 3 * picked * 1e9 + 7e9)
    train.run(tiny(tmp_path, "part", resume=str(tmp_path / "part" / "checkpoint.h5")))
    assert json.loads((tmp_path / "part" / "config.json").read_text())["max_memory_gb"] == picked
    a = checkpoint.load(tmp_path / "full" / "checkpoint.h5")[0].theta
    b = checkpoint.load(tmp_path / "part" / "checkpoint.h5")[0].theta
    np.testing.assert_array_equal(a, b)


def test_ctrl_c_writes_a_resumable_checkpoint(tmp_path, monkeypatch):
    real = data.batches

    def interrupted(*args, **kw):
        for i, batch in enumerate(real(*args, **kw)):
            if i == 2:
                raise KeyboardInterrupt
            yield batch

    monkeypatch.setattr(data, "batches", interrupted)
    with pytest.raises(train.TrainingInterrupted, match="checkpoint written"):
        train.run(tiny(tmp_path, "c"))
    net, meta = checkpoint.load(tmp_path / "c" / "checkpoint.h5")
    assert meta.step == 2 and meta.epoch == 0


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    cfg = tiny(tmp_path, "n", epochs=1)
    train.run(cfg)
    before = checkpoint.load(tmp_path / "n" / "checkpoint.h5")[0].theta
    real = objectives.make
    monkeypatch.setattr(
        objectives, "make", lambda *a, **k: lambda *b: real(*a, **k)(*b) * float("nan")
    )
    with pytest.raises(train.TrainingError, match="loss is nan"):
        train.run(tiny(tmp_path, "n", epochs=2, resume=str(tmp_path / "n" / "checkpoint.h5")))
    np.testing.assert_array_equal(
        checkpoint.load(tmp_path / "n" / "checkpoint.h5")[0].theta, before
    )


@pytest.mark.parametrize(
    "kw,match",
    [
        (dict(eps=-0.1), "--eps must be >= 0"),
        (dict(epochs=0), "--epochs must be > 0"),
        (dict(optimizer="pgpe", popsize=7), "--popsize must be even"),
        (dict(arch="cnn4"), "--arch 'cnn4' is unknown"),
        (dict(comm="ring"), "--comm 'ring' is unknown"),
        (dict(max_memory_gb=-1.0), "--max-memory-gb must be >= 0"),
    ],
)
def test_config_errors(kw, match):
    with pytest.raises(ConfigError, match=match):
        Config(**kw).validate()


def test_memory_budget_defaults_to_automatic():
    assert Config().max_memory_gb == 0 and Config().pop_chunk == 0
    assert Config(max_memory_gb=0).validate().max_memory_gb == 0


RELAXES = ["none", "pgd", "ibp", "hbox", "crown-ibp", "deeppoly", "sabr", "mtl-ibp"]


@pytest.mark.parametrize("optimizer", ["grad", "rgs", "pgpe"])
@pytest.mark.parametrize("relax", RELAXES)
def test_every_relaxation_and_optimizer_runs_a_step(relax, optimizer, tmp_path):
    cfg = tiny(
        tmp_path,
        "combo",
        relax=relax,
        optimizer=optimizer,
        eps=0.05,
        epochs=1,
        batch_size=8,
        train_size=16,
        test_size=8,
        cert_size=4,
        max_steps=1,
        popsize=4,
        pgd_steps=2,
    )
    last = train.run(cfg)
    assert last["step"] == 1 and np.isfinite(last["train_loss"])
    assert ("cert_acc" in last) and 0 <= last["cert_acc"] <= last["adv_acc"] + 1e-12
    _, meta = checkpoint.load(tmp_path / "combo" / "checkpoint.h5")
    if optimizer == "pgpe":
        assert meta.optimizer["sigma"].shape == (5170,) and meta.optimizer["t"] == 1


def test_pgpe_and_rgs_resume_exactly(tmp_path):
    for optimizer in ("pgpe", "rgs"):
        kw = dict(
            relax="ibp",
            optimizer=optimizer,
            eps=0.05,
            epochs=1,
            batch_size=32,
            train_size=128,
            popsize=8,
            cert_size=0,
        )
        train.run(tiny(tmp_path, f"{optimizer}-full", **kw))
        train.run(tiny(tmp_path, f"{optimizer}-part", max_steps=2, **kw))
        train.run(
            tiny(
                tmp_path,
                f"{optimizer}-part",
                resume=str(tmp_path / f"{optimizer}-part" / "checkpoint.h5"),
                **kw,
            )
        )
        a = checkpoint.load(tmp_path / f"{optimizer}-full" / "checkpoint.h5")[0].theta
        b = checkpoint.load(tmp_path / f"{optimizer}-part" / "checkpoint.h5")[0].theta
        np.testing.assert_array_equal(a, b)


def test_presets_follow_the_paper():
    from gls_np.config import preset

    grad = preset("paper", "grad", "mnist", 0.1)
    assert grad["lr"] == 5e-4 and grad["epochs"] == 70 and grad["eps_ramp"] == 20
    assert grad["lr_milestones"] == (50, 60) and grad["lr_factor"] == 0.2 and grad["init"] == "ibp"
    assert preset("paper", "grad", "cifar10", 2 / 255)["lr_milestones"] == (120, 140)
    pgpe = preset("paper", "pgpe", "mnist", 0.1)
    assert (pgpe["lr"], pgpe["epochs"], pgpe["batch_size"], pgpe["popsize"], pgpe["sigma"]) == (
        3e-4,
        150,
        512,
        256,
        1e-3,
    )
    assert pgpe["eps_ramp"] == 0 and preset("paper", "pgpe", "mnist", 0.3)["eps_ramp"] == 50
    rgs = preset("paper", "rgs", "mnist", 0.3)
    assert rgs["epochs"] == 80 and rgs["lr_milestones"] == (60, 70) and rgs["batch_size"] == 256
