"""benchmarks/run.py: the workload plan, the FLOP counts and one tiny end-to-end run."""

import importlib.util
import json
import math
from pathlib import Path

import pytest

from gls_np import nets
from gls_np.layers import Conv2d, Flatten, Linear, Normalize, ReLU
from gls_np.model import Sequential

RUN = Path(__file__).resolve().parents[1] / "benchmarks" / "run.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def device_selection():
    """``main`` measures the GEMM peak in this process: its device selection must not leak."""
    from gls_np import backend

    before = backend.device()
    yield
    backend.set_device(before)


def planned(bench, *argv):
    return [
        (s["workload"], s["arch"], s["dataset"], s["batch"])
        for s in bench.plan(bench.parse_args(list(argv)))
    ]


def test_plan_covers_every_dataset_and_arch(bench):
    rows = planned(bench, "--only", "forward,bounds", "--methods", "ibp,deeppoly")
    for dataset in ("mnist", "cifar10"):
        for arch in ("cnn3", "cnn5"):
            names = {w for w, a, d, _ in rows if (a, d) == (arch, dataset)}
            assert names == {"forward", "none+grad", "ibp", "ibp+grad", "deeppoly", "deeppoly+grad"}


def test_plan_gives_every_workload_the_eps(bench):
    for argv, eps in (([], 0.1), (["--eps", "0.003"], 0.003)):
        specs = bench.plan(bench.parse_args(["--only", "bounds,pgpe,train", *argv]))
        assert specs and {s["eps"] for s in specs} == {eps}


def test_plan_runs_heavy_bounds_at_the_heavy_batch(bench):
    rows = planned(bench, "--only", "bounds", "--batch", "512", "--heavy-batch", "32")
    batch = {(w, a, d): b for w, a, d, b in rows}
    assert batch["deeppoly", "cnn3", "mnist"] == 512
    assert batch["ibp", "cnn5", "cifar10"] == 512
    for arch, dataset in (("cnn3", "cifar10"), ("cnn5", "mnist"), ("cnn5", "cifar10")):
        assert batch["deeppoly", arch, dataset] == 32
    assert batch["hbox+grad", "cnn5", "mnist"] == 32
    # HBox on CIFAR-10 (3,072 input generators) runs at its own, smaller batch
    for arch in ("cnn3", "cnn5"):
        assert batch["hbox+grad", arch, "cifar10"] == 16


def test_plan_train_group_runs_cifar_hbox_at_its_batch(bench):
    rows = planned(bench, "--only", "train", "--datasets", "cifar10", "--hbox-cifar-batch", "8")
    batch = {(w, a): b for w, a, d, b in rows}
    assert batch["hbox+grad", "cnn3"] == 8
    assert batch["deeppoly+grad", "cnn3"] == 128


def test_plan_train_group_has_grad_and_rgs_steps(bench):
    args = ["--only", "train", "--archs", "cnn3,cnn5", "--datasets", "fashion-mnist"]
    specs = bench.plan(bench.parse_args([*args, "--rgs-samples", "3"]))
    steps = {(s["workload"], s["arch"]): s for s in specs if "-step:" in s["workload"]}
    assert set(steps) == {
        (f"{mode}:{m}", "cnn3") for mode in ("grad-step", "rgs-step") for m in ("ibp", "deeppoly")
    }
    assert steps["rgs-step:ibp", "cnn3"]["rgs_samples"] == 3
    # without the forward group, the train group times cross-entropy's loss + gradient itself
    assert ("none+grad", "cnn5") in {(s["workload"], s["arch"]) for s in specs}


def test_plan_pgpe_group_pairs_vec_and_loop_for_deeppoly(bench):
    rows = planned(bench, "--only", "pgpe", "--datasets", "mnist")
    names = [w for w, *_ in rows]
    assert {"pgpe-vec:deeppoly", "pgpe-chunked:deeppoly", "pgpe-loop:deeppoly"} <= set(names)
    assert {a for _, a, _, _ in rows} == {"cnn3"}


def test_parse_args_rejects_unknown_groups_and_datasets(bench):
    with pytest.raises(SystemExit):
        bench.parse_args(["--datasets", "svhn"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "forwards"])


def tiny_cifar_like_net():
    """Normalize, conv 3->2 (k3 s2 p1), ReLU, conv 2->2 (k3 s1 p1), ReLU, Flatten, Linear 32->10."""
    layers = [
        Normalize((0.5, 0.5, 0.5), (0.25, 0.25, 0.25)),
        Conv2d(3, 2, 3, 2, 1),
        ReLU(),
        Conv2d(2, 2, 3, 1, 1),
        ReLU(),
        Flatten(),
        Linear(32, 10),
    ]
    return Sequential(layers, dtype="float64", input_shape=(3, 8, 8))


def test_flops_by_hand_on_a_tiny_normalized_net(bench):
    net = tiny_cifar_like_net()
    # conv1: 2 * (2*4*4 outputs) * (3*3*3 patch) = 1728; conv2: 2 * 32 * 18 = 1152; linear 640
    assert bench.layer_flops(net) == [0, 1728, 0, 1152, 0, 0, 640]
    F = 1728 + 1152 + 640
    assert bench.flops(net, "forward") == F
    assert bench.flops(net, "none+grad") == 3 * F - 1728
    assert bench.flops(net, "ibp") == 2 * F
    assert bench.flops(net, "hbox") == (3 * 8 * 8 + 2) * F
    assert bench.flops(net, "crown-ibp+grad") == 3 * 11 * F
    # ReLU 2 (Normalize + one conv before it) takes IBP's bounds: 2 * 1728. ReLU 4's 32
    # neurons go back as patches: through conv2 p=1 -> 3 (9 < 16): 2*2*1*2*9 = 72, through
    # conv1 p=3 -> 7 (49 < 64): 2*2*9*3*9 = 972. The 9 spec rows: 9 F.
    assert bench.flops(net, "deeppoly") == 2 * 1728 + 32 * (72 + 972) + 9 * F
    assert bench.flops(net, "pgpe-loop:deeppoly") == bench.flops(net, "deeppoly")
    assert bench.flops(net, "rgs-step:ibp") == bench.flops(net, "ibp+grad") == 6 * F


