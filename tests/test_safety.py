"""The safety package on its own: PICNN convexity, the export, exact vs gradient correction, the filter."""

from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from safectrl.common.faults import FallbackWarning
from safectrl.safety.correction import (
    CorrectionError,
    ExactCorrector,
    GDConfig,
    GradientCorrector,
    check_problem,
)
from safectrl.safety.cost_model import (
    ConvexCostModel,
    CostModelTrainConfig,
    fit_cost_model,
    load_cost_model,
    save_cost_model,
)
from safectrl.safety.filter import ActionBox, SafetyFilter
from safectrl.safety.picnn import PICNN, PICNNArrays, PICNNConfig


#: small networks on a shared machine: one torch thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_picnn(seed: int, obs_dim: int = 3, act_dim: int = 2, hidden=(16, 16), slope: float = 0.0,
                 scale: float = 0.5) -> PICNN:
    """A PICNN whose weights are kicked away from the initialisation, so that it is far from linear."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = PICNN(PICNNConfig(obs_dim, act_dim, hidden, slope))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(scale * torch.randn(p.shape, generator=gen))
    net.clamp_()
    return net.double()


def f(net: PICNN, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The network's forward pass in float64 (a float32 network is evaluated through a float64 copy)."""
    if next(net.parameters()).dtype != torch.float64:
        net = copy.deepcopy(net).double()
    with torch.no_grad():
        return net(torch.as_tensor(np.atleast_2d(x)), torch.as_tensor(np.atleast_2d(y))).numpy()


networks = st.builds(
    dict,
    seed=st.integers(0, 2**31 - 1),
    obs_dim=st.integers(1, 4),
    act_dim=st.integers(1, 3),
    hidden=st.lists(st.integers(1, 12), min_size=1, max_size=3).map(tuple),
    slope=st.sampled_from([0.0, 0.05, 0.5, 1.0]),
    scale=st.floats(0.0, 2.0),
)


def midpoint_violations(net: PICNN, rng: np.random.Generator, n: int, spread: float = 3.0) -> np.ndarray:
    """f(x, t y1 + (1-t) y2) − (t f(x, y1) + (1-t) f(x, y2)) on n random segments (<= 0 when convex),
    relative to 1 + the magnitude of the three values compared (float64 rounding grows with them)."""
    cfg = net.config
    x = rng.normal(size=(n, cfg.obs_dim))
    y1, y2 = spread * rng.normal(size=(2, n, cfg.act_dim))
    t = rng.uniform(0, 1, size=(n, 1))
    mid, f1, f2 = f(net, x, t * y1 + (1 - t) * y2), f(net, x, y1), f(net, x, y2)
    gap = mid - (t[:, 0] * f1 + (1 - t[:, 0]) * f2)
    return gap / (1.0 + np.abs(mid) + t[:, 0] * np.abs(f1) + (1 - t[:, 0]) * np.abs(f2))


# -- the network -----------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(spec=networks, points=st.integers(0, 2**31 - 1))
def test_picnn_is_convex_in_the_action_along_random_segments(spec, points):
    net = random_picnn(**spec)
    # relative rounding of float64 through a few layers: ~1e-15; a real violation is orders larger
    assert midpoint_violations(net, np.random.default_rng(points), 200).max() <= 1e-12


def test_segment_check_detects_a_non_convex_network():
    # Guard for the test above: with negative W^z the same check must find violations.
    net = random_picnn(3, hidden=(16, 16), scale=1.0)
    with torch.no_grad():
        for w in net.weight_z:
            w.copy_(-w.abs() - 0.5)
    assert midpoint_violations(net, np.random.default_rng(0), 2000).max() > 1e-3
    with pytest.raises(ValueError, match="negative entries"):
        net.check_convex()


@settings(max_examples=40, deadline=None)
@given(spec=networks, points=st.integers(0, 2**31 - 1))
def test_export_is_non_negative_and_reproduces_the_forward_pass(spec, points):
    net = random_picnn(**spec)
    rng = np.random.default_rng(points)
    x = rng.normal(size=(17, spec["obs_dim"]))
    y = 3 * rng.normal(size=(17, spec["act_dim"]))
    layers = net.export(torch.as_tensor(x))
    assert layers.A[0] is None and len(layers) == len(spec["hidden"]) + 1
    for A in layers.A[1:]:
        assert A.shape[0] == 17 and np.all(A >= 0)
    np.testing.assert_allclose(layers.forward(y), f(net, x, y), rtol=1e-12, atol=1e-12)


