"""The entry point mpi_run.py: every bad argument gives one line, exit 2, no traceback."""

import os
import subprocess
import sys
from pathlib import Path

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
