"""The entry point mpi_run.py: one-line errors, a tiny run and resume, and runs under mpiexec."""

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, env_extra=None, tmp_path=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), GLS_NP_PROGRESS="0")
    env.update(env_extra or {})
    return subprocess.run(
        [sys.executable, str(ROOT / "mpi_run.py"), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args,match",
    [
        (["--arch", "cnn4"], "invalid choice: 'cnn4'"),
        (["--eps", "-0.1"], "--eps must be >= 0"),
        (["--epochs", "x"], "invalid int value"),
        (["--resume", "nowhere/checkpoint.h5"], "no checkpoint at nowhere/checkpoint.h5"),
        (["--optimizer", "pgpe", "--popsize", "3"], "--popsize must be even"),
        (["--init-from", "nowhere.h5"], "--init-from: no checkpoint at nowhere.h5"),
        (["--preset", "fast"], "invalid choice: 'fast'"),
        (["--batch-size", "0"], "--batch-size must be > 0"),
        (["--comm", "ring"], "invalid choice: 'ring'"),
    ],
)
def test_bad_arguments_fail_in_one_line(args, match, tmp_path):
    res = run_cli(*args, tmp_path=tmp_path)
    assert res.returncode == 2
    assert match in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    assert "Traceback" not in res.stderr


def test_help_documents_every_option(tmp_path):
    res = run_cli("--help", tmp_path=tmp_path)
    assert res.returncode == 0
    for flag in [
        "--arch",
        "--dataset",
        "--relax",
        "--optimizer",
        "--eps",
        "--epochs",
        "--batch-size",
        "--lr",
        "--seed",
        "--device",
        "--out",
        "--resume",
        "--data-dir",
        "--train-size",
        "--max-steps",
    ]:
        assert flag in res.stdout


def test_a_tiny_run_and_resume_from_the_command_line(tmp_path, shared_dir):
    env = {"GLS_NP_DATA_MIRROR": str(shared_dir / "data")}
    common = [
        "--train-size",
        "128",
        "--test-size",
        "50",
        "--batch-size",
        "64",
        "--out",
        "run",
        "--data-dir",
        str(tmp_path / "data"),
    ]
    res = run_cli(*common, "--epochs", "1", env_extra=env, tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "done:" in res.stdout and (tmp_path / "run" / "checkpoint.h5").is_file()
    res = run_cli(*common, "--epochs", "2", "--resume", env_extra=env, tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "epoch 2" in res.stdout


# ------------------------------------------------------------------ under mpiexec

# Runs mpi_run.main once per argument list, in one MPI job; a rank-1 failure can be injected
# at its N-th loss evaluation with GLS_NP_TEST_FAIL_AT=N.
DRIVER = """
import json, os, sys
import mpi_run
from gls_np import distributed, objectives

fail_at = int(os.environ.get("GLS_NP_TEST_FAIL_AT", "0"))
real = objectives.make

def make(*a, **k):
    loss, calls = real(*a, **k), [0]
    def maybe_failing(*b):
        calls[0] += 1
        if distributed.world().rank == 1 and calls[0] == fail_at:
            raise RuntimeError("injected failure")
        return loss(*b)
    return maybe_failing

objectives.make = make
for argv in json.loads(sys.argv[1]):
    rc = mpi_run.main(argv)
    if rc:
        sys.exit(rc)
"""


def mpiexec_path():
    pytest.importorskip("mpi4py")
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.is_file() else shutil.which("mpiexec")
    if not found:
        pytest.skip("no mpiexec (pip install mpich)")
    return found


def run_mpi(n, runs, tmp_path, env_extra=None, timeout=240):
    (tmp_path / "driver.py").write_text(DRIVER)
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PMI_", "MPI_LOCAL", "HYDRA_", "OMPI_"))
    }
    # a hang fails the test instead of the suite: Hydra kills the job after this many seconds
    env.update(PYTHONPATH=str(ROOT), GLS_NP_PROGRESS="0", MPIEXEC_TIMEOUT=str(timeout))
    env.update(env_extra or {})
    cmd = [mpiexec_path(), "-launcher", "fork", "-n", str(n), sys.executable, "driver.py"]
    t0 = time.monotonic()
    res = subprocess.run(
        [*cmd, json.dumps(runs)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=timeout + 30,
    )
    return res, time.monotonic() - t0


def tiny_args(tmp_path, name, *extra):
    return [
        "--relax", "ibp", "--eps", "0.05", "--batch-size", "16", "--train-size", "48",
        "--test-size", "20", "--cert-size", "10", "--popsize", "8", "--dtype", "float64",
        "--seed", "3", "--data-dir", str(tmp_path / "data"), "--out", str(tmp_path / name),
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_four_ranks_train_like_one_process(tmp_path, shared_dir, monkeypatch):
    from gls_np import checkpoint, train
    from gls_np.config import Config
    from gls_np.distributed import SingleProcess

    monkeypatch.setenv("GLS_NP_DATA_MIRROR", str(shared_dir / "data"))
    monkeypatch.setenv("GLS_NP_PROGRESS", "0")
    runs = {
        # one pair per rank; RGS's 2 points, each on 2 halves of a batch of 15
        "pgpe": ["--optimizer", "pgpe", "--comm", "allreduce"],
        "rgs": ["--optimizer", "rgs", "--relax", "pgd", "--pgd-steps", "2", "--batch-size", "15"],
    }
    res, _ = run_mpi(4, [tiny_args(tmp_path, k, *v) for k, v in runs.items()], tmp_path)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("done:") == 2 and "ranks 4" in res.stdout
    assert "mpi: 4 ranks" in res.stderr and "threads:" in res.stderr
    for name in runs:
        net, meta = checkpoint.load(tmp_path / name / "checkpoint.h5")
        cfg = Config.from_dict({**meta.config, "out": str(tmp_path / f"{name}-one")})
        train.run(cfg, SingleProcess())
        one = checkpoint.load(tmp_path / f"{name}-one" / "checkpoint.h5")[0]
        np.testing.assert_allclose(net.theta, one.theta, rtol=1e-9, atol=1e-12, err_msg=name)


def test_a_failing_rank_aborts_the_job_and_a_single_process_resumes(tmp_path, shared_dir):
    env = {"GLS_NP_DATA_MIRROR": str(shared_dir / "data")}
    # 3 steps per epoch: rank 1 fails in epoch 2, after epoch 1's checkpoint was written
    args = tiny_args(tmp_path, "run", "--optimizer", "pgpe", "--epochs", "2")
    res, seconds = run_mpi(2, [args], tmp_path, {**env, "GLS_NP_TEST_FAIL_AT": "5"})
    assert res.returncode != 0
    assert "rank 1: RuntimeError: injected failure" in res.stderr
    assert seconds < 60, f"the job took {seconds:.0f} s to die"
    res = run_cli(*args, "--resume", env_extra=env, tmp_path=tmp_path)
    assert res.returncode == 0, res.stderr
    assert "epoch 2, step 6" in res.stdout and "ranks 1" in res.stdout


@pytest.mark.parametrize(
    "local,given,expected,word",
    [
        ("2", None, "1", "per rank"),  # cores // ranks by default
        ("2", "8", "1", "oversubscribe"),  # a user count that would oversubscribe is lowered
        ("1", "1", "1", "as set by the user"),  # one that fits is kept
    ],
)
def test_blas_threads_never_oversubscribe_the_cores(local, given, expected, word, monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import mpi_run

    monkeypatch.setattr(mpi_run, "_threads_note", [])
    monkeypatch.setattr(mpi_run.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setenv("MPI_LOCALNRANKS", local)
    for var in mpi_run.THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    if given is not None:
        monkeypatch.setenv("OPENBLAS_NUM_THREADS", given)
    note = mpi_run.limit_blas_threads()
    assert word in note
    assert os.environ["OPENBLAS_NUM_THREADS"] == expected


def test_a_lone_process_on_a_multicore_cpu_is_told_about_ranks(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT))
    import mpi_run

    hint = mpi_run.ranks_hint(2, 1, "cpu")
    assert "mpiexec -n 2" in hint and "\n" not in hint
    assert mpi_run.ranks_hint(2, 2, "cpu") is None  # already one rank per core
    assert mpi_run.ranks_hint(1, 1, "cpu") is None
    assert mpi_run.ranks_hint(8, 1, "gpu") is None
