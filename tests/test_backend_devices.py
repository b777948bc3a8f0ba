"""The same results on every device: gls_np on CuPy arrays against gls_np on NumPy arrays.

Every test takes the ``xp`` fixture. Under cupy (marked ``gpu``: skipped without CuPy and a
CUDA device) the workload runs on device arrays, with the GPU selected for new arrays
(``using``), and must give the numbers of the same workload on the CPU, in float64
to RTOL (cuBLAS and CuPy's reductions add in other orders), and keep its property
(bounds hold at sampled points, attacks stay in the box). Under numpy the same test runs the
harness and checks the property on the CPU, so a GPU session finds the tests themselves
already working. ``benchmarks/run.py --device gpu`` times the same paths.
"""

import contextlib
import copy

import numpy as np
import pytest

from gls_np import attacks, backend, bounds, checkpoint, nets, objectives, ops
from gls_np.backend import to_host
from gls_np.bounds import crown
from gls_np.bounds.alpha_crown import alpha_crown
from gls_np.config import Config
from gls_np.tensor import value_and_grad

RTOL = 1e-9


@contextlib.contextmanager
def using(xp):
    """Select the device of ``xp`` for new arrays inside the block (references run outside)."""
    before = backend.device()
    backend.set_device("cpu" if xp is np else "gpu")
    try:
        yield
    finally:
        backend.set_device(before)


def on(xp, net):
    """A copy of ``net`` whose parameters live where ``xp``'s arrays do."""
    moved = copy.copy(net)
    moved.theta = xp.asarray(net.theta)
    return moved


def assert_close(got, want, what):
    got, want = to_host(got), to_host(want)
    scale = max(1.0, float(np.max(np.abs(want))))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=RTOL * scale, err_msg=what)


def cnn3(seed=0):
    """The paper's CNN3 for MNIST in float64, built on the host."""
    with using(np):
        return nets.build("cnn3", "mnist", dtype="float64", init="ibp", seed=seed)


def problem(rng, batch=4, eps=0.05):
    x = rng.uniform(0, 1, (batch, 1, 28, 28))
    y = rng.integers(0, 10, batch)
    return x, y, eps


@pytest.mark.parametrize("members", [0, 3], ids=["single", "population"])
@pytest.mark.parametrize("method", bounds.METHODS)
def test_bounds_match_numpy_and_hold_at_sampled_points(method, members, xp, rng):
    net = cnn3()
    x, y, eps = problem(rng)
    box = bounds.linf_box(x, eps)
    C = bounds.margin_spec(y, 10, dtype=np.float64)
    params = net.theta + 0.02 * rng.standard_normal((members, net.n_params)) if members else None
    want = bounds.compute(net, box.lb, box.ub, method, C=C, params=params)
    dev = on(xp, net)
    with using(xp):
        got = bounds.compute(
            dev,
            xp.asarray(box.lb),
            xp.asarray(box.ub),
            method,
            C=xp.asarray(C),
            params=None if params is None else xp.asarray(params),
        )
    for g, w, side in zip(got, want, ("lb", "ub")):
        assert type(g) is type(xp.asarray(0.0))
        assert_close(g, w, f"{method} {side}")
    lb, ub = (to_host(a) for a in got)
    points = xp.asarray(rng.uniform(box.lb, box.ub, (16, *box.lb.shape)))
    for k in range(16):
        logits = to_host(dev.forward(points[k], None if params is None else xp.asarray(params)))
        margins = np.einsum("bsk,...bk->...bs", C, logits)
        assert np.all(margins >= lb - 1e-9) and np.all(margins <= ub + 1e-9), method


