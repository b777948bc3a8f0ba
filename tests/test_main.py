"""``python -m gls_np certify`` and ``tightness`` on a real checkpoint and real MNIST samples."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gls_np import checkpoint, nets
from gls_np.certify import report

ROOT = Path(__file__).resolve().parents[1]


def run_tool(*args, cwd=None):
    env = dict(os.environ, PYTHONPATH=str(ROOT), GLS_NP_PROGRESS="0")
    return subprocess.run(
        [sys.executable, "-m", "gls_np", *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=cwd,
        timeout=300,
    )


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, shared_dir):
    os.environ.setdefault("GLS_NP_DATA_MIRROR", str(shared_dir / "data"))
    path = tmp_path_factory.mktemp("run") / "checkpoint.h5"
    net = nets.build("cnn3", "mnist", init="ibp", seed=0)
    checkpoint.save(path, net, arch="cnn3", dataset="mnist", config={"eps": 0.02})
    return path


def test_certify_writes_the_table_and_the_summary(ckpt, tmp_path):
    res = run_tool(
        "certify", str(ckpt), "--n", "6", "--start", "3", "--timeout", "2",
        "--pgd-steps", "5", "--pgd-restarts", "1", "--alpha-steps", "2", "--out", str(tmp_path),
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert "natural" in res.stdout and "alpha-crown" in res.stdout
    with open(tmp_path / "certify-eps0.02.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["index"]) for r in rows] == list(range(3, 9))
    assert list(rows[0]) == list(report.COLUMNS)
    summary = json.loads((tmp_path / "certify-eps0.02.json").read_text())
    assert summary["samples"] == 6 and summary["eps"] == 0.02 and summary["dataset"] == "mnist"
    assert summary["max_memory_gb"] >= 0.25  # picked from free memory, and recorded
    cert = sum(r["status"] == "certified" for r in rows)
    assert summary["certified_accuracy"] == cert / 6
    assert summary["certified_accuracy"] <= summary["adversarial_accuracy"]
    assert summary["adversarial_accuracy"] <= summary["natural_accuracy"]


def test_tightness_writes_curves_and_a_plot(ckpt, tmp_path):
    res = run_tool(
        "tightness", str(ckpt), "--n", "8", "--points", "3", "--eps-max", "0.02",
        "--methods", "ibp,deeppoly", "--out", str(tmp_path), "--max-memory-gb", "0.5",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads((tmp_path / "tightness.json").read_text())
    assert result["max_memory_gb"] == 0.5
    assert result["eps"] == [0.0, 0.01, 0.02]
    assert set(result["methods"]) == {"ibp", "deeppoly"}
    assert (tmp_path / "tightness.png").read_bytes()[:4] == b"\x89PNG"
    assert "AUC" in res.stdout


@pytest.mark.parametrize(
    "args,match",
    [
        (["--n", "0"], "--n must be >= 1"),
        (["--start", "20000"], "past the end"),
        (["--timeout", "-1"], "timeout must be >= 0"),
        (["--dtype", "float16"], "invalid choice"),
        (["--max-memory-gb", "-1"], "max_memory_gb must be >= 0"),
    ],
)
def test_certify_refuses_bad_arguments_in_one_line(ckpt, args, match):
    res = run_tool("certify", str(ckpt), *args)
    assert res.returncode == 2
    assert match in res.stderr and "Traceback" not in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_tightness_refuses_unknown_methods(ckpt):
    res = run_tool("tightness", str(ckpt), "--methods", "ibp,zonotope")
    assert res.returncode == 2 and "zonotope" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


def test_a_missing_checkpoint_is_one_line(tmp_path):
    res = run_tool("certify", str(tmp_path / "none.h5"))
    assert res.returncode == 2 and "none.h5" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1
