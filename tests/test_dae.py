"""The reactor's quasi-steady-state DAE (R algebraic) against the ODE it is built from."""

from __future__ import annotations

import runpy
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from safectrl.controllers.pi import NOMINAL_TUNING, PIController
from safectrl.models import polycstr as pc
from safectrl.models.core import DAEModel, ODEModel
from safectrl.rl.env import TaskEnv
from safectrl.rl.rollout import run_episode

_DIFF = [pc.STATES.index(s) for s in ("A", "I", "P", "T")]
_R = pc.STATES.index("R")


def _pi_episode(scenario: str, intervals: int) -> tuple[np.ndarray, np.ndarray]:
    """The env's states (intervals+1, 5) and applied inputs (intervals, 2) of a nominal-PI episode."""
    ep = run_episode(TaskEnv(pc.TASK, scenario), PIController(NOMINAL_TUNING), seed=0)
    return ep.infos["state"][: intervals + 1], np.clip(ep.actions[:intervals], pc.U_LOW, pc.U_HIGH)


def _replay(x_ode: np.ndarray, u: np.ndarray, p: np.ndarray, method: str) -> np.ndarray:
    """The DAE's own trajectory from ``x_ode[0]`` under ``u``, interval ends, shape (len(u), 5)."""
    x = [x_ode[0]]
    for k in range(len(u)):
        x.append(pc.DAE.step(x[-1], u[k], p, method=method))
    return np.array(x[1:])


def _relative(x: np.ndarray, ref: np.ndarray) -> np.ndarray:
    return np.abs(x[:, _DIFF] - ref[:, _DIFF]) / np.abs(ref[:, _DIFF])


def _residual(x: np.ndarray, u: np.ndarray, p: np.ndarray) -> np.ndarray:
    """The algebraic residual at full states ``x`` (n, 5), scaled by R's nominal magnitude: 1/s."""
    _, alg = pc.DAE.dae_function()(x[:, _DIFF].T, x[:, _R][None, :], u.T, np.tile(p, (len(x), 1)).T)
    return np.asarray(alg).ravel() / pc.X_SCALE[_R]


def test_dae_rows_are_the_rhs_rows(reactor_points, nominal_params):
    n = 50
    x, u = reactor_points(n)
    p = pc.MODEL.param_vector(nominal_params)
    ode, alg = pc.DAE.dae_function()(x[:, _DIFF].T, x[:, _R][None, :], u.T, np.tile(p, (n, 1)).T)
    xdot = pc.MODEL.rhs_numpy(x, u, nominal_params)
    np.testing.assert_allclose(np.asarray(ode).T, xdot[:, _DIFF], rtol=1e-13, atol=0)
    np.testing.assert_allclose(np.asarray(alg).ravel(), xdot[:, _R], rtol=1e-13, atol=1e-30)


@pytest.mark.parametrize("guess", [0.0, 1.0, 50.0])  # times the steady R
def test_consistent_radicals_are_the_positive_root_from_any_guess(guess, nominal_params):
    ss = pc.steady_state(*pc.HIGH_GRADE, nominal_params)
    p = pc.MODEL.param_vector(nominal_params)
    x = ss.x.copy()
    x[_R] *= guess
    z = float(pc.DAE.consistent_function()(x, ss.u, p))
    assert z == pytest.approx(ss.x[_R], rel=1e-9)


def test_dae_matches_ode_through_a_grade_change_under_pi(nominal_params):
    """Replayed over the first 6 intervals of grade_up: A, I, P, T within 1e-3 of the ODE, residual ~ 0."""
    x_ode, u = _pi_episode("grade_up", 6)
    p = pc.MODEL.param_vector(nominal_params)
    for method in ("idas", "collocation"):
        x_dae = _replay(x_ode, u, p, method)
        dev = _relative(x_dae, x_ode[1:])
        assert dev.max() <= 1e-3, (method, dev.max(axis=0))
        assert np.abs(_residual(x_dae, u, p)).max() < 1e-10
        # the DAE's R is its quasi-steady value, not the ODE's (which lags it): near it, not equal
        assert np.abs(x_dae[:, _R] / x_ode[1:, _R] - 1).max() < 1e-2


