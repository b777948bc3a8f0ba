"""The ReLU relaxations of gls_np.bounds.relax, checked pointwise on a dense grid (float64)."""

import numpy as np

from gls_np.bounds import relax
from gls_np.tensor import value_and_grad


def grid_lu():
    """All pairs l <= u on a grid that contains 0, with l = u and u = -l included."""
    ticks = np.linspace(-2.0, 2.0, 41)
    l, u = np.meshgrid(ticks, ticks, indexing="ij")
    keep = l <= u
    return l[keep], u[keep]


def test_deeppoly_bounds_relu_everywhere_on_the_interval():
    l, u = grid_lu()
    t = np.linspace(0.0, 1.0, 33)[:, None]
    v = l + t * (u - l)  # (33, pairs): points of every interval, both ends included
    rel = relax.deeppoly(l, u)
    lower = rel.slope_l * v + rel.icpt_l
    upper = rel.slope_u * v + rel.icpt_u
    relu = np.maximum(v, 0.0)
    assert np.all(lower <= relu + 1e-12)
    assert np.all(relu <= upper + 1e-12)


def test_deeppoly_is_exact_when_stable_and_tight_when_not():
    l, u = grid_lu()
    rel = relax.deeppoly(l, u)
    active, unstable = relax.split(l, u)
    inactive = ~active & ~unstable
    for s, i in ((rel.slope_l, rel.icpt_l), (rel.slope_u, rel.icpt_u)):
        np.testing.assert_array_equal(s[active], 1.0)
        np.testing.assert_array_equal(i[active], 0.0)
        np.testing.assert_array_equal(s[inactive], 0.0)
        np.testing.assert_array_equal(i[inactive], 0.0)
    lu, uu = l[unstable], u[unstable]
    # the upper line is the chord through (l, 0) and (u, u)
    np.testing.assert_allclose(rel.slope_u[unstable] * lu + rel.icpt_u[unstable], 0.0, atol=1e-12)
    np.testing.assert_allclose(rel.slope_u[unstable] * uu + rel.icpt_u[unstable], uu, rtol=1e-12)
    # lambda = 1 exactly when u > -l, through the origin
    np.testing.assert_array_equal(rel.slope_l[unstable], (uu > -lu).astype(float))
    np.testing.assert_array_equal(rel.icpt_l[unstable], 0.0)


def test_split_boundary_cases():
    l = np.array([0.0, -1.0, -1.0, 0.5, -2.0, -1.0])
    u = np.array([1.0, 0.0, 1.0, 0.5, -1.0, 2.0])
    active, unstable = relax.split(l, u)
    np.testing.assert_array_equal(active, [True, False, False, True, False, False])
    np.testing.assert_array_equal(unstable, [False, False, True, False, False, True])
    # u == -l: lambda = 0 (strict inequality, as in auto_LiRPA)
    assert relax.deeppoly(l, u).slope_l[2] == 0.0
    assert relax.deeppoly(l, u).slope_l[5] == 1.0


def test_upper_line_is_differentiated_through_l_and_u(rng):
    l = -rng.uniform(0.5, 2.0, 7)
    u = rng.uniform(0.5, 2.0, 7)
    w = rng.standard_normal(7)

    def f(lb, ub):
        rel = relax.deeppoly(lb, ub)
        return (rel.slope_u * w).sum() + (rel.icpt_u * w).sum() + (rel.slope_l * w).sum()

    _, (gl, gu) = value_and_grad(f, l, u)
    # d/dl [u/(u-l) - l u/(u-l)] and d/du, by hand; lambda contributes nothing
    np.testing.assert_allclose(gl, w * (u / (u - l) ** 2 - u**2 / (u - l) ** 2), rtol=1e-12)
    np.testing.assert_allclose(gu, w * (-l / (u - l) ** 2 + l**2 / (u - l) ** 2), rtol=1e-12)
