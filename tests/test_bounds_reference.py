"""gls_np.bounds against the reference bounds of ../shared/reference/bounds (auto_LiRPA, float64).

Every case, method (ibp, crown-ibp, crown) and quantity (logits, margins) must match
to 1e-9 relative in float64 (the references are reproduced to ~1e-13) and 1e-4 in
float32, with an absolute floor scaled to the largest magnitude of the compared array.
"""

import json

import numpy as np
import pytest

from gls_np import bounds, model

CASES = [
    "mlp_tiny",
    "cnn3_mnist_init_eps0.1",
    "cnn3_mnist_trained_eps0.02",
    "cnn3_mnist_trained_eps0.1",
    "cnn3_cifar10_init_eps2",
    "cnn5_mnist_trained_eps0.05",
]
METHODS = ["ibp", "crown-ibp", "crown"]
TOLERANCE = {"float64": 1e-9, "float32": 1e-4}


def load(shared_dir, name, dtype):
    path = shared_dir / "reference" / "bounds" / f"{name}.npz"
    if not path.exists():
        pytest.skip(f"reference file {path} not found")
    ref = np.load(path)
    net = model.from_layers(json.loads(str(ref["layers"])), dtype=dtype)
    net.load_state_dict({k[len("param.") :]: ref[k] for k in ref.files if k.startswith("param.")})
    return net, ref


def assert_matches(value, expected, rtol, what):
    atol = rtol * np.max(np.abs(expected))
    np.testing.assert_allclose(value, expected, rtol=rtol, atol=atol, err_msg=what)


def cases():
    for name in CASES:
        for method in METHODS:
            slow = name.startswith("cnn5") and method == "crown"
            marks = [pytest.mark.slow] if slow else []
            yield pytest.param(name, method, marks=marks, id=f"{name}-{method}")


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name,method", list(cases()))
def test_bounds_match_the_reference(shared_dir, name, method, dtype):
    net, ref = load(shared_dir, name, dtype)
    rtol = TOLERANCE[dtype]
    for kind, C in (("logits", None), ("margin", ref["C"])):
        lb, ub = bounds.compute(net, ref["lower"], ref["upper"], method, C)
        assert lb.dtype == ub.dtype == np.dtype(dtype)
        assert_matches(lb, ref[f"{method}.{kind}.lb"], rtol, f"{name} {method} {kind} lb")
        assert_matches(ub, ref[f"{method}.{kind}.ub"], rtol, f"{name} {method} {kind} ub")


@pytest.mark.parametrize("name", CASES)
def test_reference_inputs_are_consistent(shared_dir, name):
    net, ref = load(shared_dir, name, "float64")
    eps = float(ref["eps"])
    np.testing.assert_array_equal(ref["lower"], np.clip(ref["x"] - eps, 0, 1))
    np.testing.assert_array_equal(ref["upper"], np.clip(ref["x"] + eps, 0, 1))
    np.testing.assert_array_equal(ref["C"], bounds.margin_spec(ref["y"], ref["C"].shape[-1]))
    # the sampled margins are a sanity floor every sound lower bound stays under
    for method in ("ibp", "crown-ibp"):
        lb, _ = bounds.compute(net, ref["lower"], ref["upper"], method, ref["C"])
        assert np.all(lb <= ref["sample.min_margin"] + 1e-12)