def test_dae_on_a_startup_misses_p_while_the_radicals_build_up(nominal_params):
    """From an empty reactor the radicals relax slowly (1/D at R = 0): the QSS over-predicts P at first.

    A, I, T stay within 1e-3 of the ODE; P's deviation is large in the first interval and shrinks every
    interval as R grows and its relaxation time shortens (docs/decisions.md#reactor-dae).
    """
    x_ode, u = _pi_episode("startup", 4)
    p = pc.MODEL.param_vector(nominal_params)
    x_idas = _replay(x_ode, u, p, "idas")
    dev = _relative(x_idas, x_ode[1:])
    assert dev[:, [0, 1, 3]].max() <= 1e-3, dev.max(axis=0)
    assert dev[0, 2] > 1e-1 and np.all(np.diff(dev[:, 2]) < 0), dev[:, 2]
    assert np.all(x_idas[:, 3] > x_ode[1:, 3])
    assert np.abs(_residual(x_idas, u, p)).max() < 1e-10
    # Collocation agrees with IDAS on A, I, T; on P less closely, since the quasi-steady R grows like
    # sqrt(t) from the empty start, which polynomials on 900-s elements do not follow.
    x_colloc = _replay(x_ode, u, p, "collocation")
    aipt = _relative(x_colloc, x_idas)
    assert aipt[:, [0, 1, 3]].max() < 1e-4 and aipt[:, 2].max() < 1e-2, aipt.max(axis=0)


def test_steady_state_stays_put(nominal_params):
    ss = pc.steady_state(*pc.LOW_GRADE, nominal_params)
    for method in ("idas", "collocation"):
        np.testing.assert_allclose(pc.DAE.step(ss.x, ss.u, nominal_params, method=method), ss.x, rtol=1e-8)


def test_interval_function_has_the_ode_signature_and_is_built_once():
    ode = pc.MODEL.interval_function()
    for method in ("idas", "collocation"):
        fn = pc.DAE.interval_function(method)
        assert fn is pc.DAE.interval_function(method)
        assert fn.name_in() == ode.name_in()[: fn.n_in()] and fn.name_out() == ["xf"]
        assert fn.size_in(0) == ode.size_in(0) and fn.size_out(0) == ode.size_out(0)
    assert pc.MODEL.dae(("R",)) is pc.DAE
    assert pc.DAE.differential == ("A", "I", "P", "T") and pc.DAE.algebraic == ("R",)


@pytest.mark.parametrize(
    ("algebraic", "match"),
    [
        (("Q",), r"algebraic states \['Q'\] are not states of the model; its states are A, I, R, P, T"),
        (("R", "r"), r"\['r'\] are not states"),
        ((), "at least one and not all"),
        (("R", "R"), "distinct states"),
        (pc.STATES, "at least one and not all"),
    ],
)
def test_bad_algebraic_names_are_refused(algebraic, match):
    with pytest.raises(ValueError, match=match):
        DAEModel(pc.MODEL, algebraic)


def test_bad_method_is_refused():
    with pytest.raises(ValueError, match=r"method must be one of \('idas', 'collocation'\), got 'cvodes'"):
        pc.DAE.interval_function("cvodes")


@dataclass(frozen=True)
class _FastForcingParams:
    k: float = 0.5  # 1/s
    eps: float = 1e-3  # s, relaxation time of the fast state


def _fast_forcing(x, u, p, m, t):
    """dx/dt = -k x + y with a fast y relaxing to u sin t."""
    return (-p.k * x[0] + x[1], (u[0] * m.sin(t) - x[1]) / p.eps)


def test_generic_time_varying_dae_matches_analytic_solution():
    """y algebraic gives y = u sin t and dx/dt = -k x + u sin t, whose solution is known in closed form."""
    model = ODEModel(name="fast_forcing", states=("x", "y"), inputs=("u",), params_type=_FastForcingParams,
                     rhs=_fast_forcing, dt=0.7, x_scale=[1.0, 1.0], u_low=[-1.0], u_high=[1.0], substeps=8,
                     time_varying=True)
    dae = model.dae("y")
    k, u, x0, t0, t1 = 0.5, 0.8, 1.3, 2.0, 2.7

    def part(s):
        return u * (k * np.sin(s) - np.cos(s)) / (k**2 + 1)

    exact = part(t1) + (x0 - part(t0)) * np.exp(-k * (t1 - t0))
    for method in ("idas", "collocation"):
        xf = dae.step(np.array([x0, 0.0]), np.array([u]), _FastForcingParams(k=k), t0=t0, method=method)
        np.testing.assert_allclose(xf, [exact, u * np.sin(t1)], rtol=1e-7 if method == "idas" else 1e-6)


def test_example_runs_as_a_script(monkeypatch, capsys):
    name = "reactor_dae.py"
    monkeypatch.setattr(sys, "argv", [name])
    runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / name), run_name="__main__")
    out = capsys.readouterr().out
    assert "max relative deviation (A, I, P, T)" in out and "DAE collocation" in out