def test_alpha_crown_takes_host_intermediate_bounds_for_a_device_network(xp, rng):
    net = cnn3()
    x, y, eps = problem(rng, batch=2)
    box = bounds.linf_box(x, eps)
    C = bounds.margin_spec(y, 10, dtype=np.float64)
    pre = bounds.intermediate_bounds(net, box.lb, box.ub, "deeppoly")  # NumPy arrays
    want, _ = alpha_crown(net, box.lb, box.ub, C, steps=2, pre=pre)
    dev = on(xp, net)
    with using(xp):
        got, used = alpha_crown(
            dev, xp.asarray(box.lb), xp.asarray(box.ub), xp.asarray(C), steps=2, pre=pre
        )
    assert all(type(b.lb) is type(xp.asarray(0.0)) for b in used.values())
    # Adam on the slopes amplifies rounding differences a little: 1e-7, as for the cascade
    np.testing.assert_allclose(to_host(got), want, rtol=1e-7, atol=1e-7, err_msg="alpha-CROWN")


@pytest.mark.parametrize("fraction", [0.0, 1.0], ids=["channels", "sites"])
def test_deeppoly_skipping_paths_match_numpy(fraction, xp, rng, monkeypatch):
    """Small eps leaves most neurons stable, so the picked rows and their gathers run."""
    monkeypatch.setattr(crown, "SITE_FRACTION", fraction)
    path = "_sites_bounds" if fraction else "_backsubstituted"
    calls, run = [], getattr(crown, path)

    def counted(*args, **kw):
        if path == "_sites_bounds" or kw.get("slots") is not None:
            calls.append(path)
        return run(*args, **kw)

    monkeypatch.setattr(crown, path, counted)
    net = cnn3()
    x, y, _ = problem(rng, batch=6)
    box = bounds.linf_box(x, 0.002)
    C = bounds.margin_spec(y, 10, dtype=np.float64)
    want = bounds.intermediate_bounds(net, box.lb, box.ub, "deeppoly")
    want_out = bounds.compute(net, box.lb, box.ub, "deeppoly", C=C)
    dev = on(xp, net)
    lo, up = xp.asarray(box.lb), xp.asarray(box.ub)
    with using(xp):
        got = bounds.intermediate_bounds(dev, lo, up, "deeppoly")
        got_out = bounds.compute(dev, lo, up, "deeppoly", C=xp.asarray(C))
    assert got.keys() == want.keys()
    for k in want:
        assert_close(got[k].lb, want[k].lb, f"pre[{k}] lb")
        assert_close(got[k].ub, want[k].ub, f"pre[{k}] ub")
    assert_close(got_out[0], want_out[0], "out lb")
    assert_close(got_out[1], want_out[1], "out ub")
    assert len(calls) >= 4, f"{path} ran {len(calls)} times"  # two passes on each device


@pytest.mark.parametrize("relax", ["none", "pgd", "ibp", "crown-ibp", "deeppoly", "mtl-ibp"])
def test_loss_and_gradient_match_numpy(relax, xp, rng):
    net = cnn3()
    x, y, eps = problem(rng, batch=3)
    want = value_and_grad(
        lambda t: objectives.make(relax, net, pgd_steps=2)(
            t, x, y, eps, net.theta, np.random.default_rng(1)
        ),
        net.theta,
    )
    dev = on(xp, net)
    xd, yd = xp.asarray(x), xp.asarray(y)
    with using(xp):
        got = value_and_grad(
            lambda t: objectives.make(relax, dev, pgd_steps=2)(
                t, xd, yd, eps, dev.theta, np.random.default_rng(1)
            ),
            dev.theta,
        )
    assert_close(got[0], want[0], f"{relax} loss")
    assert_close(got[1][0], want[1][0], f"{relax} gradient")
    assert np.isfinite(float(got[0]))


@pytest.mark.parametrize("relax", ["ibp", "deeppoly"])
def test_population_losses_match_numpy(relax, xp, rng):
    net = cnn3()
    x, y, eps = problem(rng, batch=3)
    thetas = net.theta + 0.02 * rng.standard_normal((4, net.n_params))
    want = objectives.make(relax, net)(thetas, x, y, eps, net.theta, None)
    dev = on(xp, net)
    with using(xp):
        got = objectives.make(relax, dev)(
            xp.asarray(thetas), xp.asarray(x), xp.asarray(y), eps, dev.theta, None
        )
    assert got.shape == (4,)
    assert_close(got, want, f"{relax} population losses")