def test_training_keeps_w_z_non_negative_and_fits_a_convex_target():
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(3000, 2))
    action = rng.uniform(-2, 2, size=(3000, 2))
    target = np.abs(action[:, 0] - np.sin(obs[:, 0])) + 0.5 * (action[:, 1] - obs[:, 1]) ** 2 + obs[:, 0] ** 2
    split = 2400
    model, rep = fit_cost_model((obs[:split], action[:split], target[:split]),
                                (obs[split:], action[split:], target[split:]),
                                CostModelTrainConfig(hidden=(32, 32), epochs=15, batch_size=128, lr=3e-3))
    for w in model.picnn.weight_z:
        assert torch.all(w >= 0)
    assert rep.val_r2_best > 0.95
    assert rep.val_rmse_best == pytest.approx(rep.val_rmse[rep.best_epoch])
    assert len(rep.val_rmse) == 15


# -- exact and gradient correction -----------------------------------------------------------------------


def problems(net: PICNN, n: int, seed: int, half_width: float = 2.0):
    rng = np.random.default_rng(seed)
    cfg = net.config
    x = rng.normal(size=(n, cfg.obs_dim))
    centre = rng.normal(size=(n, cfg.act_dim))
    lo, hi = centre - half_width, centre + half_width * rng.uniform(0.2, 1.0, size=(n, cfg.act_dim))
    y_ref = centre + rng.normal(size=(n, cfg.act_dim))  # sometimes outside the box
    return x, y_ref, lo, hi


@pytest.mark.parametrize("trust, solver", [(0.0, "HIGHS"), (0.5, "HIGHS"), (0.5, "DAQP"), (0.5, "CLARABEL")])
@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_exact_program_value_equals_the_forward_pass_at_its_argmin(trust, solver, slope):
    net = random_picnn(11, hidden=(24, 24), slope=slope)
    corrector = ExactCorrector(net, trust, solver=solver)
    assert corrector.problem.is_dpp()
    x, y_ref, lo, hi = problems(net, 25, seed=1)
    res = corrector.correct(x, y_ref, lo, hi)
    assert np.all(res.action >= lo) and np.all(res.action <= hi)
    at_argmin = f(net, x, res.action) + 0.5 * trust * np.sum((res.action - y_ref) ** 2, axis=1)
    assert np.all(np.abs(res.objective - at_argmin) <= 1e-6 * np.maximum(1.0, np.abs(at_argmin)))
    np.testing.assert_allclose(res.cost, f(net, x, res.action), rtol=0, atol=1e-12)


