"""What a certification run reports: the per-sample table, the summary, the printed table.

The per-sample records come from ``cascade.certify_batch`` (one dict per sample,
``COLUMNS``); everything here is a pure function of them, so records computed on
different ranks can be concatenated and reported once.

Accuracies are fractions of all samples:

- natural: the prediction at x is right;
- adversarial: right at x and at the PGD point (an upper bound on robust accuracy);
- certified: proven robust by the cascade (a lower bound on robust accuracy);
- robust_upper: not refuted by any step (certified + timeouts), the tightest upper bound;
- per_relaxation[r]: what relaxation r alone certifies (its lower bound on every
  margin positive), for r in ibp, crown-ibp, deeppoly, alpha-crown; alpha-crown
  counts DeepPoly's certificates too, since it starts from them.
"""

from __future__ import annotations

import csv
import json
import math
import os
from pathlib import Path

from ..backend import np
from .cascade import RELAXATIONS, STEPS

COLUMNS = (
    "index",
    "label",
    "prediction",
    "step",
    "status",
    "margin_lower",
    "margin_upper",
    "seconds",
    "lb_ibp",
    "lb_crown_ibp",
    "lb_deeppoly",
    "lb_alpha_crown",
    "lb_milp",
)


def _column(name: str) -> str:
    return "lb_" + name.replace("-", "_")


def summarize(records: list, steps: dict, **meta) -> dict:
    """Summarise a run: accuracies, per-relaxation accuracy, timeouts, time per step.

    ``meta`` (checkpoint, eps, split, start, ...) is copied in as it is.
    """
    n = len(records)
    frac = (lambda k: k / n) if n else (lambda k: float("nan"))
    count = lambda pred: sum(1 for r in records if pred(r))  # noqa: E731
    per_relax = {}
    for name in RELAXATIONS:
        col = _column(name)
        proven = count(lambda r, c=col: r[c] is not None and r[c] > 0)
        if name == "alpha-crown":
            proven = count(lambda r: any(r[_column(m)] > 0 for m in ("deeppoly", "alpha-crown")))
        per_relax[name] = frac(proven)
    step_time = {
        step: {
            "seconds": sec,
            "samples": k,
            "seconds_per_sample": sec / k if k else None,
        }
        for step, (sec, k) in steps.items()
    }
    seconds = [r["seconds"] for r in records]
    return {
        **meta,
        "samples": n,
        "natural_accuracy": frac(count(lambda r: r["step"] != "natural")),
        "adversarial_accuracy": frac(count(lambda r: r["step"] not in ("natural", "pgd"))),
        "certified_accuracy": frac(count(lambda r: r["status"] == "certified")),
        "robust_upper": frac(count(lambda r: r["status"] != "attacked")),
        "per_relaxation": per_relax,
        "timeouts": count(lambda r: r["status"] == "timeout"),
        "decided_by": {
            step: {
                "certified": count(lambda r, s=step: r["step"] == s and r["status"] == "certified"),
                "attacked": count(lambda r, s=step: r["step"] == s and r["status"] == "attacked"),
            }
            for step in STEPS
        },
        "seconds_per_sample": float(np.mean(seconds)) if n else None,
        "seconds_total": float(np.sum(seconds)),
        "steps": step_time,
    }


def table(summary: dict) -> str:
    """Format a summary as a readable table (what ``python -m gls_np certify`` prints)."""
    pct = lambda v: "-" if v is None or math.isnan(v) else f"{100 * v:6.2f}%"  # noqa: E731
    lines = [
        f"samples {summary['samples']}, eps {summary.get('eps')}",
        f"  natural      {pct(summary['natural_accuracy'])}",
        f"  adversarial  {pct(summary['adversarial_accuracy'])}   (PGD)",
        f"  certified    {pct(summary['certified_accuracy'])}   (the whole cascade)",
        f"  robust <=    {pct(summary['robust_upper'])}   (certified + timeouts)",
        "  each relaxation alone:",
    ]
    lines += [f"    {name:<11}{pct(v)}" for name, v in summary["per_relaxation"].items()]
    lines.append(f"  timeouts     {summary['timeouts']}")
    spp = summary["seconds_per_sample"]
    lines.append(f"  seconds/sample {spp:.3f}" if spp is not None else "  seconds/sample -")
    lines.append("")
    lines.append(f"  {'step':<12}{'certified':>10}{'attacked':>10}{'ran on':>8}{'s/sample':>10}")
    for step in STEPS:
        d, t = summary["decided_by"][step], summary["steps"][step]
        per = t["seconds_per_sample"]
        lines.append(
            f"  {step:<12}{d['certified']:>10}{d['attacked']:>10}{t['samples']:>8}"
            + (f"{per:>10.4f}" if per is not None else f"{'-':>10}")
        )
    return "\n".join(lines)


def write_csv(path, records: list) -> None:
    """Write the per-sample table (``COLUMNS``), atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for rec in records:
            writer.writerow({k: _cell(rec[k]) for k in COLUMNS})
    os.replace(tmp, path)


def write_json(path, obj: dict) -> None:
    """Write ``obj`` as indented JSON, atomically; non-finite floats become null."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(_finite(obj), indent=2) + "\n")
    os.replace(tmp, path)


def _cell(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else repr(v)
    return v


def _finite(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj
