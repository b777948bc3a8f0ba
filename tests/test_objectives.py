"""Training objectives: shapes, population equivalence, and the relations between them."""

import numpy as np
import pytest

from gls_np import objectives
from gls_np.losses import cross_entropy
from gls_np.model import from_layers
from gls_np.tensor import Tensor

LAYERS = [
    {
        "type": "conv2d",
        "in_channels": 1,
        "out_channels": 3,
        "kernel_size": 3,
        "stride": 2,
        "padding": 1,
    },
    {"type": "relu"},
    {"type": "flatten"},
    {"type": "linear", "in_features": 48, "out_features": 8},
    {"type": "relu"},
    {"type": "linear", "in_features": 8, "out_features": 4},
]
RELAXES = ["none", "pgd", "ibp", "hbox", "crown-ibp", "deeppoly", "sabr", "mtl-ibp"]


@pytest.fixture
def setup(rng):
    net = from_layers(LAYERS, dtype="float64", input_shape=(1, 8, 8))
    net.theta = 0.5 * rng.standard_normal(net.n_params)
    x = rng.random((5, 1, 8, 8))
    y = rng.integers(0, 4, 5)
    return net, x, y


@pytest.mark.parametrize("relax", RELAXES)
def test_scalar_for_one_network_and_vector_for_a_population(relax, setup, rng):
    net, x, y = setup
    loss = objectives.make(relax, net, pgd_steps=3)
    value = loss(net.theta, x, y, 0.05, net.theta, np.random.default_rng(0))
    assert np.ndim(value) == 0 and np.isfinite(value)
    pop = net.theta + 0.01 * rng.standard_normal((3, net.n_params))
    values = loss(pop, x, y, 0.05, net.theta, np.random.default_rng(0))
    singles = [loss(p, x, y, 0.05, net.theta, np.random.default_rng(0)) for p in pop]
    np.testing.assert_allclose(values, singles, rtol=1e-9)
    # taped: a gradient of the right shape comes out
    t = Tensor(net.theta, requires_grad=True)
    loss(t, x, y, 0.05, net.theta, np.random.default_rng(0)).backward()
    assert t.grad.shape == net.theta.shape and np.all(np.isfinite(t.grad))


@pytest.mark.parametrize("relax", ["ibp", "hbox", "crown-ibp", "deeppoly"])
def test_certified_losses_upper_bound_the_adversarial_loss(relax, setup):
    net, x, y = setup
    robust = objectives.make(relax, net)(net.theta, x, y, 0.05, net.theta, None)
    adversarial = objectives.make("pgd", net, pgd_steps=10)(
        net.theta, x, y, 0.05, net.theta, np.random.default_rng(1)
    )
    clean = cross_entropy(net.forward(x), y)
    assert robust >= adversarial - 1e-9 >= clean - 1e-6
    at_zero = objectives.make(relax, net)(net.theta, x, y, 0.0, net.theta, None)
    assert np.isclose(at_zero, clean, rtol=1e-9)


def test_sabr_box_lies_inside_the_eps_box(rng):
    x = rng.random((4, 1, 5, 5))
    x_adv = np.clip(x + rng.uniform(-0.1, 0.1, x.shape), 0, 1)
    lo, hi = objectives.sabr_box(x, x_adv, 0.1, 0.3)
    big_lo, big_hi = objectives.eps_box(x, 0.1)
    assert np.all(lo >= big_lo - 1e-12) and np.all(hi <= big_hi + 1e-12)
    assert np.all(hi - lo <= 2 * 0.3 * 0.1 + 1e-12)


def test_mtl_ibp_interpolates(setup):
    net, x, y = setup
    rng = np.random.default_rng
    ibp = objectives.make("ibp", net)(net.theta, x, y, 0.05, net.theta, rng(2))
    adv = objectives.make("pgd", net, pgd_steps=3)(net.theta, x, y, 0.05, net.theta, rng(2))
    mix = objectives.make("mtl-ibp", net, pgd_steps=3, mtl_alpha=0.3)(
        net.theta, x, y, 0.05, net.theta, rng(2)
    )
    assert np.isclose(mix, 0.3 * ibp + 0.7 * adv, rtol=1e-9)


def test_unknown_relaxation():
    with pytest.raises(ValueError, match="unknown relaxation 'box'"):
        objectives.make("box", None)
