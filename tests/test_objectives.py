"""Training objectives: shapes, population equivalence, and the relations between them."""

import numpy as np
import pytest

from gls_np import bounds, objectives, train
from gls_np.config import Config
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


@pytest.mark.parametrize("relax", RELAXES)
def test_population_chunk_grows_with_the_budget_within_one_and_the_population(relax, setup):
    net, x, _ = setup
    per = objectives.member_bytes(net, relax, x.shape)
    budgets = [0.0, 0.5 * per, per, 2.5 * per, 7 * per, 1e6 * per]
    chunks = [objectives.population_chunk(net, relax, x.shape, 6, b / 1e9) for b in budgets]
    assert chunks == sorted(chunks) and chunks[0] == 1 and chunks[-1] == 6
    assert chunks[2:5] == [1, 2, 6]
    # twice the batch, at most twice the bytes per member (hbox: one sample's generators rule)
    double = objectives.member_bytes(net, relax, (2 * len(x), *x.shape[1:]))
    assert per <= double <= 2 * per


def test_back_substitution_scores_a_few_members_per_call(setup):
    net, x, _ = setup
    shape = lambda b: (b, *x.shape[1:])  # noqa: E731
    assert objectives.population_chunk(net, "deeppoly", shape(512), 64, 1e6) == 1
    assert objectives.population_chunk(net, "crown-ibp", shape(128), 64, 1e6) == 4
    assert objectives.population_chunk(net, "deeppoly", shape(2048), 64, 1e6) == 1
    assert objectives.population_chunk(net, "ibp", shape(512), 64, 1e6) == 64


def test_member_bytes_leave_self_chunked_bounds_their_share(setup):
    net, x, _ = setup
    ibp = objectives.member_bytes(net, "ibp", x.shape)
    assert objectives.member_bytes(net, "none", x.shape) < ibp
    # crown-ibp and deeppoly keep IBP-sized intermediate bounds in the other half of the budget
    assert objectives.member_bytes(net, "crown-ibp", x.shape) >= ibp / (1 - objectives.BOUND_SHARE)
    assert objectives.member_bytes(net, "hbox", x.shape) > objectives.member_bytes(
        net, "deeppoly", x.shape
    )
    with pytest.raises(ValueError, match="unknown relaxation 'box'"):
        objectives.member_bytes(net, "box", x.shape)


@pytest.fixture
def told(monkeypatch):
    """The max_memory_gb of every bounds.compute call, in order."""
    seen = []
    real = bounds.compute

    def spy(*args, **kw):
        seen.append(kw["max_memory_gb"])
        return real(*args, **kw)

    monkeypatch.setattr(bounds, "compute", spy)
    return seen


def test_bounds_are_told_their_share_of_the_budget(setup, told):
    net, x, y = setup
    objectives.make("deeppoly", net, max_memory_gb=3.0)(net.theta, x, y, 0.05, net.theta, None)
    assert told == [3.0 * objectives.BOUND_SHARE]


@pytest.mark.parametrize("relax", ["ibp", "hbox", "crown-ibp", "deeppoly"])
def test_pgpe_auto_chunks_give_the_losses_of_one_call_and_of_single_calls(relax, setup):
    net, x, y = setup
    P = 8
    gb = 3.5 * objectives.member_bytes(net, relax, x.shape) / 1e9  # 3 members per call
    loss = objectives.make(relax, net, max_memory_gb=gb)
    calls = []

    def recorded(theta, *rest):
        out = loss(theta, *rest)
        calls.append((theta, out))
        return out

    cfg = Config(optimizer="pgpe", relax=relax, popsize=P, sigma=0.05, max_memory_gb=gb)
    state = train.pgpe_method(cfg, net=net).init(net.theta)
    mean, after = train.pgpe_method(cfg, net=net).step(
        state, recorded, x, y, 0.05, 1e-3, 0.0, (0, 1, 0)
    )
    assert [len(t) for t, _ in calls] == [3, 3, 2]
    thetas = np.concatenate([t for t, _ in calls])
    chunked = np.concatenate([out for _, out in calls])
    together = loss(thetas, x, y, 0.05, net.theta, None)
    singles = [loss(t, x, y, 0.05, net.theta, None) for t in thetas]
    np.testing.assert_allclose(chunked, together, rtol=1e-12, atol=0)
    np.testing.assert_allclose(chunked, singles, rtol=1e-12, atol=0)
    # the step itself: the same as with the whole population in one call
    whole = Config(optimizer="pgpe", relax=relax, popsize=P, sigma=0.05, pop_chunk=P)
    mean_1, after_1 = train.pgpe_method(whole, net=net).step(
        state, loss, x, y, 0.05, 1e-3, 0.0, (0, 1, 0)
    )
    assert mean == pytest.approx(mean_1, rel=1e-12)
    np.testing.assert_allclose(after["center"], after_1["center"], rtol=1e-12, atol=1e-15)


def test_default_budget_is_picked_from_free_memory(setup, told, monkeypatch):
    net, x, y = setup
    monkeypatch.setattr(objectives, "budget_gb", lambda gb: 7.0 if gb == 0 else gb)
    objectives.make("crown-ibp", net)(net.theta, x, y, 0.05, net.theta, None)
    assert told == [7.0 * objectives.BOUND_SHARE]
