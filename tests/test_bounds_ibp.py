"""IBP's shortcuts agree with the plain formulas (gls_np.bounds.ibp).

Soundness and reference numbers are checked for every domain in test_bounds.py and
test_bounds_reference.py; this file pins the IBP-only fast paths to the slow ones.
"""

import numpy as np
import pytest

from gls_np import bounds
from gls_np.bounds import ibp
from gls_np.bounds.spec import Box, fold_spec
from gls_np.layers import Flatten, Linear, Normalize


@pytest.mark.parametrize("lead", [(), (3,)])
@pytest.mark.parametrize("spec", ["margin", "dense", "too-many-rows"])
def test_spec_head_equals_the_folded_head(lead, spec, rng):
    N, K = 7, 4
    B = 40 if spec == "too-many-rows" else 5
    layer = Linear(N, K)
    p = {"weight": rng.standard_normal((*lead, K, N)), "bias": rng.standard_normal((*lead, K))}
    lo = rng.standard_normal((*lead, B, N))
    box = Box(lo, lo + rng.random((*lead, B, N)))
    if spec == "margin":
        C = bounds.margin_spec(rng.integers(0, K, B), K)
    else:
        # every row distinct; with one row per sample and 40 samples, too many to pay
        C = rng.standard_normal((B, 1 if spec == "too-many-rows" else 3, K))
    ref = ibp.head(fold_spec(layer, p, C), box)
    out = ibp._spec_head(layer, p, box, C)
    if spec == "too-many-rows":
        assert out is None
        return
    np.testing.assert_allclose(out.lb, ref.lb, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(out.ub, ref.ub, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "layer,shape", [(Flatten(), (2, 3, 3)), (Normalize([0.2, 0.5], [0.3, 2.0]), (2, 3, 3))]
)
def test_increasing_layers_map_the_bounds_themselves(layer, shape, rng):
    lo = rng.standard_normal((4, *shape))
    box = Box(lo, lo + rng.random((4, *shape)))
    out = ibp.affine(layer, {}, box, layer.out_shape(shape))
    np.testing.assert_array_equal(out.lb, layer.forward({}, box.lb))
    np.testing.assert_array_equal(out.ub, layer.forward({}, box.ub))


@pytest.mark.parametrize("case", ["margin", "repeats", "all-distinct", "collision"])
def test_distinct_rows_matches_numpy_unique(case, rng, monkeypatch):
    if case == "margin":
        M = bounds.margin_spec(rng.integers(0, 10, 300), 10).reshape(-1, 10)
    elif case == "repeats":
        M = rng.integers(-2, 3, (200, 4)).astype(np.float64)
    else:
        M = rng.standard_normal((50, 6))
    if case == "collision":
        # a projection that sends every row to one key: the exact check must catch it
        class Flat:
            def random(self, n):
                return np.zeros(n)

        monkeypatch.setattr(ibp.np.random, "default_rng", lambda seed: Flat())
    rows, inv = ibp.distinct_rows(M)
    ref_rows = np.unique(M, axis=0)
    np.testing.assert_array_equal(rows[inv], M)
    assert len(rows) == len(ref_rows)
    assert len(np.unique(rows, axis=0)) == len(rows)