@pytest.mark.parametrize("optimizer", ["grad", "rgs", "pgpe"])
def test_training_steps_match_numpy(optimizer, xp, rng):
    """Three steps of each method from one start: the same parameters on both devices."""
    from gls_np import train

    x, y, eps = problem(rng, batch=4)

    def three_steps(on_xp):
        with using(on_xp):
            cfg = Config(
                arch="cnn3",
                dataset="mnist",
                relax="ibp",
                optimizer=optimizer,
                popsize=4,
                rgs_samples=2,
                batch_size=4,
                eps=eps,
                dtype="float64",
                device="cpu" if on_xp is np else "gpu",
            )
            net = on(on_xp, cnn3())
            method = train.build_method(cfg, None, net)
            loss_fn = objectives.make("ibp", net)
            state, losses = method.init(net.theta), []
            for k in range(3):
                loss, state = method.step(state, loss_fn, x, y, eps, 1e-3, 0.0, (0, 1, k))
                losses.append(loss)
            return method.center(state), losses

    want, want_losses = three_steps(np)
    got, got_losses = three_steps(xp)
    assert type(got) is type(xp.asarray(0.0))
    assert_close(got, want, f"{optimizer} parameters")
    np.testing.assert_allclose(got_losses, want_losses, rtol=RTOL)
    assert np.all(np.isfinite(got_losses))


def test_pgd_stays_in_the_box_and_matches_numpy(xp, rng):
    net = cnn3()
    x, y, eps = problem(rng, batch=4, eps=0.1)
    want = attacks.pgd(net, x, y, eps, steps=5, rng=np.random.default_rng(3))
    dev = on(xp, net)
    with using(xp):
        got = attacks.pgd(
            dev, xp.asarray(x), xp.asarray(y), eps, steps=5, rng=np.random.default_rng(3)
        )
    g = to_host(got)
    assert np.all(g >= np.clip(x - eps, 0, 1) - 1e-12) and np.all(
        g <= np.clip(x + eps, 0, 1) + 1e-12
    )
    assert_close(g, want, "adversarial points")


def test_pgd_of_a_device_network_on_a_host_batch_returns_a_host_batch(xp, rng):
    net = cnn3()
    x, y, eps = problem(rng, batch=3, eps=0.1)
    want = attacks.pgd(net, x, y, eps, steps=4, rng=np.random.default_rng(5))
    got = attacks.pgd(on(xp, net), x, y, eps, steps=4, rng=np.random.default_rng(5))
    assert type(got) is np.ndarray and got.dtype == x.dtype
    assert_close(got, want, "adversarial points")


def test_a_device_network_takes_a_host_batch(xp, rng):
    net = cnn3()
    x = rng.uniform(0, 1, (3, 1, 28, 28))
    want = net(x)
    got = on(xp, net)(x)  # x stays a NumPy array: forward moves it to the parameters
    assert type(got) is type(xp.asarray(0.0))
    assert_close(got, want, "logits")


def test_checkpoint_of_a_device_network_round_trips(xp, tmp_path, rng):
    dev = on(xp, cnn3())
    path = tmp_path / "net.h5"
    with using(xp):
        checkpoint.save(path, dev, arch="cnn3", dataset="mnist")
        loaded, _ = checkpoint.load(path)
    assert type(loaded.theta) is type(xp.asarray(0.0))
    assert_close(loaded.theta, dev.theta, "theta")


def test_scatter_add_take_and_put_match_numpy(xp, rng):
    rows = rng.standard_normal((7, 3, 2))
    for idx in (rng.integers(0, 5, 7), np.sort(rng.integers(0, 3, 7)), np.arange(7)):
        n = int(idx.max()) + 1
        want = np.zeros((n, 3, 2))
        np.add.at(want, idx, rows)
        got = backend.scatter_add(xp.asarray(rows), xp.asarray(idx), n)
        assert_close(got, want, f"scatter_add {idx}")
        taken = ops.take(xp.asarray(rows), xp.asarray(idx % 7), 0)
        assert_close(taken, rows[idx % 7], "take")
    distinct = rng.permutation(7)[:4]
    base = rng.standard_normal((7, 3, 2))
    want = base.copy()
    want[distinct] = rows[:4]
    got = ops.put(xp.asarray(base), xp.asarray(distinct), xp.asarray(rows[:4]), 0)
    assert_close(got, want, "put")


