"""Training over MPI ranks equals one process: PGPE (both --comm modes), GRAD, RGS, evaluation.

Run by ``make test-mpi``: ``mpiexec -n 2 python -m pytest -m mpi``, so both ranks run every test
function at once. Each test first does the collective work (a run over ``distributed.world()``),
then rank 0 computes the one-process reference in-process with ``SingleProcess`` and compares;
no collective follows a comparison, so a failing assertion cannot leave the other rank waiting.
Run directories are rank 0's ``tmp_path``, broadcast so that both ranks use the same one.
"""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from gls_np import checkpoint, data, distributed, nets, train
from gls_np.config import Config
from gls_np.distributed import SingleProcess

pytestmark = pytest.mark.mpi

POPSIZE = 8


@pytest.fixture(scope="module")
def comm():
    world = distributed.world()
    if world.size < 2:
        pytest.skip("needs mpiexec -n 2 or more")
    return world


@pytest.fixture(autouse=True)
def quiet(monkeypatch, shared_dir):
    monkeypatch.setenv("GLS_NP_PROGRESS", "0")
    monkeypatch.setenv("GLS_NP_DATA_MIRROR", str(shared_dir / "data"))


@pytest.fixture
def run_dir(comm, tmp_path) -> Path:
    return Path(comm.bcast(str(tmp_path)))


def tiny(root: Path, name: str, **kw) -> Config:
    base = dict(
        arch="cnn3",
        dataset="mnist",
        relax="ibp",
        eps=0.05,
        epochs=1,
        batch_size=16,
        train_size=48,
        test_size=20,
        cert_size=10,
        popsize=POPSIZE,
        pgd_steps=2,
        dtype="float64",
        seed=3,
        out=str(root / name),
        data_dir=str(root / "data"),
    )
    base.update(kw)
    return Config(**base)


def theta_of(root: Path, name: str):
    return checkpoint.load(root / name / "checkpoint.h5")[0].theta


def test_collectives(comm):
    R, r = comm.size, comm.rank
    own = comm.shard(7)
    assert [s for s in comm.allgather((own.start, own.stop))] == [
        (p.start, p.stop) for p in (distributed.shard_slice(7, R, q) for q in range(R))
    ]
    sent = comm.bytes_sent
    np.testing.assert_array_equal(
        comm.allreduce(np.arange(3) * (r + 1)), np.arange(3) * R * (R + 1) / 2
    )
    assert comm.bytes_sent - sent == 3 * 8
    rows = np.arange(14.0).reshape(7, 2)
    np.testing.assert_array_equal(comm.gather_shards(rows[own], 7), rows)
    gathered = comm.gather_rows([{"index": i} for i in range(own.start, own.stop)])
    assert gathered == ([{"index": i} for i in range(7)] if r == 0 else None)
    assert comm.bcast(r) == 0
    comm.check_same(np.ones(3), "ones")
    with pytest.raises(RuntimeError, match="differs between rank 0 and rank"):
        comm.check_same(np.full(3, r), "the rank")


@pytest.mark.parametrize(
    "kw",
    [
        dict(optimizer="pgpe", comm="allreduce"),
        dict(optimizer="pgpe", comm="seeds"),
        dict(optimizer="grad", relax="pgd"),
        dict(optimizer="rgs", relax="pgd"),
    ],
    ids=["pgpe-allreduce", "pgpe-seeds", "grad-pgd", "rgs-pgd"],
)
def test_three_steps_equal_one_process(comm, run_dir, kw):
    cfg = tiny(run_dir, "ranks", **kw)
    last = train.run(cfg, comm)
    assert last["step"] == 3 and last["ranks"] == comm.size
    D = nets.build("cnn3", "mnist").n_params
    per_rank = 8 * POPSIZE // comm.size  # this rank's r+ and r- as float64
    expected_bytes = {
        "pgpe-allreduce": per_rank + 2 * 8 * D,
        "pgpe-seeds": per_rank,  # popsize, not parameters
        "grad": 8 * (D + 1),
        "rgs": 8 * (D + 1),
    }
    key = f"pgpe-{cfg.comm}" if cfg.optimizer == "pgpe" else cfg.optimizer
    assert last["comm_bytes_per_step"] == expected_bytes[key]
    if comm.rank != 0:
        return
    one = train.run(replace(cfg, out=str(run_dir / "one")), SingleProcess())
    np.testing.assert_allclose(
        theta_of(run_dir, "ranks"), theta_of(run_dir, "one"), rtol=1e-9, atol=1e-12
    )
    for k in ("test_acc", "adv_acc", "cert_acc"):
        assert last[k] == one[k], k
    assert last["train_loss"] == pytest.approx(one["train_loss"], rel=1e-9)


def test_resume_across_rank_counts(comm, run_dir):
    # two steps on R ranks, the third on one; and two on one, the third on R ranks
    kw = dict(optimizer="pgpe", comm="allreduce")
    train.run(tiny(run_dir, "many-then-one", max_steps=2, **kw), comm)
    if comm.rank == 0:
        train.run(tiny(run_dir, "one-then-many", max_steps=2, **kw), SingleProcess())
    comm.barrier()
    resume = str(run_dir / "one-then-many" / "checkpoint.h5")
    train.run(tiny(run_dir, "one-then-many", resume=resume, **kw), comm)
    if comm.rank != 0:
        return
    resume = str(run_dir / "many-then-one" / "checkpoint.h5")
    train.run(tiny(run_dir, "many-then-one", resume=resume, **kw), SingleProcess())
    train.run(tiny(run_dir, "one", **kw), SingleProcess())
    for name in ("many-then-one", "one-then-many"):
        assert checkpoint.load(run_dir / name / "checkpoint.h5")[1].step == 3
        np.testing.assert_allclose(
            theta_of(run_dir, name), theta_of(run_dir, "one"), rtol=1e-9, atol=1e-12
        )


def test_evaluation_splits_the_samples(comm, run_dir):
    net = nets.build("cnn3", "mnist", dtype="float64", init="ibp", seed=1)
    x, y = data.load("mnist", "test", run_dir / "data")
    x, y = x[:23], y[:23]
    split = train.robustness(
        net, x, y, 0.05, "ibp", (0, 2, 0), batch_size=5, pgd_steps=2, comm=comm
    )
    acc = train.evaluate(net, x, y, batch_size=4, comm=comm)
    one = train.robustness(net, x, y, 0.05, "ibp", (0, 2, 0), batch_size=5, pgd_steps=2)
    assert split == one
    assert acc == train.evaluate(net, x, y)


def test_ranks_out_of_sync_are_detected(comm):
    with pytest.raises(train.TrainingError, match="ranks out of sync: the center differs"):
        train._check_in_sync(comm, {"center": np.full(4, float(comm.rank)), "t": 0})


def test_certification_split_over_ranks_equals_one_process(comm):
    from gls_np.certify import cascade

    net = nets.build("cnn3", "mnist", init="ibp", dtype="float64", seed=1)
    x, y = data.load("mnist", "test")
    x, y = x[:10], y[:10]
    opts = cascade.Options(eps=0.02, pgd_steps=5, pgd_restarts=1, alpha_steps=2, timeout=0)
    split, steps = cascade.certify(net, x, y, np.arange(10), opts, batch_size=3, comm=comm)
    if comm.rank:
        assert split is None and steps is None
        return
    one, _ = cascade.certify(net, x, y, np.arange(10), opts, batch_size=3)
    strip = lambda rs: [{k: repr(v) for k, v in r.items() if k != "seconds"} for r in rs]  # noqa: E731
    assert strip(split) == strip(one)
    assert steps["natural"][1] == 10
