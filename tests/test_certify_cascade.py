"""The certification cascade: sound on both sides, monotone, and every step accounted for."""

import numpy as np
import pytest

from gls_np import attacks, nets
from gls_np.bounds import linf_box, margin_spec
from gls_np.certify import cascade, milp, report
from gls_np.layers import Conv2d, Flatten, Linear, ReLU
from gls_np.model import Sequential


def mlp(rng):
    layers = [Flatten(), Linear(6, 12), ReLU(), Linear(12, 10), ReLU(), Linear(10, 3)]
    net = Sequential(layers, dtype="float64", input_shape=(1, 2, 3))
    nets.initialize(net, rng)
    return net


def convnet(rng):
    layers = [
        Conv2d(1, 3, 3, stride=2, padding=1),
        ReLU(),
        Flatten(),
        Linear(3 * 3 * 3, 8),
        ReLU(),
        Linear(8, 4),
    ]
    net = Sequential(layers, dtype="float64", input_shape=(1, 5, 5))
    nets.initialize(net, rng)
    return net


def samples(rng, net, n, wrong=2):
    """Inputs in [0, 1] labelled with the network's own prediction, except ``wrong`` of them."""
    x = rng.uniform(0, 1, (n, *net.input_shape))
    y = np.argmax(net(x), axis=-1)
    K = net.layers[-1].out_features
    y[:wrong] = (y[:wrong] + 1) % K
    return x, y


@pytest.fixture(params=["mlp", "convnet"])
def setting(request, rng):
    net = {"mlp": mlp, "convnet": convnet}[request.param](rng)
    x, y = samples(rng, net, 24)
    return net, x, y


def strong_pgd_breaks(net, x, y, eps, rng):
    """Which samples a stronger, independently seeded attack misclassifies."""
    xa = attacks.pgd(net, x, y, eps, steps=60, restarts=8, rng=rng)
    return np.argmax(net(xa), axis=-1) != y


@pytest.mark.parametrize("eps", [0.02, 0.08, 0.25])
def test_certified_samples_survive_a_stronger_attack(setting, eps, rng):
    net, x, y = setting
    opts = cascade.Options(eps=eps, pgd_steps=10, pgd_restarts=2, timeout=5.0)
    records, _ = cascade.certify_batch(net, x, y, np.arange(len(y)), opts)
    broken = strong_pgd_breaks(net, x, y, eps, rng)
    for rec, hit in zip(records, broken):
        assert rec["status"] in cascade.STATUSES
        if rec["status"] == "certified":
            assert not hit, rec
        if hit:
            assert rec["status"] == "attacked", rec


def test_attacked_samples_have_a_misclassified_point(setting):
    net, x, y = setting
    opts = cascade.Options(eps=0.25, pgd_steps=10, pgd_restarts=2, timeout=5.0)
    records, _ = cascade.certify_batch(net, x, y, np.arange(len(y)), opts)
    attacked = [r for r in records if r["status"] == "attacked"]
    assert attacked
    for r in attacked:
        assert r["margin_upper"] < 0, r
        assert r["margin_lower"] <= r["margin_upper"]


def test_every_sample_is_decided_when_the_milp_has_time(setting):
    net, x, y = setting
    opts = cascade.Options(eps=0.08, pgd_steps=5, pgd_restarts=1, timeout=20.0)
    records, steps = cascade.certify_batch(net, x, y, np.arange(len(y)), opts)
    assert all(r["status"] != "timeout" for r in records)
    assert [r["step"] for r in records[:2]] == ["natural", "natural"]
    # the exact step settles everything the incomplete ones left open
    for r in records:
        if r["step"] == "milp" and r["status"] == "certified":
            assert r["margin_lower"] > 0
    assert steps["natural"][1] == len(y)


