r"""A predictive safety filter: the input closest to a policy's proposal for which the model still has a safe
continuation (Wabersich & Zeilinger, "A predictive safety filter for learning-based control of constrained
nonlinear dynamical systems", Automatica 129, 2021).

At every control interval, from the state and parameters estimated by the plant's own observer (the reactor:
the EKF of its NMPC, which also estimates UA and the propagation factor; the RL-ACR tasks: their estimated
models), the filter solves, on the shared CasADi model (the NMPC's collocation or shooting, built once,
warm-started, every status checked)::

    minimise    sum_j ((u_0j - a_j) / range_j)²                          stay close to the proposal a
                + eps  sum_k l(x_{k+1}, u_k)                              a weak regulariser of the continuation
                + delta sum_{k>=1} sum_j ((u_kj - u_{k-1,j}) / range_j)²  (the task's stage cost, its setpoint)
                + rho sum_k sum_b s_{k,b}  +  rho_f sum_i s_f,i           exact L1 penalties
    subject to  x_0 = x̂, x_{k+1} = Phi(x_k, u_k, p̂)                      the model, estimated parameters p̂
                u_low <= u_k <= u_high
                low_b + c_b - s_{k,b} <= y_b(x_{k+1}) <= high_b - c_b + s_{k,b}    every limit, tightened by c_b
                |f(x_N, u_{N-1}, p̂) dt / x_scale| <= s_f                  terminal set: x_N a steady state

**Terminal set.** The horizon must end at a steady state of the model that satisfies the tightened limits.
The set of such states is control invariant for the model: holding u_{N-1} keeps x_N where it is, inside
the limits, for ever. So if the problem is feasible at one step, the previous plan shifted by one interval
with u_{N-1} appended is feasible at the next (for the model), which is recursive feasibility; no invariant
set of a backup controller has to be computed, which for the reactor's five stiff states would take a
sampling or SOS construction of its own. The price is conservatism: a proposal is certified only if the
plant can still be brought to rest inside the limits within the horizon. With the weak regulariser the
continuation is well posed (without it, the inputs after the first are free and IPOPT struggles; the issue's
prototype hit its iteration limit on half of the steps).

**Robustness.** The model is wrong about the plant; the estimated parameters (the reactor's EKF) and the
tightening ``c_b`` (the reactor: T <= T_max - 2.5 K, chosen on tuning seeds by ``safectrl safety
psf-backoff-study`` behind adversarial policies and BC on the mismatched plant with and without noise; the RL-ACR tasks:
checked on their actual plants behind adversarial policies by ``safectrl safety psf-tightening-study``) absorb
the rest; a limit's two bounds can be tightened differently. That is a design margin, not a proof: the tests
and the studies check it on the wrong plant, with noise, behind adversarial policies.

**What is applied.** The proposal is clipped to the input bounds (a non-finite proposal is replaced by the
last applied input and counted). First, without a solve, the last accepted plan *continued*: ``a``, then
that plan's inputs after the one it planned for now, the last one held; simulated from the estimate over
the whole horizon with the model's integrator, it must keep every limit within its full tightening and end
in the terminal set. Then it is a feasible point of the probe's problem without slack, so it certifies
``a`` (recorded as ``certified`` and ``reused``) and becomes the plan the backup continues. This is what
makes the filter cheap behind a safe policy (one simulation, no NLP; ``PSFConfig.reuse_plan``). Otherwise
(``PSFConfig.sqp``, the reactor's default) the *SQP correction*: the same problem, without the collocation's
regulariser, by sequential quadratic programming on the integrator's linearisation about the last plan shifted
(:mod:`safectrl.safety.psf_sqp`, DAQP, 1-3 QPs of ~2 ms); its plan is applied when it converges without slack
and, simulated from the estimate with the model's integrator, keeps every limit within half its tightening and
ends in the terminal set (if its u_0 is ``a``, ``a`` is certified). Where it does not, the NLP decides as
without it (``record.sqp`` says what happened). Otherwise,
if ``a`` stepped once from the estimate on the integrator already leaves a limit's half tightening, no plan
that starts with ``a`` can pass the check below: the correction is solved at once (recorded as
``screened``; ``PSFConfig.screen``; behind the most heat this decides nearly every refusal). Otherwise
a *probe*: the problem with u_0 pinned to ``a``. If it converges
without slack and its plan passes the integrator check below, the plan *certifies* the proposal and ``a``
itself is applied (recorded as ``certified``). Otherwise the problem above gives the minimally changed input
``u_0`` (warm-started from the probe). Before a plan is applied, its inputs are simulated from the estimate
with the model's own integrator (the env's, not the collocation), and it must keep every limit within half
its tightening: an implicit discretisation of a runaway reaction can converge to a spurious root that
predicts cooling where the integrator heats up. When no plan passes (or a solve fails), the next input of
the last accepted plan (the backup, shifted each such step) is applied and recorded as ``fallback``;
``strict=True`` raises instead. Soft state constraints keep the problem feasible; an applied plan that
needs slack is recorded (``soft``). Why a probe rather than comparing u_0 with ``a``:
``docs/decisions.md#psf-design``.

Usage::

    psf = predictive_safety_filter(policy, "safectrl/PolyCSTR-v0")   # any registered plant
    psf.reset(seed=0); u = psf.act(obs)
    psf.record.arrays(), psf.episode_report()   # per step, and the episode's intervention statistics
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

from safectrl.common import validation
from safectrl.common.faults import FallbackWarning
from safectrl.common.protocol import DecisionMaker
from safectrl.controllers.nmpc import NMPC, FullStateObserver, NMPCConfig, Observer, StateBound
from safectrl.controllers.task_nmpc import ParameterEstimatingObserver, observer_for
from safectrl.models.mathns import CASADI
from safectrl.models.registry import get_task
from safectrl.models.task import Task
from safectrl.safety.psf_sqp import CondensedSQP


def bound_tightenings(tightening: Any) -> tuple[tuple[float, float], ...]:
    """``PSFConfig.tightening`` as (c_low, c_high) per limit: a number tightens both bounds of its limit."""
    if not isinstance(tightening, (tuple, list)):
        raise TypeError(f"tightening must be a sequence (one entry per limit), got {tightening!r}")
    out = []
    for i, c in enumerate(tightening):
        pair = c if isinstance(c, (tuple, list)) else (c, c)
        out.append(validation.reals(f"tightening[{i}]", pair, length=2, low=0.0))
    return tuple(out)


def scale_tightening(tightening: Any, factor: float) -> tuple[float | tuple[float, float], ...]:
    """Every entry of a ``PSFConfig.tightening`` times ``factor`` (a pair stays a pair)."""
    return tuple(tuple(factor * float(v) for v in c) if isinstance(c, (tuple, list)) else factor * float(c)
                 for c in tightening)


@dataclass(frozen=True)
class PSFConfig:
    """Horizon, tightening, weights and solver settings of a :class:`PredictiveSafetyFilter`."""

    horizon: int = 20  # intervals predicted
    # per operating limit of the task, physical units, inward: c (both bounds) or (c_low, c_high)
    tightening: tuple[float | tuple[float, float], ...] | None = None
    limit_penalty: float = 100.0  # L1 weight of a limit's violation, objective units per unit and interval
    hold_weight: float = 0.0  # eps_u: pulls every later input to the proposal, per ((u_k - a) / range)²
    regularisation: float = 1e-5  # eps_x: weight of the task's stage cost over the horizon
    du_weight: float = 1e-3  # delta: move penalty from the third input on (u_2 - u_1, ...), per (Δu / range)²
    terminal: str = "equilibrium"  # "equilibrium" (see the module docstring) or "free"
    terminal_penalty: float = 1e3  # L1 weight of the terminal steady-state residual (scaled)
    terminal_tolerance: float = 0.01  # |x_N's drift per interval| / x_scale allowed without slack
    discretisation: str = "collocation"  # as the NMPC: "collocation" or "shooting"
    collocation_degree: int = 3  # Radau points per element
    # elements per interval: two, not the NMPC's one: the filter's plans run along the runaway, where one
    # Radau element per interval predicted T up to 15 K below the integrator (decisions.md#psf-design)
    collocation_elements: int = 2
    # "ipopt" or "fatrop" (the NMPC's default): fatrop has no time limit, and once, behind IQL on the
    # mismatched reactor, spent over 10 min in its restoration phase on a correction (decisions.md#psf-design)
    solver: str = "ipopt"
    slack_tol: float = 1e-6  # a plan with a larger slack (physical units / scaled) is "soft"
    check_intervals: int = 20  # intervals of a plan simulated with the model's integrator before it is applied
    intervention_threshold: float = 0.01  # |u - a| / range above which a step counts as an intervention
    # before any solve, certify the proposal by the last plan continued: a, then its remaining inputs (the
    # last held), simulated over the horizon with the model's integrator within the tightened limits and
    # ending in the terminal set
    reuse_plan: bool = True
    # before the probe, step the proposal once with the model's integrator: if that state is already outside a
    # limit's half tightening, the probe's plan would fail its check whatever its continuation, so the probe
    # is not solved (the correction is, from the last plan shifted)
    screen: bool = True
    # before the NLP, the correction by SQP on the condensed linearisation of the integrator about the last plan
    # shifted (safectrl.safety.psf_sqp): applied when it converges and its plan, simulated with the integrator,
    # passes the same check as an NLP plan and ends in the terminal set; else the NLP as without it
    sqp: bool = False
    tol: float = 1e-7  # the NLP solver's tolerance
    max_iter: int = 100  # the NLP solver's iterations per attempt
    max_cpu_time: float = 10.0  # s per solve (IPOPT only)
    # model parameters the filter's observer estimates online from the observed transitions (an EKF with
    # them as random-walk states: ParameterEstimatingObserver); tasks that observe their full state only
    estimated_params: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        validation.positive_int("horizon", self.horizon)
        validation.names("estimated_params", self.estimated_params)
        if self.tightening is not None:
            bound_tightenings(self.tightening)
        validation.positive("limit_penalty", self.limit_penalty)
        validation.reals("hold_weight", (self.hold_weight,), low=0.0)
        validation.reals("regularisation", (self.regularisation,), low=0.0)
        validation.reals("du_weight", (self.du_weight,), low=0.0)
        if self.terminal not in ("equilibrium", "free"):
            raise ValueError(f"terminal must be 'equilibrium' or 'free', got {self.terminal!r}")
        validation.positive("terminal_penalty", self.terminal_penalty)
        validation.reals("terminal_tolerance", (self.terminal_tolerance,), low=0.0)
        validation.positive("slack_tol", self.slack_tol)
        validation.positive_int("check_intervals", self.check_intervals)
        validation.positive("intervention_threshold", self.intervention_threshold)
        validation.boolean("reuse_plan", self.reuse_plan)
        validation.boolean("screen", self.screen)
        validation.boolean("sqp", self.sqp)
        validation.solver_limits(self.tol, self.max_iter, self.max_cpu_time)


#: Each shipped plant's filter. The reactor: horizon 10 h, the back-off chosen on tuning seeds
#: (``safectrl safety psf-backoff-study``, decisions.md#psf-backoff), two Radau elements per interval. The RL-ACR
#: tasks: the discretisation of their regularisers; the glucose tasks without a terminal steady state (the
#: meal keeps the model moving over any horizon). Their tightenings were first guesses, then checked on the
#: actual plants behind adversarial policies (``safectrl safety psf-tightening-study``,
#: decisions.md#psf-tightening): Glucose's 40 mg/dL kept; the Klatt-Engell CSTR's raised 1.5x (at 1x C_a came
#: within 0.001 mol/L of its limit); CartPole's halved. CartPole's terminal band is 1e-4, not 0.01: with
#: 20-ms intervals, 0.01 let a plan end with the cart at 0.5 m/s, not invariant, and the filter dropped the
#: pole behind bang-bang forces even on its own model. BiGlucose's bounds are tightened separately, 60 mg/dL
#: above hypoglycaemia and 225 below hyperglycaemia: with 40 on both, no multiple tried held behind
#: bang-bang (the actual patient's insulin acts 3x slower than the model's). CartPole's filter estimates the
#: masses and the pole's length online: with the estimated model alone no tightening held behind a policy
#: that carries the cart into a rail with the pole up (decisions.md#psf-tightening).
DEFAULTS: dict[str, PSFConfig] = {
    "safectrl/PolyCSTR-v0": PSFConfig(tightening=(2.5,), sqp=True),
    "safectrl/Glucose-v0": PSFConfig(tightening=(40.0,), terminal="free", collocation_degree=2,
                                     collocation_elements=1, regularisation=1e-3),
    "safectrl/BiGlucose-v0": PSFConfig(tightening=((60.0, 225.0),), terminal="free", collocation_degree=2,
                                       collocation_elements=1, regularisation=1e-4),
    "safectrl/KlattEngellCSTR-v0": PSFConfig(tightening=(0.075, 0.075, 7.5, 7.5), collocation_degree=2,
                                             collocation_elements=1, regularisation=1e-4),
    "safectrl/CartPoleContinuous-v0": PSFConfig(horizon=50, tightening=(0.1, 0.01), discretisation="shooting",
                                                regularisation=1e-4, terminal_tolerance=1e-4,
                                                estimated_params=("masscart", "masspole", "length")),
}

def _glucose_risk(x, u, sp, p, m):
    from safectrl.models import glucose

    return glucose.magni_risk(x[0], m)


def _biglucose_risk(x, u, sp, p, m):
    from safectrl.models import biglucose, glucose

    return glucose.magni_risk(biglucose.G_LIMIT.output(x, p, m), m)


def _cartpole_cost(x, u, sp, p, m):
    return 100.0 * x[0] ** 2 + 1000.0 * x[2] ** 2


#: The continuation's regulariser where the task's stage cost is not smooth (IPOPT needs a smooth one):
#: ``(x, u, setpoint, p, m) -> cost``; the others use the task's own stage cost.
SMOOTH_COSTS: dict[str, Callable[..., Any]] = {
    "safectrl/Glucose-v0": _glucose_risk,
    "safectrl/BiGlucose-v0": _biglucose_risk,
    "safectrl/CartPoleContinuous-v0": _cartpole_cost,
}


#: The SQP correction's convergence on the limited outputs: the integrator's outputs along the QP's inputs
#: within this share of the limit's tightening of the QP's prediction (the reactor: 25 mK)
_SQP_OUTPUT_TOL = 1e-2


class PSFError(RuntimeError):
    """The filter could not give a certified or backup input and is ``strict``."""


@dataclass
class PSFRecord:
    """What the filter did, one row per ``act`` since the last ``reset`` (physical units)."""

    proposal: list[np.ndarray] = field(default_factory=list)  # the policy's action, as returned
    target: list[np.ndarray] = field(default_factory=list)  # the proposal clipped to the bounds (NaN replaced)
    applied: list[np.ndarray] = field(default_factory=list)  # the input the filter returned
    certified: list[bool] = field(default_factory=list)  # the proposal itself was applied
    reused: list[bool] = field(default_factory=list)  # certified by the last plan continued, without a solve
    fallback: list[bool] = field(default_factory=list)  # the solve failed: the backup plan's next input
    soft: list[bool] = field(default_factory=list)  # the plan needed slack (limits or terminal set)
    invalid_proposal: list[bool] = field(default_factory=list)  # non-finite proposal replaced
    rejected_plans: list[int] = field(default_factory=list)  # converged plans the integrator check refused
    # the proposal refused before any solve: its own next state is outside a limit's half tightening
    screened: list[bool] = field(default_factory=list)
    # the SQP correction's outcome ("": not tried, "applied", else why not: its status or "refused")
    sqp: list[str] = field(default_factory=list)
    sqp_iterations: list[int] = field(default_factory=list)  # its QPs
    iterations: list[int] = field(default_factory=list)  # solver iterations
    status: list[str] = field(default_factory=list)  # the solver's status of the applied plan ("reused_plan")
    solve_ms: list[float] = field(default_factory=list)  # ms in the solvers (the SQP correction's and the NLP's)
    max_slack: list[float] = field(default_factory=list)  # largest slack of a limit (NaN on fallback)
    terminal_slack: list[float] = field(default_factory=list)  # terminal residual slack (NaN on fallback)
    predicted: list[np.ndarray] = field(default_factory=list)  # (horizon + 1, nx) the plan's states

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.__dict__.items()}


class PredictiveSafetyFilter:
    """Wrap ``policy`` so that each proposal is applied only if the model can continue safely from it (see
    the module docstring).

    Args:
        policy: the decision-maker whose actions are filtered (``reset(seed=None)``, ``act(obs)``).
        task: the plant.
        params: the prediction model's parameters (the nominal model; the observer may estimate some).
        observer: maps observations to the estimated state (and parameters); the NMPC's of the task.
        config: horizon, tightening, weights.
        regulariser: ``(x, u, setpoint, p, m) -> cost`` of the continuation; default: the task's stage cost.
        strict: raise :class:`PSFError` on a failed solve or a non-finite proposal instead of falling back.
    """

    def __init__(self, policy: DecisionMaker, task: Task, params: Any, observer: Observer,
                 config: PSFConfig = PSFConfig(), regulariser: Callable[..., Any] | None = None,
                 strict: bool = False) -> None:
        if not isinstance(policy, DecisionMaker):
            raise TypeError(f"policy must have reset(seed=None) and act(obs), got {type(policy).__name__}")
        self.policy = policy
        self.task = task
        self.config = config
        self.strict = bool(strict)
        m = task.model
        self._range = m.u_high - m.u_low
        self._n_sp = len(task.setpoint_names)
        tight = bound_tightenings(config.tightening if config.tightening is not None
                                  else (0.0,) * len(task.limits))
        if len(tight) != len(task.limits):
            raise ValueError(f"{task.name} has {len(task.limits)} operating limits "
                             f"({', '.join(lim.name for lim in task.limits)}), tightening gives {len(tight)}")
        bounds = []
        for limit, (c_low, c_high) in zip(task.limits, tight):
            low = limit.low + c_low if math.isfinite(limit.low) else -math.inf
            high = limit.high - c_high if math.isfinite(limit.high) else math.inf
            if not low < high:
                raise ValueError(f"tightening ({c_low:g}, {c_high:g}) {limit.unit} empties the limit {limit.name} "
                                 f"in [{limit.low}, {limit.high}]")
            bounds.append(StateBound(limit.name, low=low, high=high, penalty=config.limit_penalty,
                                     output=limit.output))
        self.bounds = tuple(bounds)
        self._tight = tight  # (c_low, c_high) per limit
        self._p_design = params
        self._p_vector = m.param_vector(params)
        nmpc_config = NMPCConfig(
            horizon=config.horizon, discretisation=config.discretisation,
            collocation_degree=config.collocation_degree, collocation_elements=config.collocation_elements,
            solver=config.solver, du_weights=(config.du_weight,) * m.nu, du_start=2, proposal_weights=(1.0,) * m.nu,
            state_bounds=self.bounds,
            terminal=config.terminal, terminal_penalty=config.terminal_penalty,
            terminal_tolerance=config.terminal_tolerance, tol=config.tol,
            max_iter=config.max_iter, max_cpu_time=config.max_cpu_time, strict=False)
        cost = regulariser if regulariser is not None else task.stage_cost
        eps_x, eps_u, n_sp, u_range = config.regularisation, config.hold_weight, self._n_sp, self._range

        def stage(x, u, r):  # r = (setpoint, proposal)
            hold = sum(((u[j] - r[n_sp + j]) / u_range[j]) ** 2 for j in range(m.nu))
            if eps_x == 0.0:
                return eps_u * hold
            sp = [r[i] for i in range(n_sp)]
            return eps_u * hold + eps_x * cost([x[i] for i in range(m.nx)], [u[i] for i in range(m.nu)], sp,
                                               params, CASADI)

        self.observer = observer
        # the NMPC solves; the filter drives the observer itself (it must see the applied input)
        self.nmpc = NMPC(m, params, nmpc_config, stage_cost=stage, n_ref=self._n_sp + m.nu)
        self._sqp = None
        if config.sqp:
            # the QP plans with the full tightening; the integrator's result is judged as an NLP plan's (half
            # the tightening) and against the terminal band
            limits = [(lim, b.low, b.high) for lim, b in zip(task.limits, self.bounds)]
            self._sqp = CondensedSQP(m, limits, params, task.states, config.horizon, config.du_weight, 2,
                                     config.terminal, config.terminal_tolerance,
                                     config.limit_penalty, config.terminal_penalty,
                                     output_tol=[_SQP_OUTPUT_TOL * max(c) for c in tight])
        self.record = PSFRecord()
        self._last_applied: np.ndarray | None = None
        self._warned: set[str] = set()

    # -- the decision-maker ---------------------------------------------------------------------------

    def reset(self, seed: int | None = None) -> None:
        self.policy.reset(seed=seed)
        self.observer.reset(seed)
        self.nmpc.reset(seed)
        self.record = PSFRecord()
        self._last_applied = None

    def _warn(self, kind: str, message: str) -> None:
        if kind not in self._warned:
            warnings.warn(f"PredictiveSafetyFilter: {message} (warned once; counted in record.{kind})",
                          FallbackWarning, stacklevel=3)
            self._warned.add(kind)

    def _proposal(self, raw: np.ndarray) -> tuple[np.ndarray, bool]:
        """The proposal clipped to the input bounds; a non-finite one replaced by the last input applied."""
        m = self.task.model
        if raw.shape != (m.nu,):
            raise ValueError(f"the policy's action must have shape ({m.nu},), got {raw.shape}")
        if np.all(np.isfinite(raw)):
            return np.clip(raw, m.u_low, m.u_high), False
        if self.strict:
            raise PSFError(f"non-finite proposal {raw}")
        self._warn("invalid_proposal", f"non-finite proposal {raw} replaced by the last input applied")
        last = self._last_applied if self._last_applied is not None else (m.u_low + m.u_high) / 2
        return np.where(np.isfinite(raw), np.clip(raw, m.u_low, m.u_high), last), True

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=float)
        raw = np.asarray(self.policy.act(obs), dtype=float)
        a, invalid = self._proposal(raw)
        seen = self.observer(obs)
        sp = np.asarray(seen.reference, dtype=float).ravel()[: self._n_sp] if self._n_sp else np.zeros(0)
        args = (seen.x, seen.u_prev, np.concatenate([sp, a]), seen.t0, seen.params)
        cfg = self.config
        rejected, iterations, seconds = 0, 0, 0.0
        # Does the last plan, continued from the proposal, still hold? (No solve; None if not.)
        reused = self._reused_plan(a, seen) if cfg.reuse_plan else None
        sol = probe = None
        sqp_status, sqp_iterations = "", 0
        if reused is not None:
            sol = probe = reused
        elif self._sqp is not None:
            sol, sqp_status, sqp_iterations, sqp_seconds = self._sqp_plan(a, seen)
            seconds += sqp_seconds
            if sol is not None and np.array_equal(sol.u_plan[0], a):
                probe = sol  # the proposal itself needs no change: certified
        # the screen only where the NLP decides (after the SQP correction, if it did not)
        screened = sol is None and cfg.screen and self._refused_at_once(a, seen)
        if sol is None and not screened:
            # Is there a safe plan that starts with the proposal? (u_0 pinned to a, nothing committed yet.)
            probe = self.nmpc.solve(*args, proposal=a, first_input=a, commit=False)
            iterations, seconds = probe.iterations, seconds + probe.solve_time
            if self._acceptable(probe, seen, strict_slack=True):
                self.nmpc.commit(probe)
                sol = probe
            else:
                rejected += probe.success
        if sol is None:  # the minimally changed input, warm-started from the probe's plan where there is one
            sol = self.nmpc.solve(*args, proposal=a, warm_from=self.nmpc.pending if probe is not None else None,
                                  commit=False)
            iterations += sol.iterations
            seconds += sol.solve_time
            if self._acceptable(sol, seen, strict_slack=False):
                self.nmpc.commit(sol)
            else:
                rejected += sol.success
                sol = self.nmpc.backup(seen.x, seen.u_prev, sol.status if not sol.success else "rejected")
        if sol.fallback:
            if self.strict:
                raise PSFError(f"the filter's solve failed (solver status {sol.status}) and it is strict")
            self._warn("fallback", f"no plan to apply (solver status {sol.status}): the backup plan's next "
                                   "input applied")
            u = sol.u
            certified = soft = False
        else:
            soft = bool(sol.max_slack > cfg.slack_tol or sol.terminal_slack > cfg.slack_tol)
            certified = sol is probe
            u = a.copy() if certified else sol.u
        self.observer.applied(u)
        self._last_applied = u.copy()
        r = self.record
        r.proposal.append(raw.copy())
        r.target.append(a.copy())
        r.applied.append(u.copy())
        r.certified.append(certified)
        r.reused.append(reused is not None)
        r.fallback.append(bool(sol.fallback))
        r.soft.append(soft)
        r.invalid_proposal.append(invalid)
        r.rejected_plans.append(int(rejected))
        r.screened.append(bool(screened))
        r.sqp.append(sqp_status)
        r.sqp_iterations.append(int(sqp_iterations))
        r.iterations.append(int(iterations))
        r.status.append(sol.status)
        r.solve_ms.append(1e3 * seconds)
        r.max_slack.append(float(sol.max_slack))
        r.terminal_slack.append(float(sol.terminal_slack))
        r.predicted.append(sol.x_plan.copy())
        return u

    def _reused_plan(self, a: np.ndarray, seen: Any) -> Any:
        """The last accepted plan continued from the proposal (``a``, then its inputs after the one planned for
        now, the last held), adopted by the NMPC when the model's integrator keeps it inside the tightened
        limits over the whole horizon and it ends in the terminal set; else None. Such a plan is a feasible
        point of the probe's problem without slack (up to the collocation's error), found without a solve."""
        last = self.nmpc.last_solution
        if last is None or last.fallback:
            return None
        m, cfg = self.task.model, self.config
        u_plan = np.vstack([a, last.u_plan[2:], last.u_plan[-1:]])[: cfg.horizon]  # horizon 1: [a]
        p = seen.params if seen.params is not None else self._p_vector
        x, xs = np.asarray(seen.x, dtype=float), []
        for k, u in enumerate(u_plan):
            x = m.step(x, u, p, seen.t0 + k * m.dt)
            # stop at the first state outside (behind the most heat, that is the first or second)
            if not np.all(np.isfinite(x)) or self._excess(x[None], 1.0)[0] > 0.0:
                return None
            xs.append(x)
        xs = np.asarray(xs)
        if cfg.terminal == "equilibrium":
            t_end = seen.t0 + len(u_plan) * m.dt
            args = [xs[-1], u_plan[-1], p] + ([t_end] if m.time_varying else [])
            drift = np.asarray(m.rhs_function()(*args)).ravel() * m.dt / m.x_scale
            if np.any(np.abs(drift) > cfg.terminal_tolerance):
                return None
        return self.nmpc.adopt(seen.x, u_plan, np.vstack([seen.x, xs]), status="reused_plan")

    def _sqp_plan(self, a: np.ndarray, seen: Any) -> tuple[Any, str, int, float]:
        """The SQP correction from the last plan shifted: (the adopted solution or None, what happened, QPs,
        seconds). Adopted only without slack: it converged, its last QP needed no slack, and its inputs,
        simulated from the estimate with the model's integrator, keep every limit within half its tightening
        over the horizon (the check of an NLP plan) and (``equilibrium``) end with a drift within the terminal
        tolerance. Anything else ("soft", "refused", the SQP's own status) is left to the NLP, which may find
        a plan without slack where the linearisation did not. A u_0 within 1e-6 of the input range of ``a``
        is set to ``a`` before the check (the proposal needs no change: certified)."""
        last = self.nmpc.last_solution
        if last is None:
            return None, "no_plan", 0, 0.0
        start = time.perf_counter()
        m, cfg = self.task.model, self.config
        p = seen.params if seen.params is not None else self._p_vector
        x0 = np.asarray(seen.x, dtype=float)
        # the last plan shifted, but its first input the last applied one: where the filter holds a policy at
        # a limit the correction changes little from step to step, while the plan's next input was only
        # one continuation (the move penalty starts after it): half the QPs behind the most heat
        shifted = np.vstack([last.u_plan[1:], last.u_plan[-1:]])
        if self._last_applied is not None:
            shifted[0] = self._last_applied
        states = np.vstack([x0, last.x_plan[2:], last.x_plan[-1:]])
        res = self._sqp.solve(x0, shifted, a, p, seen.t0, X=states)
        if not res.success:
            return None, res.status, res.iterations, time.perf_counter() - start
        if res.max_slack > cfg.slack_tol or res.terminal_slack > cfg.slack_tol:
            return None, "soft", res.iterations, time.perf_counter() - start
        u_plan = res.u_plan.copy()
        if np.all(np.abs(u_plan[0] - a) <= 1e-6 * self._range):
            u_plan[0] = a
        if res.states is not None and np.array_equal(u_plan, res.u_plan):
            xs = res.states  # the integrator's states of these inputs (the same compiled code as model.step)
        else:
            x, xs = x0, []
            for k, u in enumerate(u_plan):
                x = m.step(x, u, p, seen.t0 + k * m.dt)
                xs.append(x)
            xs = np.asarray(xs)
        if not (np.all(np.isfinite(xs)) and np.all(self._excess(xs, 0.5) <= 0.0)):
            return None, "refused", res.iterations, time.perf_counter() - start
        if cfg.terminal == "equilibrium":
            args = [xs[-1], u_plan[-1], p] + ([seen.t0 + len(u_plan) * m.dt] if m.time_varying else [])
            drift = np.asarray(m.rhs_function()(*args)).ravel() * m.dt / m.x_scale
            if np.any(np.abs(drift) > cfg.terminal_tolerance):
                return None, "soft", res.iterations, time.perf_counter() - start
        sol = self.nmpc.adopt(seen.x, u_plan, np.vstack([seen.x, xs]), status="sqp")
        return sol, "applied", res.iterations, time.perf_counter() - start

    def _acceptable(self, sol: Any, seen: Any, strict_slack: bool) -> bool:
        """Whether a solve's plan may be applied: converged, and (``strict_slack``) without slack, and its
        inputs, simulated from the estimate with the model's own integrator (the env's, not the
        collocation), keep every limit within half its tightening (see the module docstring).
        """
        if not sol.success:
            return False
        if strict_slack and (sol.max_slack > self.config.slack_tol or sol.terminal_slack > self.config.slack_tol):
            return False
        m = self.task.model
        p = seen.params if seen.params is not None else self._p_vector
        x = np.asarray(seen.x, dtype=float)
        xs = []
        for k, u in enumerate(sol.u_plan[: self.config.check_intervals]):
            x = m.step(x, u, p, seen.t0 + k * m.dt)
            xs.append(x)
        xs = np.asarray(xs)
        if not np.all(np.isfinite(xs)):
            return False
        over = self._excess(xs, 0.5)
        if strict_slack:
            return bool(np.all(over <= 0.0))
        # a soft plan is applied when it does no worse than it predicts
        return bool(np.all(over <= max(0.0, sol.max_slack) + 1e-9))

    def _refused_at_once(self, a: np.ndarray, seen: Any) -> bool:
        """Whether the proposal's own next state, stepped from the estimate with the model's integrator, is
        outside a limit's half tightening (or not finite). A probe's plan starts with ``a``, so the check in
        :meth:`_acceptable` would refuse it whatever its continuation: no probe is needed to know."""
        m = self.task.model
        p = seen.params if seen.params is not None else self._p_vector
        x1 = m.step(np.asarray(seen.x, dtype=float), a, p, seen.t0)
        return bool(not np.all(np.isfinite(x1)) or self._excess(x1[None], 0.5)[0] > 0.0)

    def _excess(self, xs: np.ndarray, share: float) -> np.ndarray:
        """Per state of ``xs`` (n, nx), how far it lies outside the limits tightened by ``share`` of their
        tightening (physical units of each limit, the largest; <= 0 inside all of them)."""
        over = np.full(len(xs), -np.inf)
        for limit, (c_low, c_high) in zip(self.task.limits, self._tight):
            v = np.asarray(limit.value(xs, self._p_design, self.task.states), dtype=float)
            over = np.maximum(over, np.maximum(limit.low + share * c_low - v, v - (limit.high - share * c_high)))
        return over

    # -- what it did ------------------------------------------------------------------------------------

    def episode_report(self) -> dict[str, float]:
        """The episode's filter statistics (since the last reset), as study columns.

        ``interventions``: share of steps where |u - a| exceeds ``intervention_threshold`` of the input range
        in any input (``a`` the proposal clipped to the bounds); ``mean_abs_du_<input>``: mean |u - a| per
        input, physical units; ``certified``: share of steps that applied the proposal; ``fallbacks``, ``soft``:
        step counts.
        """
        m = self.task.model
        r = self.record
        if not r.applied:
            return {}
        du = np.abs(np.asarray(r.applied) - np.asarray(r.target))
        out = {"interventions": float(np.mean(np.any(du > self.config.intervention_threshold * self._range,
                                                     axis=1)))}
        for j, name in enumerate(m.inputs):
            out[f"mean_abs_du_{name}"] = float(du[:, j].mean())
        out["certified"] = float(np.mean(r.certified))
        out["reused_plans"] = float(np.mean(r.reused))
        out["fallbacks"] = int(np.sum(r.fallback))
        out["rejected_plans"] = int(np.sum(r.rejected_plans))
        out["soft"] = int(np.sum(r.soft))
        return out


def predictive_safety_filter(policy: DecisionMaker, env_id: str, params: Any = None,
                             config: PSFConfig | None = None, strict: bool = False) -> PredictiveSafetyFilter:
    """The predictive safety filter of the registered plant ``env_id`` around ``policy``.

    Args:
        policy: the decision-maker to filter.
        env_id: a registered task id (``safectrl/PolyCSTR-v0``, the RL-ACR tasks, or one of your own).
        params: the prediction model (a plant name or parameter dataclass); default: the task's nominal
            model, the one a controller can know. The observer (the reactor's EKF) predicts with it too.
        config: default: the plant's entry in :data:`DEFAULTS` (else :class:`PSFConfig`'s defaults).
        strict: raise on a failed solve or a non-finite proposal.
    """
    task = get_task(env_id)
    p = task.plant(params if params is not None else "nominal")
    cfg = config if config is not None else DEFAULTS.get(env_id, PSFConfig())
    observer = observer_for(env_id, p)
    if cfg.estimated_params:
        m = task.model
        if tuple(task.observations[: m.nx]) != m.states or not isinstance(observer, FullStateObserver):
            raise ValueError(f"{task.name}: estimated_params needs an observation that starts with the full "
                             f"state {m.states}")
        std = task.measurement_std if task.measurement_std is not None else tuple(1e-3 * m.x_scale)
        observer = ParameterEstimatingObserver(observer, m, p, tuple(cfg.estimated_params), tuple(std))
    return PredictiveSafetyFilter(policy, task, p, observer, cfg, regulariser=SMOOTH_COSTS.get(env_id),
                                  strict=strict)


def with_config(env_id: str, **changes: Any) -> PSFConfig:
    """The plant's default configuration with ``changes`` (e.g. ``horizon=10``)."""
    return replace(DEFAULTS.get(env_id, PSFConfig()), **changes)