def test_free_memory_is_the_devices(xp):
    with using(xp):
        assert backend.free_memory_bytes() > 0
        assert backend.device() == ("cpu" if xp is np else "gpu")


@pytest.fixture
def mnist_mirror(monkeypatch, shared_dir):
    """MNIST from the shared data folder (a GPU session carries it: benchmarks/gpu_check.sh)."""
    mirror = shared_dir / "data"
    if not (mirror / "mnist").is_dir():
        pytest.skip(f"no MNIST under {mirror}")
    monkeypatch.setenv("GLS_NP_DATA_MIRROR", str(mirror))
    monkeypatch.setenv("GLS_NP_PROGRESS", "0")


@pytest.mark.parametrize(
    "optimizer, relax", [("grad", "ibp"), ("pgpe", "deeppoly")], ids=["grad-ibp", "pgpe-deeppoly"]
)
def test_a_training_run_matches_numpy(optimizer, relax, xp, mnist_mirror, tmp_path):
    """train.run end to end (steps, evaluation, PGD and certified accuracy, checkpoint)."""
    from gls_np import train

    def run(on_xp, name):
        cfg = Config(
            arch="cnn3",
            dataset="mnist",
            relax=relax,
            optimizer=optimizer,
            eps=0.05,
            epochs=1,
            batch_size=8,
            train_size=24,
            test_size=16,
            cert_size=8,
            popsize=4,
            pgd_steps=2,
            lr=1e-3,
            dtype="float64",
            device="cpu" if on_xp is np else "gpu",
            seed=5,
            out=str(tmp_path / name),
            data_dir=str(tmp_path / "data"),
        )
        with using(on_xp):  # train.run selects cfg.device; this restores the selection after
            last = train.run(cfg)
        return last, checkpoint.load(tmp_path / name / "checkpoint.h5")[0].theta

    want, want_theta = run(np, "reference")
    got, got_theta = run(xp, "device")
    assert got["step"] == want["step"] == 3
    for key in ("train_loss", "test_acc", "adv_acc", "cert_acc"):
        np.testing.assert_allclose(got[key], want[key], rtol=1e-7, err_msg=key)
    assert_close(got_theta, want_theta, "trained parameters")


def test_the_certification_cascade_matches_numpy(xp, shared_dir):
    """Every incomplete step on device arrays, on a trained CNN3: the same verdicts by the same
    steps (the MILP, timed and on the host, is left out: timeout 0)."""
    import json

    from gls_np import model
    from gls_np.certify import cascade

    ref = np.load(shared_dir / "reference" / "bounds" / "cnn3_mnist_trained_eps0.1.npz")
    net = model.from_layers(json.loads(str(ref["layers"])), dtype="float64")
    net.load_state_dict({k[len("param.") :]: ref[k] for k in ref.files if k.startswith("param.")})
    x, y = ref["x"], ref["y"]
    opts = cascade.Options(eps=0.05, pgd_steps=5, pgd_restarts=1, alpha_steps=3, timeout=0.0)
    want, _ = cascade.certify(net, x, y, np.arange(len(y)), opts)
    with using(xp):
        got, _ = cascade.certify(on(xp, net), x, y, np.arange(len(y)), opts)
    verdicts = [(r["step"], r["status"]) for r in got]
    assert verdicts == [(r["step"], r["status"]) for r in want]
    assert len({step for step, _ in verdicts}) >= 4, verdicts
    for r, w in zip(got, want):
        for key in ("lb_ibp", "lb_crown_ibp", "lb_deeppoly", "lb_alpha_crown"):
            np.testing.assert_allclose(r[key], w[key], rtol=1e-7, err_msg=key)
