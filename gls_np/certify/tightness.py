"""Tightness of a relaxation on a given network: its certified accuracy against eps, and its AUC.

Jovanović et al. (2022) (paper Sec. 2.2) compare relaxations that have no strict
order by how much they certify on one network: sweep the radius eps over
[0, eps_max], compute the certified accuracy cert_r(eps) of relaxation r at each,
and take the area under that curve, normalised by eps_max,

    AUC_r = (1 / eps_max) * integral_0^eps_max cert_r(eps) d eps    (trapezoid rule),

so that AUC_r lies in [0, natural accuracy]: a tighter relaxation keeps its
curve up longer. At eps = 0 every sound relaxation is exact, so every curve
starts at the natural accuracy (a sample with a tie at x certifies nowhere).
"""

from __future__ import annotations

from ..backend import np, to_device, to_host
from ..bounds import METHODS, compute
from ..bounds.alpha_crown import alpha_crown
from ..bounds.spec import linf_box, margin_spec

TIGHTNESS_METHODS = (*METHODS, "alpha-crown")


def certified_counts(net, x, y, eps: float, method: str, *, batch_size=100, max_memory_gb=4.0):
    """How many samples ``method`` certifies at radius ``eps``.

    Shapes: x (N, C, H, W) in [0, 1], y (N,) -> int. A sample counts when the lower
    bound of every margin f_y - f_j over the clipped L-inf ball is positive.
    """
    if method not in TIGHTNESS_METHODS:
        raise ValueError(f"unknown method {method!r}; expected one of {list(TIGHTNESS_METHODS)}")
    K = net.layers[-1].out_features
    total = 0
    for i in range(0, len(y), batch_size):
        xb, yb = to_device(x[i : i + batch_size], net.dtype), to_device(y[i : i + batch_size])
        box = linf_box(xb, eps)
        C = margin_spec(yb, K, dtype=net.dtype)
        if method == "alpha-crown":
            lb, _ = alpha_crown(net, box.lb, box.ub, C, max_memory_gb=max_memory_gb)
        else:
            lb, _ = compute(net, box.lb, box.ub, method, C, max_memory_gb=max_memory_gb)
        total += int((to_host(lb) > 0).all(axis=1).sum())
    return total


def auc(eps, accuracy) -> float:
    """Area under accuracy(eps) over [eps[0], eps[-1]], divided by the interval's length."""
    eps, accuracy = np.asarray(eps, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
    if eps.ndim != 1 or len(eps) < 2 or eps.shape != accuracy.shape:
        raise ValueError(
            f"need >= 2 matching points, got eps {eps.shape} and accuracy {accuracy.shape}"
        )
    if np.any(np.diff(eps) <= 0):
        raise ValueError("eps values must be strictly increasing")
    area = float(np.sum((accuracy[1:] + accuracy[:-1]) * np.diff(eps)) / 2)
    return area / float(eps[-1] - eps[0])


def curves(net, x, y, eps_values, methods, *, batch_size=100, max_memory_gb=4.0, bar=None):
    """Certified accuracy of each method at each eps, and each method's AUC.

    Returns {"eps": [...], "samples": N, "methods": {m: {"accuracy": [...], "auc": float}}}.
    ``bar`` advances by one per (method, eps) point.
    """
    eps_values = [float(e) for e in eps_values]
    out = {"eps": eps_values, "samples": len(y), "methods": {}}
    for method in methods:
        acc = []
        for eps in eps_values:
            n = certified_counts(
                net, x, y, eps, method, batch_size=batch_size, max_memory_gb=max_memory_gb
            )
            acc.append(n / max(len(y), 1))
            if bar is not None:
                bar.update(1)
                bar.set_postfix(
                    method=method, eps=f"{eps:.4g}", cert=f"{acc[-1]:.1%}", refresh=False
                )
        out["methods"][method] = {"accuracy": acc, "auc": auc(eps_values, acc)}
    return out


def plot(path, result: dict, title: str = "") -> None:
    """Draw the certified-accuracy curves (percent against eps) with their AUC in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 3.8), dpi=120)
    for method, d in result["methods"].items():
        ax.plot(
            result["eps"],
            [100 * a for a in d["accuracy"]],
            marker="o",
            markersize=3,
            label=f"{method} (AUC {100 * d['auc']:.1f})",
        )
    ax.set_xlabel("eps (L-inf radius)")
    ax.set_ylabel("certified accuracy [%]")
    ax.set_ylim(0, 100)
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
