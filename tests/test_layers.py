"""The four maps of every affine-like layer agree with each other and with forward."""

import numpy as np
import pytest

from gls_np import layers

CASES = [
    (layers.Linear(6, 4), (6,)),
    (layers.Conv2d(2, 3, 3, 2, 1), (2, 7, 6)),
    (layers.Flatten(), (2, 3, 4)),
    (layers.Normalize([0.5, 0.25], [0.2, 0.4]), (2, 3, 3)),
]


def params_for(layer, rng, lead=()):
    return {k: rng.standard_normal((*lead, *s)) for k, s in layer.param_shapes().items()}


@pytest.mark.parametrize("layer,in_shape", CASES, ids=lambda c: getattr(c, "type", ""))
@pytest.mark.parametrize("lead", [(), (3,)])
def test_affine_maps_are_consistent(layer, in_shape, lead, rng):
    p = params_for(layer, rng, lead)
    B = 2
    x = rng.standard_normal((*lead, B, *in_shape))
    out_shape = layer.out_shape(in_shape)
    y = layer.forward(p, x)
    assert y.shape == (*lead, B, *out_shape)
    b = layer.bias(p, x)
    # NOTE: Normalize's bias has no population axis: count lead axes from its rank
    b = 0 if b is None else layers.with_batch_axes(b, b.ndim - len(out_shape), 1)
    np.testing.assert_allclose(y, layer.linear(p, x) + b, rtol=1e-12, atol=1e-12)
    # W^T is the adjoint of W: <W x, u> = <x, W^T u>
    u = rng.standard_normal(y.shape)
    lhs = np.sum(layer.linear(p, x) * u)
    rhs = np.sum(x * layer.linear_T(p, u, in_shape))
    assert np.isclose(lhs, rhs, rtol=1e-10)
    # |W| x equals W x with every weight made non-negative
    pabs = {k: np.abs(v) if k == "weight" else v for k, v in p.items()}
    np.testing.assert_allclose(
        layer.linear_abs(p, x), layer.linear(pabs, x), rtol=1e-12, atol=1e-12
    )


def test_relu_and_specs_round_trip():
    for layer, _ in CASES + [(layers.ReLU(), (3,))]:
        again = layers.from_spec(layer.spec())
        assert again.spec() == layer.spec()
    np.testing.assert_array_equal(layers.ReLU().forward({}, np.array([-1.0, 0.0, 2.0])), [0, 0, 2])


@pytest.mark.parametrize(
    "spec,match",
    [
        ({"type": "dense"}, "unknown layer type"),
        ({"type": "linear", "in_features": 3}, "bad arguments"),
        ("relu", "must be a dict"),
        ({"type": "normalize", "mean": [0], "std": [0]}, "std > 0"),
    ],
)
def test_bad_specs_raise_one_line_errors(spec, match):
    with pytest.raises(ValueError, match=match):
        layers.from_spec(spec)


def test_shape_errors_name_the_expected_shape():
    with pytest.raises(ValueError, match=r"expects input \(3, H, W\)"):
        layers.Conv2d(3, 4, 3).out_shape((1, 8, 8))
    with pytest.raises(ValueError, match=r"expects input \(5,\)"):
        layers.Linear(5, 2).out_shape((4,))


@pytest.mark.parametrize("layer,in_shape", CASES, ids=lambda c: getattr(c, "type", ""))
@pytest.mark.parametrize("lead", [(), (3,)])
def test_maps_do_not_depend_on_the_memory_layout(layer, in_shape, lead, rng):
    """Convolutions hand over batch-last arrays; every map must read them like C-order ones."""
    p = params_for(layer, rng, lead)
    x = rng.standard_normal((*lead, 4, *in_shape))
    nl = len(lead)
    # the same values with the batch axis in unit stride
    order = (*range(nl), *range(nl + 1, x.ndim), nl)
    batch_last = np.moveaxis(np.ascontiguousarray(x.transpose(order)), -1, nl)
    y = layer.forward(p, x)
    np.testing.assert_allclose(layer.forward(p, batch_last), y, rtol=1e-12, atol=1e-12)
    u = rng.standard_normal(y.shape)
    u_last = np.moveaxis(np.ascontiguousarray(np.moveaxis(u, nl, -1)), -1, nl)
    np.testing.assert_allclose(
        layer.linear_T(p, u_last, in_shape), layer.linear_T(p, u, in_shape), rtol=1e-12, atol=1e-12
    )
