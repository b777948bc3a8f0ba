"""Sequential: flat theta, population forward, PyTorch-compatible state_dict."""

import numpy as np
import pytest

from gls_np import nets
from gls_np.model import from_layers
from gls_np.tensor import Tensor


@pytest.mark.parametrize(
    "arch,dataset", [("cnn3", "mnist"), ("cnn5", "mnist"), ("cnn3", "cifar10")]
)
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-12), ("float32", 1e-5)])
def test_population_forward_equals_member_forwards(arch, dataset, dtype, rtol, rng):
    net = nets.build(arch, dataset, dtype=dtype, seed=1)
    x = rng.random((3, *net.input_shape)).astype(dtype)
    P = 4
    params = (net.theta + 0.05 * rng.standard_normal((P, net.n_params))).astype(dtype)
    out = net(x, params)
    assert out.shape == (P, 3, 10) and out.dtype == np.dtype(dtype)
    single = np.stack([net.forward(x, params[i]) for i in range(P)])
    np.testing.assert_allclose(out, single, rtol=rtol, atol=rtol * np.abs(single).max())
    np.testing.assert_allclose(
        net(x, params, chunk=3), out, rtol=rtol, atol=rtol * np.abs(out).max()
    )


def test_theta_views_follow_pytorch_order_and_layout():
    net = nets.build("cnn3", "mnist", dtype="float64")
    keys = [k for k, _, _ in net.param_spec.counts()]
    assert keys == ["0.weight", "0.bias", "2.weight", "2.bias", "5.weight", "5.bias"]
    sd = net.state_dict()
    assert sd["0.weight"].shape == (8, 1, 5, 5) and sd["5.weight"].shape == (10, 392)
    np.testing.assert_array_equal(np.concatenate([v.ravel() for v in sd.values()]), net.theta)
    views = net.unravel()
    views[0]["weight"][0, 0, 0, 0] = 123.0  # views, not copies
    assert net.theta[0] == 123.0


def test_state_dict_round_trip_is_exact(rng):
    net = nets.build("cnn5", "mnist", dtype="float32", seed=3)
    other = from_layers(net.layer_specs(), dtype="float32")
    other.load_state_dict(net.state_dict())
    np.testing.assert_array_equal(other.theta, net.theta)
    x = rng.random((2, 1, 28, 28)).astype(np.float32)
    np.testing.assert_array_equal(other(x), net(x))


def test_load_state_dict_errors_name_the_key():
    net = nets.build("cnn3", "mnist")
    sd = net.state_dict()
    bad = dict(sd)
    bad.pop("0.bias")
    with pytest.raises(ValueError, match=r"missing \['0.bias'\]"):
        net.load_state_dict(bad)
    bad = dict(sd, **{"5.weight": np.zeros((10, 391))})
    with pytest.raises(ValueError, match=r"state_dict\['5.weight'\] has shape"):
        net.load_state_dict(bad)


def test_shapes_and_errors():
    net = nets.build("cnn5", "mnist")
    assert net.shapes((1, 28, 28))[-1] == (10,)
    assert net.shapes((1, 28, 28))[7] == (288,)
    with pytest.raises(ValueError, match="layer 0"):
        net.shapes((3, 28, 28))
    with pytest.raises(ValueError, match=r"params must be \(P, 5170\)"):
        nets.build("cnn3", "mnist")(np.zeros((1, 1, 28, 28)), np.zeros((2, 7)))
    with pytest.raises(ValueError, match="non-empty list"):
        from_layers([])


def test_gradient_of_theta_through_the_population_forward(rng):
    """The population forward is taped like any other: d(sum of logits)/d params by FD."""
    net = from_layers(
        [
            {
                "type": "conv2d",
                "in_channels": 1,
                "out_channels": 2,
                "kernel_size": 3,
                "stride": 2,
                "padding": 1,
            },
            {"type": "relu"},
            {"type": "flatten"},
            {"type": "linear", "in_features": 8, "out_features": 3},
        ],
        dtype="float64",
    )
    params = rng.standard_normal((2, net.n_params))
    x = rng.random((3, 1, 4, 4))
    t = Tensor(params, requires_grad=True)
    u = rng.standard_normal((2, 3, 3))
    net(x, t).backward(u)
    v = rng.standard_normal(params.shape)
    h = 1e-6
    fd = np.sum(u * (net(x, params + h * v) - net(x, params - h * v))) / (2 * h)
    assert np.isclose(np.sum(t.grad * v), fd, rtol=1e-6)