def test_lp_re_solves_in_place_match_fresh_solves_and_hot_start_along_a_trajectory():
    """The LP path keeps one HiGHS model and changes only what differs between states (costs, bounds, the
    gate coefficients, some of them switching between zero and non-zero); every answer must equal a solve
    of a freshly built corrector, and along slowly moving states the previous basis must save iterations."""
    net = random_picnn(21, hidden=(32, 32))
    rng = np.random.default_rng(5)
    steps = 40
    x = np.cumsum(0.02 * rng.normal(size=(steps, 3)), axis=0) + rng.normal(size=3)  # a slow trajectory
    y_ref = np.cumsum(0.02 * rng.normal(size=(steps, 2)), axis=0)
    lo, hi = np.full((steps, 2), -2.0), np.full((steps, 2), 2.0)
    gates = PICNNArrays(net.double()).gates(x)
    switching = sum(int(np.sum((g == 0.0).any(0) & (g > 0.0).any(0))) for g in gates.gz[1:])
    assert switching >= 1  # some gates close or open along the trajectory (coefficients pass through zero)
    kept = ExactCorrector(net, 0.0)
    iterations = []
    for k in range(steps):
        res = kept.correct(x[k : k + 1], y_ref[k : k + 1], lo[k : k + 1], hi[k : k + 1])
        fresh = ExactCorrector(net, 0.0).correct(x[k : k + 1], y_ref[k : k + 1], lo[k : k + 1], hi[k : k + 1])
        np.testing.assert_allclose(res.objective, fresh.objective, rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(res.cost, f(net, x[k : k + 1], res.action), atol=1e-12)
        iterations.append((res.iterations[0], fresh.iterations[0]))
    hot, cold = np.array(iterations[1:]).sum(0)
    assert hot < 0.5 * cold, (hot, cold)
    assert kept._backend.cold_retries == 0


def test_a_failed_highs_solve_is_repeated_from_scratch_then_reported():
    net = random_picnn(0, hidden=(16, 16))
    x, y_ref, lo, hi = problems(net, 2, seed=0)
    corrector = ExactCorrector(net, 0.0)
    corrector.correct(x[:1], y_ref[:1], lo[:1], hi[:1])
    corrector._backend.highs.setOptionValue("simplex_iteration_limit", 0)
    corrector._backend.highs.setOptionValue("presolve", "off")
    with pytest.raises(CorrectionError, match="status"):
        corrector.correct(x[1:], y_ref[1:], lo[1:], hi[1:])
    assert corrector._backend.cold_retries == 1
    corrector._backend.highs.setOptionValue("simplex_iteration_limit", 2**31 - 1)
    res = corrector.correct(x[1:], y_ref[1:], lo[1:], hi[1:])  # the instance is usable after a failure
    np.testing.assert_allclose(res.objective, ExactCorrector(net, 0.0).correct(x[1:], y_ref[1:], lo[1:], hi[1:])
                               .objective, atol=1e-9)


def test_numpy_snapshot_equals_the_torch_network():
    for slope in (0.0, 0.2):
        net = random_picnn(3, obs_dim=4, act_dim=3, hidden=(10, 7, 5), slope=slope)
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(9, 4)), 2 * rng.normal(size=(9, 3))
        arrays = PICNNArrays(net)
        np.testing.assert_allclose(arrays.value(arrays.gates(x), y), f(net, x, y), rtol=1e-13, atol=1e-13)


