"""Numbers and figures of docs/relaxations.md, computed with gls_np.

Run from the repository root:

    python docs/make_figures.py

It prints every number the page quotes (the worked example and the toy network)
and writes three PNGs into docs/figures/:

- relu_relaxations.png   IBP's box vs DeepPoly's triangle (both lambda) for one (l, u)
- toy_discontinuity.png  DeepPoly's lower bound of y = relu(x + w) + 1, x in [-1, 1], over w,
                         its Gaussian smoothing, and smoothed gradient vs the RGS gradient
- worked_example.png     the margin bounds of the worked example per relaxation
"""

from __future__ import annotations

from math import erf, exp, pi, sqrt
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from gls_np import attacks, bounds, losses  # noqa: E402
from gls_np.bounds import relax  # noqa: E402
from gls_np.layers import Flatten, Linear, ReLU  # noqa: E402
from gls_np.model import Sequential  # noqa: E402
from gls_np.tensor import value_and_grad  # noqa: E402

FIGURES = Path(__file__).resolve().parent / "figures"
NAMES = {"ibp": "IBP", "hbox": "HBox", "crown-ibp": "CROWN-IBP", "deeppoly": "DeepPoly"}
COLORS = {"ibp": "tab:gray", "hbox": "tab:orange", "crown-ibp": "tab:green", "deeppoly": "tab:blue"}

# The worked example: 2 inputs, two hidden layers of 2 ReLU neurons, 2 classes.
W1, B1 = [[0.5, -0.5], [-1.0, -0.5]], [1.5, 2.5]
W2, B2 = [[-2.0, 2.0], [-0.5, 1.5]], [0.5, -1.0]
W3, B3 = [[0.0, -1.0], [-3.0, 1.0]], [1.5, -2.5]


def fmt(a) -> str:
    """Format an array's entries on one line."""
    return np.array2string(np.ravel(a), precision=4, suppress_small=True, floatmode="maxprec")


# ------------------------------------------------------------------ worked example


def example_net() -> Sequential:
    """Flatten -> Linear(2, 2) -> ReLU -> Linear(2, 2) -> ReLU -> Linear(2, 2), float64."""
    net = Sequential(
        [Flatten(), Linear(2, 2), ReLU(), Linear(2, 2), ReLU(), Linear(2, 2)],
        dtype="float64",
        input_shape=(1, 1, 2),
    )
    state = {
        "1.weight": W1,
        "1.bias": B1,
        "3.weight": W2,
        "3.bias": B2,
        "5.weight": W3,
        "5.bias": B3,
    }
    net.load_state_dict({k: np.asarray(v) for k, v in state.items()})
    return net


