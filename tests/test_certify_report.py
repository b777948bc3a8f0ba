"""The certification report: accuracies from records, CSV and JSON outputs, the table."""

import csv
import json
import math

from gls_np.certify import cascade, report


def record(index, step, status, ibp=float("nan"), deeppoly=float("nan"), alpha=float("nan")):
    return {
        "index": index,
        "label": 1,
        "prediction": 1 if step != "natural" else 2,
        "step": step,
        "status": status,
        "margin_lower": -math.inf if status != "certified" else 0.5,
        "margin_upper": -0.1 if status == "attacked" else 2.0,
        "seconds": 0.25,
        "lb_ibp": ibp,
        "lb_crown_ibp": ibp,
        "lb_deeppoly": deeppoly,
        "lb_alpha_crown": alpha,
        "lb_milp": float("nan"),
    }


RECORDS = [
    record(0, "natural", "attacked"),
    record(1, "pgd", "attacked", ibp=-3.0, deeppoly=-1.0),
    record(2, "ibp", "certified", ibp=0.5, deeppoly=0.9),
    record(3, "deeppoly", "certified", ibp=-1.0, deeppoly=0.2),
    record(4, "alpha-crown", "certified", ibp=-1.0, deeppoly=-0.1, alpha=0.1),
    record(5, "milp", "certified", ibp=-1.0, deeppoly=-0.5, alpha=-0.2),
    record(6, "milp", "attacked", ibp=-2.0, deeppoly=-0.5, alpha=-0.4),
    record(7, "milp", "timeout", ibp=-2.0, deeppoly=-0.5, alpha=-0.3),
]
STEPS = {step: [1.0, 4] for step in cascade.STEPS}


def test_accuracies_count_each_sample_once():
    s = report.summarize(RECORDS, STEPS, eps=0.1)
    assert s["samples"] == 8 and s["eps"] == 0.1
    assert s["natural_accuracy"] == 7 / 8
    assert s["adversarial_accuracy"] == 6 / 8
    assert s["certified_accuracy"] == 4 / 8
    assert s["robust_upper"] == 5 / 8
    assert s["timeouts"] == 1
    assert s["per_relaxation"] == {
        "ibp": 1 / 8,
        "crown-ibp": 1 / 8,
        "deeppoly": 2 / 8,
        "alpha-crown": 3 / 8,
    }
    assert s["decided_by"]["milp"] == {"certified": 1, "attacked": 1}
    assert s["steps"]["pgd"]["seconds_per_sample"] == 0.25
    assert s["seconds_per_sample"] == 0.25


def test_csv_and_json_round_trip(tmp_path):
    report.write_csv(tmp_path / "c.csv", RECORDS)
    with open(tmp_path / "c.csv") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(report.COLUMNS)
    assert [r["status"] for r in rows] == [r["status"] for r in RECORDS]
    assert rows[0]["lb_ibp"] == "" and float(rows[2]["lb_ibp"]) == 0.5
    s = report.summarize(RECORDS, STEPS, eps=0.1)
    report.write_json(tmp_path / "s.json", {**s, "bad": math.inf})
    back = json.loads((tmp_path / "s.json").read_text())
    assert back["bad"] is None and back["certified_accuracy"] == 0.5
    assert not list(tmp_path.glob("*.tmp"))


def test_table_names_every_step_and_relaxation():
    text = report.table(report.summarize(RECORDS, STEPS, eps=0.1))
    for word in (*cascade.STEPS, "natural", "adversarial", "certified", "timeouts"):
        assert word in text
    assert "50.00%" in text


def test_an_empty_run_reports_without_dividing_by_zero():
    s = report.summarize([], {step: [0.0, 0] for step in cascade.STEPS})
    assert s["samples"] == 0 and math.isnan(s["certified_accuracy"])
    assert "samples 0" in report.table(s)
