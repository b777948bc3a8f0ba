"""Tightness curves: AUC arithmetic, curves that start at the natural accuracy, the plot."""

import numpy as np
import pytest

from gls_np import nets
from gls_np.certify import tightness
from gls_np.layers import Flatten, Linear, ReLU
from gls_np.model import Sequential


def mlp(rng):
    layers = [Flatten(), Linear(6, 12), ReLU(), Linear(12, 10), ReLU(), Linear(10, 3)]
    net = Sequential(layers, dtype="float64", input_shape=(1, 2, 3))
    nets.initialize(net, rng)
    return net


def test_auc_of_simple_curves():
    assert tightness.auc([0, 0.1, 0.2], [0.8, 0.8, 0.8]) == pytest.approx(0.8)
    assert tightness.auc([0, 0.5, 1.0], [1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert tightness.auc([0, 0.25, 1.0], [1.0, 0.0, 0.0]) == pytest.approx(0.125)


@pytest.mark.parametrize(
    "eps,acc,match",
    [([0.1], [1.0], ">= 2 matching"), ([0, 0], [1, 1], "strictly increasing")],
)
def test_auc_refuses_bad_curves(eps, acc, match):
    with pytest.raises(ValueError, match=match):
        tightness.auc(eps, acc)


def test_curves_start_at_natural_accuracy_and_order_ibp_below_deeppoly(rng, tmp_path):
    net = mlp(rng)
    x = rng.uniform(0, 1, (40, 1, 2, 3))
    y = np.argmax(net(x), axis=-1)
    y[:5] = (y[:5] + 1) % 3
    methods = ["ibp", "crown-ibp", "deeppoly", "alpha-crown"]
    res = tightness.curves(net, x, y, np.linspace(0, 0.2, 5), methods, batch_size=16)
    for m in methods:
        acc = res["methods"][m]["accuracy"]
        assert acc[0] == pytest.approx(35 / 40)
        assert 0 <= res["methods"][m]["auc"] <= acc[0]
    ibp = np.array(res["methods"]["ibp"]["accuracy"])
    assert np.all(np.diff(ibp) <= 0)  # IBP's bounds grow with eps
    dp = np.array(res["methods"]["deeppoly"]["accuracy"])
    alpha = np.array(res["methods"]["alpha-crown"]["accuracy"])
    assert np.all(alpha >= dp)
    assert res["methods"]["deeppoly"]["auc"] >= res["methods"]["ibp"]["auc"]
    tightness.plot(tmp_path / "t.png", res, title="test")
    assert (tmp_path / "t.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_unknown_method_is_refused(rng):
    net = mlp(rng)
    with pytest.raises(ValueError, match="unknown method 'zonotope'"):
        tightness.certified_counts(net, np.zeros((1, 1, 2, 3)), np.zeros(1, int), 0.1, "zonotope")