def exact_margin_range(net, lower, upper, n=1001):
    """Min and max of the margin y_0 - y_1 over the input box, by grid search.

    A coarse n x n grid, then an n x n grid of spacing 1e-5 around the coarse
    minimiser (the margin is piecewise linear, so its minimum sits on a kink or
    a corner that the coarse grid can miss by a grid step).
    """

    def margins(a, b):
        grid = np.stack(np.meshgrid(a, b), -1).reshape(-1, 1, 1, 2)
        logits = net(grid)
        return grid, logits[:, 0] - logits[:, 1]

    lo, up = lower.ravel(), upper.ravel()
    grid, m = margins(np.linspace(lo[0], up[0], n), np.linspace(lo[1], up[1], n))
    best = grid[np.argmin(m)].ravel()
    fine = [
        np.clip(best[i] + 1e-5 * np.arange(-(n // 2), n // 2 + 1), lo[i], up[i]) for i in (0, 1)
    ]
    _, m_fine = margins(*fine)
    return min(m.min(), m_fine.min()), m.max()


def worked_example() -> dict:
    """Print the worked example's bounds per relaxation; return the margin bounds."""
    net = example_net()
    x0 = np.zeros((1, 1, 1, 2))
    eps = 1.0
    lower, upper = x0 - eps, x0 + eps
    y = np.array([0])
    C = bounds.margin_spec(y, 2)
    print("== worked example ==")
    print(f"W1 = {W1}, b1 = {B1}\nW2 = {W2}, b2 = {B2}\nW3 = {W3}, b3 = {B3}")
    print(f"input box: x in [{fmt(lower)}] .. [{fmt(upper)}], target class t = 0")
    print(f"logits at the centre x0 = 0: {fmt(net(x0))}")
    print(f"folded last layer: C W3 = {fmt(C[0] @ np.asarray(W3))}, C b3 = {fmt(C[0] @ B3)}")
    out = {}
    for method in bounds.METHODS:
        print(f"-- {NAMES[method]}")
        pre = bounds.intermediate_bounds(net, lower, upper, method)
        for k, box in pre.items():
            l, u = box.lb.ravel(), box.ub.ravel()
            line = f"   ReLU layer {k} input: l = {fmt(l)}, u = {fmt(u)}"
            if method in ("crown-ibp", "deeppoly"):
                rel = relax.deeppoly(l, u)
                line += (
                    f"; lambda = {fmt(rel.slope_l)}, upper slope = {fmt(rel.slope_u)},"
                    f" upper intercept = {fmt(rel.icpt_u)}"
                )
            print(line)
        lb, ub = bounds.compute(net, lower, upper, method)
        mlb, mub = bounds.compute(net, lower, upper, method, C=C)
        naive = lb.ravel()[0] - ub.ravel()[1]
        print(f"   logits: lb = {fmt(lb)}, ub = {fmt(ub)}")
        print(f"   margin y0 - y1, C folded: [{mlb.item():.4f}, {mub.item():.4f}]", end="")
        print(f"; from logit bounds lb0 - ub1 = {naive:.4f}")
        print(
            f"   certified: {bool(losses.certified(mlb)[0])},"
            f" robust CE = {losses.robust_cross_entropy(mlb).item():.4f}"
        )
        out[method] = (mlb.item(), mub.item(), naive)
    lo_true, hi_true = exact_margin_range(net, lower, upper)
    x_adv = attacks.pgd(net, x0, y, eps, steps=100, restarts=10, lower=-1.0, upper=1.0, rng=0)
    pgd_margin = losses.logit_margins(net(x_adv), y).item()
    print(f"-- true margin range (grid search): [{lo_true:.4f}, {hi_true:.4f}]")
    print(f"-- PGD (margin objective, 10 restarts): margin {pgd_margin:.4f} at x = {fmt(x_adv)}")
    print(f"   clean CE = {losses.cross_entropy(net(x0), y).item():.4f}")
    out["true"] = (lo_true, hi_true)
    out["pgd"] = pgd_margin
    return out


def plot_worked_example(res: dict) -> None:
    """Draw the margin interval of every relaxation against the true range."""
    fig, ax = plt.subplots(figsize=(6.4, 2.8))
    rows = list(bounds.METHODS)[::-1]
    for i, m in enumerate(rows):
        lb, ub, _ = res[m]
        ax.plot([lb, ub], [i, i], color=COLORS[m], lw=6, solid_capstyle="butt")
        ax.annotate(
            f"{lb:.3g}",
            (lb, i),
            xytext=(-4, 0),
            textcoords="offset points",
            ha="right",
            va="center",
            fontsize=8,
        )
    lo, hi = res["true"]
    ax.axvspan(lo, hi, color="0.85", zorder=0, label="true range (grid)")
    ax.axvline(0, color="k", lw=0.8)
    ax.axvline(res["pgd"], color="tab:red", ls="--", lw=1, label=f"PGD: {res['pgd']:.3g}")
    ax.set_yticks(range(len(rows)), [NAMES[m] for m in rows])
    ax.set_xlim(-8, 28)
    ax.set_xlabel("bounds on the margin y0 - y1 over the input box (C folded)")
    ax.set_title("Worked example: certified iff the lower end is > 0", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(FIGURES / "worked_example.png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ ReLU relaxations


def plot_relu_relaxations(l=-1.0, u=2.0) -> None:
    """Draw paper Figure 2: IBP's box and DeepPoly's two triangles on [l, u]."""
    rel = relax.deeppoly(np.array([l]), np.array([u]))
    s, i0, lam = rel.slope_u.item(), rel.icpt_u.item(), rel.slope_l.item()
    v = np.linspace(l - 0.4, u + 0.4, 200)
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.4), sharey=True)
    for ax in axes:
        ax.plot(v, np.maximum(v, 0), color="k", lw=2, label="relu(v)")
        ax.axvline(l, color="0.6", ls=":", lw=1)
        ax.axvline(u, color="0.6", ls=":", lw=1)
        ax.set_xlabel("v (ReLU input)")
        ax.text(l, -1.25, "l", ha="center")
        ax.text(u, -1.25, "u", ha="center")
    axes[0].set_ylabel("relu(v)")
    axes[0].fill([l, u, u, l], [0, 0, u, u], color="tab:gray", alpha=0.3, label="IBP box [0, u]")
    axes[0].set_title(f"IBP: relu(l) <= y <= relu(u)\n(l, u) = ({l:g}, {u:g})", fontsize=10)
    upper_l, upper_u = s * l + i0, s * u + i0
    axes[1].fill(
        [l, u, u], [upper_l, upper_u, 0], color="tab:blue", alpha=0.25, label="lambda = 0: y >= 0"
    )
    axes[1].fill(
        [l, u, l], [upper_l, upper_u, l], color="tab:green", alpha=0.25, label="lambda = 1: y >= v"
    )
    axes[1].plot(
        [l, u], [upper_l, upper_u], color="tab:red", lw=1.5, label="upper: u (v - l) / (u - l)"
    )
    chosen = "1 (green)" if lam == 1 else "0 (blue)"
    axes[1].set_title(
        f"DeepPoly: lambda = 1[u > -l] = {chosen}\n"
        f"area {0.5 * (u - l) * u:g} (lambda = 0) vs {0.5 * (u - l) * -l:g} (lambda = 1)",
        fontsize=10,
    )
    for ax in axes:
        ax.legend(loc="upper left", fontsize=8)
        ax.set_ylim(-1.4, u + 0.6)
    fig.tight_layout()
    fig.savefig(FIGURES / "relu_relaxations.png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------ the toy discontinuity


def toy_net() -> Sequential:
    """Build y = relu(1 * x + w) + 1 as Flatten, Linear, ReLU, Linear; theta = [1, w, 1, 1]."""
    return Sequential(
        [Flatten(), Linear(1, 1), ReLU(), Linear(1, 1)], dtype="float64", input_shape=(1, 1, 1)
    )


def toy_bounds(ws, method="deeppoly"):
    """Lower bound and its gradient in w, for every w at once (a population of networks)."""
    net = toy_net()
    thetas = np.stack([np.ones_like(ws), ws, np.ones_like(ws), np.ones_like(ws)], axis=1)
    lower, upper = -np.ones((1, 1, 1, 1)), np.ones((1, 1, 1, 1))
    lb = bounds.compute(net, lower, upper, method, params=thetas)[0].reshape(-1)

    def total(th):
        # members are independent, so the gradient of the sum is each member's gradient
        return bounds.compute(net, lower, upper, method, params=th)[0].sum()

    _, (g,) = value_and_grad(total, thetas)
    return lb, g[:, 1]


def gaussian_smooth(values, h, sigma):
    """(values * N(0, sigma^2))(w) on a uniform grid of spacing h: exact numeric convolution."""
    k = np.arange(-int(5 * sigma / h), int(5 * sigma / h) + 1) * h
    kernel = np.exp(-0.5 * (k / sigma) ** 2)
    kernel /= kernel.sum()
    return np.convolve(values, kernel, mode="same"), len(k) // 2


def closed_form(w, sigma):
    """L_sigma(w) = Phi(-w/s) + w Phi(w/s) + s phi(w/s) for l(w) = 1[w <= 0] + w 1[w > 0]."""
    Phi = np.vectorize(lambda t: 0.5 * (1 + erf(t / sqrt(2))))
    phi = np.vectorize(lambda t: exp(-0.5 * t * t) / sqrt(2 * pi))
    t = w / sigma
    return Phi(-t) + w * Phi(t) + sigma * phi(t), Phi(t) - phi(t) / sigma, Phi(t)


def toy_discontinuity(sigmas=(0.1, 0.3)) -> None:
    """Print and draw paper Figure 4a: the jump of DeepPoly's bound and its smoothing."""
    print("== toy network y = relu(x + w) + 1, x in [-1, 1] ==")
    h = 1e-3
    # cell midpoints: no grid point sits on the jump at w = 0
    ws = (np.arange(-4000, 4000) + 0.5) * h
    lb, dlb = toy_bounds(ws)
    lb_ibp, _ = toy_bounds(ws, "ibp")
    pts = np.array([-0.5, -1e-3, 0.0, 1e-3, 0.5, 1.5])
    for w, a, da, b in zip(pts, *toy_bounds(pts), toy_bounds(pts, "ibp")[0]):
        print(f"   w = {w:+.3f}: DeepPoly lb = {a:.4f} (d lb/dw = {da:.0f}), IBP lb = {b:.4f}")
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.5))
    view = np.abs(ws) <= 1.5
    for k, w_side in enumerate((ws <= 0, ws > 0)):
        sel = view & w_side
        label = "DeepPoly lb (original)" if k == 0 else None
        axes[0].plot(ws[sel], lb[sel], color="k", lw=1.5, zorder=3, label=label)
    axes[0].plot([0], [1], "o", color="k", ms=5, zorder=4)
    axes[0].plot([0], [0], "o", mfc="white", mec="k", ms=5, zorder=4)
    axes[0].plot(ws[view], lb_ibp[view], color="tab:gray", lw=1.5, ls=":", zorder=5, label="IBP lb")
    for sigma, color in zip(sigmas, ("tab:orange", "tab:blue")):
        smooth, pad = gaussian_smooth(lb, h, sigma)
        rgs, _ = gaussian_smooth(dlb, h, sigma)
        exact, dexact, drgs = closed_form(ws, sigma)
        inner = slice(pad, len(ws) - pad)
        err = np.abs(smooth - exact)[inner].max()
        grad = np.gradient(smooth, h)
        argmin = ws[inner][np.argmin(smooth[inner])]
        print(
            f"   sigma = {sigma}: smoothed lb at w = 0: {closed_form(0.0, sigma)[0]:.4f};"
            f" minimiser w* = {argmin:.3f}, min = {smooth[inner].min():.4f};"
            f" max |numeric - closed form| = {err:.1e}"
        )
        axes[0].plot(
            ws[view], smooth[view], color=color, lw=1.5, label=f"smoothed, sigma = {sigma}"
        )
        axes[1].plot(
            ws[view],
            grad[view],
            color=color,
            lw=1.5,
            label=f"d/dw smoothed (PGPE), sigma = {sigma}",
        )
        axes[1].plot(
            ws[view],
            rgs[view],
            color=color,
            lw=1.2,
            ls="--",
            label=f"E[d lb/dw] (RGS), sigma = {sigma}",
        )
        # a Riemann sum across the jump is off by O(h / sigma)
        assert err < h / sigma and np.abs(rgs - drgs)[inner].max() < h / sigma
    axes[0].set_xlabel("w")
    axes[0].set_ylabel("lower bound of y")
    axes[0].set_title("DeepPoly bound jumps at w = 0 (lambda flips)", fontsize=10)
    axes[0].legend(fontsize=8, loc="upper left")
    axes[1].axhline(0, color="k", lw=0.6)
    axes[1].set_xlabel("w")
    axes[1].set_title("Gradient of the smoothed bound vs RGS's estimate", fontsize=10)
    axes[1].legend(fontsize=7, loc="lower left")
    fig.tight_layout()
    fig.savefig(FIGURES / "toy_discontinuity.png", dpi=110)
    plt.close(fig)


def main() -> None:
    """Print all numbers and write all figures."""
    FIGURES.mkdir(exist_ok=True)
    res = worked_example()
    plot_worked_example(res)
    plot_relu_relaxations()
    toy_discontinuity()
    for p in sorted(FIGURES.glob("*.png")):
        print(f"wrote {p.relative_to(FIGURES.parent.parent)} ({p.stat().st_size / 1024:.0f} kB)")


if __name__ == "__main__":
    main()