def test_flops_of_the_cifar_networks(bench):
    cnn3 = nets.build("cnn3", "cifar10")
    # Normalize, conv 3->8 k5 s2 to 8x16x16, conv 8->8 k4 s2 to 8x8x8, linear 512->10
    f = bench.layer_flops(cnn3)
    assert f[0] == 0 and cnn3.layers[0].type == "normalize"
    assert [v for v in f if v] == [2 * 2048 * 75, 2 * 512 * 128, 2 * 512 * 10]
    cnn5 = nets.build("cnn5", "cifar10")
    assert sum(bench.layer_flops(cnn5)) == 2 * (
        4096 * 75 + 1024 * 256 + 512 * 256 + 512 * 512 + 512 * 10
    )
    for net in (cnn3, cnn5):
        dense = bench.flops(net, "crown-ibp") + sum(
            math.prod(net.shapes(net.input_shape)[j]) * sum(bench.layer_flops(net)[:j])
            for j, layer in enumerate(net.layers)
            if layer.type == "relu"
        )
        assert 0 < bench.flops(net, "deeppoly") < dense  # patches and IBP's exact first ReLU


def test_end_to_end_forward_on_cifar10(bench, tmp_path, capsys):
    out = tmp_path / "bench.json"
    bench.main(
        [
            "--only",
            "forward",
            "--archs",
            "cnn3",
            "--datasets",
            "cifar10",
            "--batch",
            "4",
            "--repeats",
            "1",
            "--gemm-size",
            "128",
            "--json",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    assert result["gemm_gflops"] > 0
    rows = result["rows"]
    assert [(r["workload"], r["dataset"]) for r in rows] == [
        ("forward", "cifar10"),
        ("none+grad", "cifar10"),
    ]
    for r in rows:
        assert "error" not in r, r.get("error")
        assert r["images_per_s"] > 0 and r["gflops"] > 0 and r["peak_rss_mb"] > 0
        assert r["unit"] == "images" and r["images_per_call"] == 4
    assert "cifar10" in capsys.readouterr().out


def test_rgs_step_counts_network_images(bench):
    spec = {
        "arch": "cnn3",
        "dataset": "mnist",
        "eps": 0.1,
        "repeats": 1,
        "workload": "rgs-step:ibp",
        "batch": 4,
        "rgs_samples": 3,
    }
    row = bench.run_workload(spec, timeout=120)
    assert "error" not in row, row.get("error")
    assert row["unit"] == "network-images" and row["images_per_call"] == 12
    assert row["images_per_s"] == pytest.approx(12 / row["call_s"])


def test_plan_gives_every_workload_the_device(bench):
    for argv, device in (([], "cpu"), (["--device", "gpu"], "gpu")):
        specs = bench.plan(bench.parse_args(["--only", "forward,bounds,pgpe,train,mpi", *argv]))
        assert specs and {s["device"] for s in specs} == {device}


def _cupy_with_a_device() -> bool:
    try:
        import cupy

        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:
        return False


@pytest.mark.skipif(_cupy_with_a_device(), reason="this machine has CuPy and a GPU")
def test_device_gpu_without_a_gpu_stops_with_one_line(bench):
    with pytest.raises(SystemExit) as info:
        bench.main(
            ["--only", "forward", "--archs", "cnn3", "--datasets", "mnist", "--device", "gpu"]
        )
    message = str(info.value)
    assert "\n" not in message and ("CuPy" in message or "CUDA" in message), message


@pytest.mark.gpu
def test_end_to_end_on_the_gpu(bench, tmp_path):
    out = tmp_path / "bench.json"
    bench.main(
        [
            "--only",
            "forward,bounds,pgpe",
            "--archs",
            "cnn3",
            "--datasets",
            "mnist",
            "--batch",
            "8",
            "--pgpe-batch",
            "8",
            "--popsize",
            "4",
            "--repeats",
            "1",
            "--device",
            "gpu",
            "--json",
            str(out),
        ]
    )
    result = json.loads(out.read_text())
    rows = result["rows"]
    assert len(rows) == 2 + 2 * 4 + 3 * 3
    for r in rows:
        assert "error" not in r, (r["workload"], r.get("error"))
        assert r["device"] == "gpu" and r["images_per_s"] > 0 and r["peak_gpu_mb"] > 0
    # numbers from the NumPy emulator (tests/gpu_emulator) say so
    import cupy

    assert result["emulated_gpu"] is bool(getattr(cupy, "EMULATED", False))
    if result["emulated_gpu"]:  # the emulator counts what a GPU would launch and copy back
        assert all(r["device_ops"] > 0 and r["transfers"] >= 0 for r in rows)


def test_plan_mpi_group_has_pgpe_and_data_parallel_grad_steps(bench):
    specs = bench.plan(
        bench.parse_args(["--only", "mpi", "--archs", "cnn3", "--datasets", "mnist"])
    )
    grad = {(s["method"], s["ranks"]) for s in specs if s.get("optimizer") == "grad"}
    assert grad == {(m, r) for m in ("ibp", "deeppoly") for r in (1, 2)}
    pgpe = {(s["ranks"], s["comm"]) for s in specs if "optimizer" not in s}
    assert pgpe == {(1, "allreduce"), (2, "allreduce"), (2, "seeds")}