def test_each_step_is_monotone(setting):
    net, x, y = setting
    opts = cascade.Options(eps=0.08, pgd_steps=0, alpha_steps=10, timeout=0)
    records, _ = cascade.certify_batch(net, x, y, np.arange(len(y)), opts)
    box = linf_box(x, 0.08)
    C = margin_spec(y, net.layers[-1].out_features)
    for i, r in enumerate(records):
        if r["step"] == "natural":
            continue
        # alpha-CROWN starts at DeepPoly and keeps its best iterate
        if r["lb_deeppoly"] > 0:
            assert np.isnan(r["lb_alpha_crown"]) or r["lb_alpha_crown"] >= r["lb_deeppoly"]
        else:
            assert r["lb_alpha_crown"] >= r["lb_deeppoly"] - 1e-12
        # the cascade keeps every row's best bound: what IBP certifies stays certified (DeepPoly
        # alone is not always tighter than IBP: it is not on IBP-trained networks)
        if r["lb_ibp"] > 0:
            assert r["status"] == "certified" and r["margin_lower"] >= r["lb_ibp"]
        # the exact minimum is above every relaxation's lower bound
        m = min(milp.minimum(net, box.lb[i], box.ub[i], C[i, j])[0] for j in range(C.shape[1]))
        for name in ("lb_ibp", "lb_crown_ibp", "lb_deeppoly", "lb_alpha_crown"):
            if not np.isnan(r[name]):
                assert r[name] <= m + 1e-7, (name, r[name], m)
        assert m <= r["margin_upper"] + 1e-9


def test_a_relaxation_certifying_an_attacked_sample_is_reported(monkeypatch):
    rng = np.random.default_rng(0)  # a network whose prediction changes inside the cube
    net = mlp(rng)
    x, y = samples(rng, net, 8, wrong=0)
    opts = cascade.Options(eps=1.0, timeout=0)
    honest, _ = cascade.certify_batch(net, x, y, np.arange(8), opts)
    assert any(r["step"] == "pgd" for r in honest)
    real = cascade.relaxation_margins

    def unsound(*args, **kwargs):
        lb, pre = real(*args, **kwargs)
        return np.abs(lb) + 1.0, pre

    monkeypatch.setattr(cascade, "relaxation_margins", unsound)
    with pytest.raises(cascade.SoundnessError, match="certified"):
        cascade.certify_batch(net, x, y, np.arange(8), opts)


def test_zero_radius_certifies_every_correct_sample(setting):
    net, x, y = setting
    opts = cascade.Options(eps=0.0, timeout=0)
    records, _ = cascade.certify_batch(net, x, y, np.arange(len(y)), opts)
    correct = np.argmax(net(x), axis=-1) == y
    assert [r["status"] == "certified" for r in records] == correct.tolist()
    assert all(r["step"] in ("natural", "ibp") for r in records)


def test_records_have_the_report_columns_and_batches_agree(rng):
    net = mlp(rng)
    x, y = samples(rng, net, 10)
    opts = cascade.Options(eps=0.05, pgd_steps=5, timeout=2.0)
    one, _ = cascade.certify(net, x, y, np.arange(100, 110), opts, batch_size=10)
    again, steps = cascade.certify(net, x, y, np.arange(100, 110), opts, batch_size=10)
    assert [set(r) for r in one] == [set(report.COLUMNS)] * 10
    assert [r["index"] for r in one] == list(range(100, 110))

    def strip(rs):
        return [{k: repr(v) for k, v in r.items() if k != "seconds"} for r in rs]

    assert strip(one) == strip(again)
    assert set(steps) == set(cascade.STEPS)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"eps": -0.1}, "eps must be >= 0"),
        ({"eps": 0.1, "pgd_restarts": 0}, "pgd_restarts must be >= 1"),
        ({"eps": 0.1, "timeout": -1}, "timeout must be >= 0"),
        ({"eps": 0.1, "alpha_lr": 0}, "alpha_lr must be > 0"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        cascade.Options(**kwargs)