def test_numpy_gradient_equals_torch_autograd():
    """The gradient descent's gradient (NumPy, reverse mode by hand) against autograd through
    PICNN.forward, with and without a leaky slope, one to three hidden layers; and at a kink."""
    for slope, hidden in ((0.0, (10, 7, 5)), (0.2, (6,)), (0.1, (8, 8))):
        net = random_picnn(5, obs_dim=4, act_dim=3, hidden=hidden, slope=slope)
        rng = np.random.default_rng(1)
        x, y = rng.normal(size=(12, 4)), 2 * rng.normal(size=(12, 3))
        arrays = PICNNArrays(net)
        value, grad = arrays.value_and_grad(arrays.gates(x), y)
        yt = torch.tensor(y, requires_grad=True)
        ft = net.double()(torch.tensor(x), yt)
        (gt,) = torch.autograd.grad(ft.sum(), yt)
        np.testing.assert_allclose(value, ft.detach().numpy(), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(grad, gt.numpy(), rtol=1e-10, atol=1e-12)
        assert np.abs(grad).max() > 0  # not a vacuous comparison
    # y = 0 with zero biases on the y- and u-paths puts first-layer pre-activations exactly at 0
    net = random_picnn(6, obs_dim=2, act_dim=2, hidden=(4,), slope=0.3)
    with torch.no_grad():
        for lin in (*net.linear_u, *net.gate_y):
            lin.weight.zero_()
            lin.bias.fill_(1.0 if lin in net.gate_y else 0.0)
    arrays = PICNNArrays(net)
    x, y = np.ones((1, 2)), np.zeros((1, 2))
    _, grad = arrays.value_and_grad(arrays.gates(x), y)
    yt = torch.tensor(y, requires_grad=True)
    (gt,) = torch.autograd.grad(net.double()(torch.tensor(x), yt).sum(), yt)
    np.testing.assert_allclose(grad, gt.numpy(), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("trust", [0.0, 0.5])
def test_exact_correction_falls_back_to_problem_solve_when_the_fast_path_cannot_be_built(trust, monkeypatch):
    """The compiled re-solve reads cvxpy internals; if they change, the result must stay exact."""
    import safectrl.safety.correction as correction

    net = random_picnn(12, hidden=(16, 16), slope=0.0)
    x, y_ref, lo, hi = problems(net, 6, seed=2)
    fast = ExactCorrector(net, trust).correct(x, y_ref, lo, hi)

    def broken(*args, **kwargs):
        raise AttributeError("reduced_A")

    monkeypatch.setattr(correction, "_ProgramData", broken)
    with pytest.warns(RuntimeWarning, match="using Problem.solve"):
        slow = ExactCorrector(net, trust)
    assert slow._backend is None and "A1" in slow._params
    res = slow.correct(x, y_ref, lo, hi)
    np.testing.assert_allclose(res.objective, fast.objective, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("trust", [0.0, 0.5])
def test_no_sampled_or_gradient_found_action_beats_the_exact_optimum(trust):
    net = random_picnn(5, obs_dim=2, act_dim=2, hidden=(16, 16))
    x, y_ref, lo, hi = problems(net, 8, seed=2)
    exact = ExactCorrector(net, trust).correct(x, y_ref, lo, hi)
    gd = GradientCorrector(net, trust, GDConfig(max_steps=200)).correct(x, y_ref, lo, hi)
    rng = np.random.default_rng(3)
    for k in range(len(x)):
        g = np.linspace(0, 1, 41)
        grid = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
        samples = np.concatenate([grid, rng.uniform(size=(2000, 2))]) * (hi[k] - lo[k]) + lo[k]
        obj = f(net, np.repeat(x[k : k + 1], len(samples), 0), samples) + 0.5 * trust * np.sum(
            (samples - y_ref[k]) ** 2, axis=1)
        assert obj.min() >= exact.objective[k] - 1e-7
    assert np.all(gd.objective >= exact.objective - 1e-7)


@pytest.fixture(scope="module")
def trained_model() -> ConvexCostModel:
    """A small cost model fitted to a convex, state-dependent target (a stand-in for a trained one)."""
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(4000, 3))
    action = rng.normal(size=(4000, 2))
    target = (np.abs(action[:, 0] - np.tanh(obs[:, 0])) + (action[:, 1] - 0.5 * obs[:, 1]) ** 2
              + 0.3 * np.abs(action.sum(1) - obs[:, 2]) + obs[:, 2] ** 2)
    model, _ = fit_cost_model((obs[:3200], action[:3200], target[:3200]),
                              (obs[3200:], action[3200:], target[3200:]),
                              CostModelTrainConfig(hidden=(32, 32), epochs=10, batch_size=128, lr=3e-3, seed=1))
    return model


def test_gradient_descent_lands_within_tolerance_of_the_exact_optimum(trained_model):
    # Stated tolerance (network cost units, i.e. standard deviations of the training targets) for the
    # default GDConfig from the policy action with trust λ = 1: median gap <= 1e-4, every gap <= 1e-2.
    rng = np.random.default_rng(4)
    x = rng.normal(size=(200, 3))
    y_ref = rng.normal(size=(200, 2))
    lo, hi = np.full((200, 2), -3.0), np.full((200, 2), 3.0)
    net = trained_model.picnn
    exact = ExactCorrector(net, 1.0).correct(x, y_ref, lo, hi)
    gd = GradientCorrector(net, 1.0).correct(x, y_ref, lo, hi)
    gap = gd.objective - exact.objective
    assert gap.min() >= -1e-7
    assert np.median(gap) <= 1e-4
    assert gap.max() <= 1e-2
    # GD never makes the objective worse than at the projected policy action it starts from
    start = np.clip(y_ref, lo, hi)
    assert np.all(gd.objective <= f(net, x, start) + 1e-12)


def test_gradient_path_is_recorded_and_stays_in_the_box(trained_model):
    x, y_ref = np.zeros((3, 3)), np.array([[2.0, -2.0], [0.0, 0.0], [5.0, 5.0]])
    lo, hi = np.full((3, 2), -1.0), np.full((3, 2), 1.0)
    res = GradientCorrector(trained_model.picnn, 0.3).correct(x, y_ref, lo, hi, record_path=True)
    assert res.path.shape[1:] == (3, 2) and len(res.path) >= 2
    assert np.all(res.path >= -1.0) and np.all(res.path <= 1.0)
    np.testing.assert_array_equal(res.path[0], np.clip(y_ref, -1, 1))
    np.testing.assert_array_equal(res.path[-1], res.action)


@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
def test_solver_failure_is_an_error_not_a_silent_answer():
    net = random_picnn(0, hidden=(8,))
    corrector = ExactCorrector(net, 1.0, solver="CLARABEL", solver_options={"max_iter": 1})
    x, y_ref, lo, hi = problems(net, 1, seed=0)
    with pytest.raises(CorrectionError, match="status"):
        corrector.correct(x, y_ref, lo, hi)


@pytest.mark.filterwarnings("ignore:Solution may be inaccurate")
def test_a_failed_clarabel_solve_is_repeated_with_iterative_refinement():
    net = random_picnn(0, hidden=(8,))
    x, y_ref, lo, hi = problems(net, 1, seed=0)
    corrector = ExactCorrector(net, 1.0, solver="CLARABEL",
                               solver_options={"max_iter": 1, "iterative_refinement_enable": False})
    with pytest.raises(CorrectionError, match="status"):
        corrector.correct(x, y_ref, lo, hi)
    assert corrector._backend.refined_retries == 1  # the retry ran (and, with max_iter 1, failed as well)
    default = ExactCorrector(net, 1.0, solver="CLARABEL")  # its default: no refinement, exact all the same
    assert default.solver_options["iterative_refinement_enable"] is False
    res = default.correct(x, y_ref, lo, hi)
    with torch.no_grad():
        f = net(torch.as_tensor(x), torch.as_tensor(res.action)).numpy() + 0.5 * np.sum((res.action - y_ref) ** 2, 1)
    np.testing.assert_allclose(res.objective, f, atol=1e-6)
    assert default._backend.refined_retries == 0


def slow_trajectory(n: int, seed: int):
    """Consecutive states of a slowly moving system (3 states, 2 inputs): what a filter sees."""
    rng = np.random.default_rng(seed)
    x = np.cumsum(0.02 * rng.normal(size=(n, 3)), axis=0) + rng.normal(size=3)
    y_ref = np.cumsum(0.02 * rng.normal(size=(n, 2)), axis=0)
    return x, y_ref, np.full((n, 2), -2.0), np.full((n, 2), 2.0)


# Clarabel as the reference: tolerances 1e-12, where its argmin is good to ~1e-10 on these QPs
TIGHT_CLARABEL = {"tol_gap_abs": 1e-12, "tol_gap_rel": 1e-12, "tol_feas": 1e-12}


@pytest.mark.parametrize("states", ["random", "consecutive"])
def test_daqp_is_the_qp_default_and_its_optimum_is_clarabels(trained_model, states):
    net = trained_model.picnn
    if states == "random":
        rng = np.random.default_rng(7)
        x, y_ref = rng.normal(size=(40, 3)), rng.normal(size=(40, 2))
        lo, hi = np.full((40, 2), -2.0), np.full((40, 2), 2.0)
    else:
        x, y_ref, lo, hi = slow_trajectory(40, seed=8)
    daqp_corrector = ExactCorrector(net, 0.7)
    assert daqp_corrector.solver == "DAQP"
    one_by_one = [daqp_corrector.correct(x[k : k + 1], y_ref[k : k + 1], lo[k : k + 1], hi[k : k + 1])
                  for k in range(len(x))]
    objective = np.concatenate([r.objective for r in one_by_one])
    action = np.concatenate([r.action for r in one_by_one])
    ref = ExactCorrector(net, 0.7, solver="CLARABEL", solver_options=TIGHT_CLARABEL).correct(x, y_ref, lo, hi)
    np.testing.assert_allclose(objective, ref.objective, rtol=0, atol=1e-8)
    np.testing.assert_allclose(action, ref.action, rtol=0, atol=1e-8)
    at_argmin = f(net, x, action) + 0.35 * np.sum((action - y_ref) ** 2, axis=1)
    np.testing.assert_allclose(objective, at_argmin, rtol=0, atol=1e-10)
    assert daqp_corrector._backend.cold_retries == 0


def test_daqp_warm_start_gives_the_cold_answers_in_fewer_iterations(trained_model):
    """One DAQP workspace along a trajectory starts every solve from the previous working set; each answer
    must be that of a fresh corrector, and the warm starts must save iterations."""
    net = trained_model.picnn
    x, y_ref, lo, hi = slow_trajectory(30, seed=9)
    kept = ExactCorrector(net, 0.7)
    iterations = []
    for k in range(len(x)):
        args = (x[k : k + 1], y_ref[k : k + 1], lo[k : k + 1], hi[k : k + 1])
        warm, cold = kept.correct(*args), ExactCorrector(net, 0.7).correct(*args)
        np.testing.assert_allclose(warm.objective, cold.objective, rtol=0, atol=1e-10)
        np.testing.assert_allclose(warm.action, cold.action, rtol=0, atol=1e-9)
        iterations.append((warm.iterations[0], cold.iterations[0]))
    warm_total, cold_total = np.array(iterations[1:]).sum(0)
    assert warm_total < 0.5 * cold_total, (warm_total, cold_total)
    assert kept._backend.cold_retries == 0


def test_a_failed_daqp_solve_is_an_error():
    net = random_picnn(0, hidden=(16, 16))
    x, y_ref, lo, hi = problems(net, 3, seed=0)
    limited = ExactCorrector(net, 1.0, solver_options={"eps_prox": 1e-3, "eta_prox": 1e-12, "iter_limit": 1})
    with pytest.raises(CorrectionError, match="DAQP returned status DAQP exit flag -4"):  # iteration limit
        limited.correct(x[:1], y_ref[:1], lo[:1], hi[:1])
    with pytest.raises(ValueError, match="DAQP has no setting 'max_iter'"):
        ExactCorrector(net, 1.0, solver_options={"max_iter": 10})


def test_an_answer_failing_the_kkt_check_is_retried_cold_then_an_error(monkeypatch):
    import safectrl.safety.correction as correction

    net = random_picnn(0, hidden=(16, 16))
    x, y_ref, lo, hi = problems(net, 3, seed=0)
    corrector = ExactCorrector(net, 1.0)
    corrector.correct(x[:1], y_ref[:1], lo[:1], hi[:1])
    monkeypatch.setattr(correction, "KKT_TOL", -1.0)  # no answer passes
    with pytest.raises(CorrectionError, match="violates the KKT conditions"):
        corrector.correct(x[1:2], y_ref[1:2], lo[1:2], hi[1:2])
    assert corrector._backend.cold_retries == 1
    monkeypatch.undo()
    res = corrector.correct(x[2:], y_ref[2:], lo[2:], hi[2:])  # usable after a failure
    np.testing.assert_allclose(res.objective, ExactCorrector(net, 1.0, solver="CLARABEL").correct(
        x[2:], y_ref[2:], lo[2:], hi[2:]).objective, atol=1e-8)


@pytest.mark.parametrize("corrector_cls", [GradientCorrector, ExactCorrector])
@pytest.mark.parametrize("change, message", [
    (lambda p: (np.full_like(p[0], np.nan), *p[1:]), "state of problem 0 contains NaN"),
    (lambda p: (p[0], p[1], p[2], p[2] - 1.0), "empty action box"),
    (lambda p: (p[0][:, :2], *p[1:]), r"states must have shape \(N, 3\)"),
    (lambda p: (p[0], p[1][:, :1], *p[2:]), r"y_ref must have shape \(4, 2\)"),
    (lambda p: (p[0], p[1], p[2], np.full_like(p[3], np.inf)), "upper bound of problem 0 contains NaN or inf"),
])
def test_bad_correction_input_gives_a_clear_error(corrector_cls, change, message):
    net = random_picnn(0, hidden=(8,))
    args = change(problems(net, 4, seed=0))
    with pytest.raises(ValueError, match=message):
        corrector_cls(net).correct(*args)


def test_negative_trust_and_bad_gd_config_are_rejected():
    net = random_picnn(0, hidden=(8,))
    with pytest.raises(ValueError, match="trust"):
        GradientCorrector(net, -1.0)
    with pytest.raises(ValueError, match="trust"):
        ExactCorrector(net, float("nan"))
    with pytest.raises(ValueError, match="shrink"):
        GDConfig(shrink=1.5)
    with pytest.raises(ValueError, match="negative_slope"):
        PICNNConfig(3, 2, (8,), negative_slope=-0.1)


def test_check_problem_accepts_a_degenerate_box():
    x, y, lo = np.zeros((1, 2)), np.zeros((1, 1)), np.ones((1, 1))
    assert check_problem(x, y, lo, lo, 2, 1)[2][0, 0] == 1.0


# -- checkpoints -----------------------------------------------------------------------------------------


def test_checkpoint_round_trip(trained_model, tmp_path):
    save_cost_model(trained_model, tmp_path / "ck", {"note": "test"})
    assert sorted(p.name for p in (tmp_path / "ck").iterdir()) == ["config.json", "model.safetensors"]
    loaded = load_cost_model(tmp_path / "ck")
    rng = np.random.default_rng(0)
    obs, act = rng.normal(size=(50, 3)), rng.normal(size=(50, 2))
    np.testing.assert_array_equal(loaded.predict(obs, act), trained_model.predict(obs, act))


def test_checkpoint_with_negative_w_z_is_refused(trained_model, tmp_path):
    bad = copy.deepcopy(trained_model)
    with torch.no_grad():
        bad.picnn.weight_z[0][0, 0] = -1.0
    save_cost_model(bad, tmp_path / "bad")
    with pytest.raises(ValueError, match="not be convex"):
        load_cost_model(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_cost_model(tmp_path / "missing")


# -- the filter ------------------------------------------------------------------------------------------


class ConstantPolicy:
    def __init__(self, action):
        self.action = np.asarray(action, dtype=float)
        self.seeds = []

    def reset(self, seed=None):
        self.seeds.append(seed)

    def act(self, obs):
        return self.action.copy()


BOX = ActionBox(low=(-1.0, -2.0), high=(1.0, 2.0))


@pytest.mark.parametrize("method", ["gd", "exact"])
def test_filter_has_the_common_interface_and_records_each_step(trained_model, method):
    policy = ConstantPolicy([3.0, 0.0])  # outside the box in the first input
    filt = SafetyFilter(policy, trained_model, BOX, method=method, trust=0.5)
    filt.reset(seed=7)
    assert policy.seeds == [7]
    rng = np.random.default_rng(0)
    for _ in range(4):
        a = filt.act(rng.normal(size=3))
        assert a.shape == (2,) and np.all(a >= BOX.low) and np.all(a <= BOX.high)
    rec = filt.record.arrays()
    assert rec["raw_action"].shape == (4, 2) and np.all(rec["raw_action"][:, 0] == 3.0)
    assert rec["action"].shape == (4, 2) and rec["predicted_cost"].shape == (4,)
    # the trust term is >= 0 and zero at the start, so the correction never raises the predicted cost
    assert np.all(rec["predicted_cost"] <= rec["predicted_cost_raw"] + 1e-9)
    filt.reset()
    assert len(filt.record.action) == 0


def test_filter_with_large_trust_returns_the_projected_policy_action(trained_model):
    filt = SafetyFilter(ConstantPolicy([3.0, 0.5]), trained_model, BOX, method="exact", trust=1e6)
    np.testing.assert_allclose(filt.act(np.zeros(3)), [1.0, 0.5], atol=1e-4)


def test_filter_gd_and_exact_agree(trained_model):
    obs = np.random.default_rng(3).normal(size=(30, 3))
    raw = np.random.default_rng(4).uniform(-1, 1, size=(30, 2))
    box = ActionBox(low=(-2.0, -2.0), high=(2.0, 2.0))
    out = {m: SafetyFilter(ConstantPolicy([0, 0]), trained_model, box, method=m, trust=1.0).correct(obs, raw)
           for m in ("gd", "exact")}
    np.testing.assert_allclose(out["gd"][0], out["exact"][0], atol=0.05)
    assert np.all(out["exact"][2] <= out["exact"][1] + 1e-9)  # predicted cost never above the raw action's


def test_filter_rate_limit_around_the_previous_action(trained_model):
    box = ActionBox(low=(-5.0, -5.0), high=(5.0, 5.0), rate=(0.1, 0.2), prev_action_index=(0, 1))
    filt = SafetyFilter(ConstantPolicy([4.0, -4.0]), trained_model, box, method="gd", trust=0.1, strict=True)
    obs = np.array([0.5, -0.5, 0.0])
    a = filt.act(obs)
    assert abs(a[0] - 0.5) <= 0.1 + 1e-12 and abs(a[1] + 0.5) <= 0.2 + 1e-12
    with pytest.raises(ValueError, match="empty action box"):
        filt.act(np.array([9.0, 0.0, 0.0]))


@pytest.mark.parametrize("obs, action, message", [
    (np.array([np.nan, 0.0, 0.0]), [0.0, 0.0], "observation contains NaN"),
    (np.zeros(4), [0.0, 0.0], r"observation must have shape \(3,\)"),
    (np.zeros(3), [np.nan, 0.0], "policy action contains NaN"),
    (np.zeros(3), [0.0, 0.0, 0.0], r"policy action must have shape \(2,\)"),
])
def test_strict_filter_bad_input_gives_a_clear_error(trained_model, obs, action, message):
    filt = SafetyFilter(ConstantPolicy(action), trained_model, BOX, method="gd", strict=True)
    with pytest.raises(ValueError, match=message):
        filt.act(obs)


def test_bad_filter_configuration_is_rejected(trained_model):
    with pytest.raises(ValueError, match="unknown correction method 'newton'"):
        SafetyFilter(ConstantPolicy([0, 0]), trained_model, BOX, method="newton")
    with pytest.raises(ValueError, match="empty action box"):
        ActionBox(low=(1.0, 0.0), high=(0.0, 1.0))
    with pytest.raises(ValueError, match="needs prev_action_index"):
        ActionBox(low=(0.0, 0.0), high=(1.0, 1.0), rate=(0.1, 0.1))
    with pytest.raises(ValueError, match="box has 3 actions"):
        SafetyFilter(ConstantPolicy([0, 0]), trained_model, ActionBox((0, 0, 0), (1, 1, 1)))


# -- bad proposals and observations: the safe fallback input ------------------------------------------------

def test_filter_answers_a_nan_proposal_with_the_last_safe_input_and_counts_it(trained_model):
    class Flaky:
        def __init__(self):
            self.proposals = iter([[np.nan, 0.0], [0.5, 0.5], [np.inf, 0.0], [0.2, -0.1]])

        def reset(self, seed=None):
            pass

        def act(self, obs):
            return np.array(next(self.proposals))

    filt = SafetyFilter(Flaky(), trained_model, BOX, method="gd")
    filt.reset()
    obs = np.zeros(3)
    with pytest.warns(FallbackWarning, match="policy action contains NaN or inf.*safe fallback") as caught:
        first = filt.act(obs)
        second = filt.act(obs)
        third = filt.act(obs)
    np.testing.assert_array_equal(first, [0.0, 0.0])  # nothing returned yet: the middle of the box
    np.testing.assert_array_equal(third, second)  # the last safe input
    filt.act(obs)
    assert len(caught) == 1  # warned once
    rec = filt.record.arrays()
    np.testing.assert_array_equal(rec["fallback"], [True, False, True, False])
    assert filt.record.fallbacks == 2 and np.all(np.isnan(rec["predicted_cost"][[0, 2]]))
    assert np.all(np.isfinite(rec["action"]))


def test_filter_answers_a_nan_observation_and_a_failed_correction_with_a_safe_input(trained_model):
    filt = SafetyFilter(ConstantPolicy([3.0, 0.5]), trained_model, BOX, method="exact")
    with pytest.warns(FallbackWarning, match="observation contains NaN"):
        np.testing.assert_array_equal(filt.act(np.array([np.nan, 0.0, 0.0])), [1.0, 0.5])  # proposal clipped
    good = filt.act(np.zeros(3))

    def fail(*args):
        raise CorrectionError("HiGHS returned status infeasible for state 0")

    filt.corrector.correct = fail
    np.testing.assert_array_equal(filt.act(np.zeros(3)), good)
    assert filt.record.fallback == [True, False, True]
    assert filt.episode_report() == {"fallbacks": 2}  # the study's column
    filt.reset()
    assert filt.episode_report() == {"fallbacks": 0}
    filt.strict = True
    with pytest.raises(CorrectionError, match="status infeasible"):
        filt.act(np.zeros(3))


def test_filter_far_outside_the_data_still_gives_an_input_in_the_box(trained_model):
    for method in ("gd", "exact"):
        filt = SafetyFilter(ConstantPolicy([0.3, 0.3]), trained_model, BOX, method=method)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FallbackWarning)
            a = filt.act(np.array([1e12, -1e12, 1e12]))
        assert np.all(np.isfinite(a)) and np.all(a >= BOX.low) and np.all(a <= BOX.high)
        if filt.record.fallback[0]:  # a solver that gives up there: the proposal, clipped, counted
            np.testing.assert_array_equal(a, [0.3, 0.3])


def test_strict_filter_raises_on_a_nan_proposal(trained_model):
    filt = SafetyFilter(ConstantPolicy([np.nan, 0.0]), trained_model, BOX, strict=True)
    with pytest.raises(ValueError, match="policy action contains NaN or inf"):
        filt.act(np.zeros(3))
    assert filt.record.fallback == []
