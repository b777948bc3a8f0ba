"""The paper's architectures (Table 5) and the two initialisations."""

import math

import numpy as np
import pytest

from gls_np import nets


def conv_summary(net):
    return [
        (s["out_channels"], s["kernel_size"], s["stride"], s["padding"])
        for s in net.layer_specs()
        if s["type"] == "conv2d"
    ]


def test_cnn3_and_cnn5_follow_table_5():
    cnn3 = nets.build("cnn3", "mnist")
    assert conv_summary(cnn3) == [(8, 5, 2, 2), (8, 4, 2, 1)]
    assert [s["type"] for s in cnn3.layer_specs()] == [
        "conv2d",
        "relu",
        "conv2d",
        "relu",
        "flatten",
        "linear",
    ]
    assert cnn3.layer_specs()[-1] == {"type": "linear", "in_features": 392, "out_features": 10}
    cnn5 = nets.build("cnn5", "fashion-mnist")
    assert conv_summary(cnn5) == [(16, 5, 2, 2), (16, 4, 2, 1), (32, 4, 2, 1)]
    fcs = [
        (s["in_features"], s["out_features"]) for s in cnn5.layer_specs() if s["type"] == "linear"
    ]
    assert fcs == [(288, 512), (512, 10)]
    assert cnn5.layer_specs()[-2] == {"type": "relu"}


def test_cifar_networks_start_with_normalize():
    net = nets.build("cnn3", "cifar10")
    first = net.layer_specs()[0]
    assert first["type"] == "normalize" and len(first["mean"]) == 3
    assert net.layer_specs()[1]["in_channels"] == 3
    assert net.layer_specs()[-1]["in_features"] == 8 * 8 * 8
    assert "0.weight" not in net.state_dict() and "1.weight" in net.state_dict()


def test_cnn7_builds():
    net = nets.build("cnn7", "mnist")
    assert conv_summary(net)[2] == (128, 3, 2, 1) and net.shapes((1, 28, 28))[-1] == (10,)


def test_default_init_matches_pytorch_bounds():
    net = nets.build("cnn5", "mnist", dtype="float64", seed=0)
    for e in net.param_spec.entries:
        bound = 1 / math.sqrt(net.layers[e.layer].fan_in())
        w = net.theta[e.offset : e.offset + e.size]
        assert np.abs(w).max() <= bound
        if e.size > 1000:
            assert np.isclose(w.std(), bound / math.sqrt(3), rtol=0.05)


def test_ibp_init_std_and_last_layer_kept():
    net = nets.build("cnn5", "mnist", dtype="float64", init="ibp", seed=0)
    weights = [e for e in net.param_spec.entries if e.name == "weight"]
    for e in weights[:-1]:
        std = math.sqrt(2 * math.pi) / net.layers[e.layer].fan_in()
        w = net.theta[e.offset : e.offset + e.size]
        assert np.isclose(w.std(), std, rtol=0.1)
    last = weights[-1]
    assert np.abs(net.theta[last.offset : last.offset + last.size]).max() <= 1 / math.sqrt(512)


def test_seed_reproducible_and_dtype():
    a, b = nets.build("cnn3", "mnist", seed=5), nets.build("cnn3", "mnist", seed=5)
    np.testing.assert_array_equal(a.theta, b.theta)
    assert a.theta.dtype == np.float32
    assert not np.array_equal(a.theta, nets.build("cnn3", "mnist", seed=6).theta)


@pytest.mark.parametrize(
    "args,match", [(("cnn4", "mnist"), "unknown arch"), (("cnn3", "svhn"), "unknown dataset")]
)
def test_bad_names(args, match):
    with pytest.raises(ValueError, match=match):
        nets.build(*args)
    with pytest.raises(ValueError, match="unknown init"):
        nets.build("cnn3", "mnist", init="xavier")
