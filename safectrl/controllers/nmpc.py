r"""Nonlinear model predictive control built from any :class:`~safectrl.models.core.ODEModel`.

The optimal control problem solved at every control interval, for a horizon of N intervals with the
inputs held over each interval (the plant's zero-order hold)::

    minimise    sum_{k=0}^{N-1}  l(x_{k+1}, u_k, r_k)                   stage cost (default: tracking)
                + sum_k sum_j  w_j ((u_{k,j} - u_{k-1,j}) / range_j)²    move penalty, u_{-1} = u_prev
                + sum_k sum_b  rho_b s_{k,b}                              exact L1 penalty of soft bounds
    subject to  x_0 = x (measured or estimated),  x_{k+1} = Phi(x_k, u_k, p, t_0 + k dt)
                u_low <= u_k <= u_high                                   input bounds of the model
                low_b - s_{k,b} <= x_{k+1,b} <= high_b + s_{k,b}, s >= 0  soft state bounds
                low_b <= x_{k+1,b} <= high_b                              hard state bounds

with ``range_j = u_high_j - u_low_j``. Options a safety filter uses (:mod:`safectrl.safety.psf`), off by default:

* ``proposal_weights``: ``+ sum_j w_j ((u_0j - a_j) / range_j)²`` for a proposal ``a`` given per solve; the
  move penalty then starts at ``du_start`` (the first moves are left to the proposal);
* ``terminal="equilibrium"``: ``|f(x_N, u_{N-1}) dt / x_scale| <= terminal_tolerance`` (x_N a steady state of
  the model, within a band), hard or soft with an L1 penalty;
* a bound on an output of the state (``StateBound.output``, a task's limit on e.g. glucose in mg/dL);
* probes: ``solve(..., first_input=a, commit=False)`` asks whether a plan starting with ``a`` exists without
  changing the controller; :meth:`NMPC.commit` adopts it, :meth:`NMPC.backup` applies the last plan's next
  input instead of a rejected solve.

The default stage cost is ``l = sum_i w_i (r_{k,i} - x_{k+1,i})²`` over the ``tracked`` states, so the
reference ``r`` is a *trajectory* over the horizon (one row per interval end); a constant setpoint is the
special case of identical rows. Any other stage cost ``l(x, u, r)`` written in CasADi can be given instead.
An L1 penalty is exact: when the hard-constrained problem is feasible and ``rho`` exceeds the constraint's
multiplier, both problems have the same solution; when it is not, the soft problem still has one.

``Phi`` is one control interval of the model. Two discretisations (``NMPCConfig.discretisation``):

* ``"collocation"`` (default): Radau IIA collocation of ``model.rhs_function()`` with ``degree`` points on
  ``elements`` finite elements per interval (default 3 on 1); the collocation states are decision variables.
* ``"shooting"``: multiple shooting through ``model.interval_function()`` (fixed-step RODAS4, the same
  integrator the environment uses), or through any discrete transition passed as ``transition=``
  (e.g. an explicit-Euler step for a model whose plant is defined that way).

Collocation is the default because, on the polymerisation CSTR, 3 Radau points on one element predict T
within 6e-3 K of the plant's integrator in a fraction of the solve time of shooting with its exact
Hessian, with the same closed-loop cost (``docs/decisions.md#nmpc-discretisation``, ``#nmpc-solver``).

The NLP is built once, stage by stage: stage k holds the state ``[x_k, u_{k-1}]`` (the previous input
makes the move penalty stage-local), then its controls (the input, the collocation states, the slacks);
its rows are the gap-closing constraints first, then its path constraints, and everything about the
interval's end state is written on the discretisation's end point, so the Lagrangian's Hessian is
block-diagonal by stage. That is the layout fatrop's structure detection reads (``NMPCConfig.solver``,
default ``"fatrop"``: a Riccati recursion per iteration instead of a sparse LDL'); IPOPT takes the same NLP.
Each call to :meth:`NMPC.solve` only sets the parameters (initial state, previous input, reference, model
parameters, start time) and warm-starts from the previous solution shifted by one interval (IPOPT: primal
and dual; fatrop takes no multipliers, so its warm instance starts with a small barrier parameter and
iterates close to their bounds, and a cold start uses a second instance with its default options). Every
solve's status is checked and recorded in :attr:`NMPC.stats`; a cold attempt whose start point gives a NaN or
an infinite objective, gradient or constraint (a state outside the model's domain) is refused before the
solver runs (status :data:`INVALID_START`): fatrop, started at one, never returns.
When a warm-started attempt fails, one more attempt starts from the cold guess (``retry_cold``; counted
in ``stats.retries``). When the solve still fails, the controller applies the next move of the previous
plan (shifted), or holds the previous input if there is none, and counts the failure;
``NMPCConfig.strict`` raises :class:`NMPCSolveError` instead.

Usage (full state known)::

    nmpc = NMPC(model, params, NMPCConfig(tracked=("P", "T"), tracking_weights=(0.01, 0.01),
                                          state_bounds=(StateBound("T", high=363.5, penalty=10.0),)))
    sol = nmpc.solve(x, u_prev, reference)      # reference: (n_ref,) or (horizon, n_ref)
    sol.u, sol.u_plan, sol.x_plan, sol.status, sol.iterations, sol.solve_time

As a decision-maker (:class:`~safectrl.common.protocol.DecisionMaker`: ``reset(seed=None)`` /
``act(obs)``), the NMPC needs an *observer* (:class:`Observer`): ``reset(seed=None)``, ``__call__(obs) ->
Observed(x, u_prev, reference, t0, params)``, which maps an observation to the full state (e.g. through a
state estimator, :mod:`safectrl.controllers.estimation`), the reference and optionally the parameters to
predict with, and ``applied(u)``, through which the NMPC tells it the input it returned (an observer that
predicts, or that counts its own inputs as the previous ones, needs it). :class:`FullStateObserver` is the
one for a plant whose observation is its state; :mod:`safectrl.controllers.polycstr_nmpc` builds one for the
polymerisation CSTR.

:attr:`NMPC.stats` covers the controller's whole life; every :meth:`NMPC.reset` starts an episode in it,
and ``stats.episode()`` (the current one) or ``stats.episodes`` are the per-episode views.

Time-varying models (``model.time_varying``) receive the absolute time ``t0`` of the first interval; the
k-th interval starts at ``t0 + k dt``.
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple, Protocol

import casadi as ca
import numpy as np

from safectrl.common import validation
from safectrl.common.faults import FallbackWarning
from safectrl.models.core import ODEModel
from safectrl.models.mathns import CASADI

StageCost = Callable[[ca.SX, ca.SX, ca.SX], ca.SX]
#: IPOPT return statuses accepted as a solution; anything else is a failed solve.
CONVERGED = frozenset({"Solve_Succeeded", "Solved_To_Acceptable_Level"})
#: The status of an attempt refused before the solver ran: objective, gradient or constraints not finite at the
#: start point (IPOPT's name for what it reports then; fatrop would not return).
INVALID_START = "Invalid_Number_Detected"
#: Terminal conditions of the horizon's last state: none, or a steady state of the model (see the docstring).
TERMINAL_SETS = ("free", "equilibrium")
#: NLP solvers of the NMPC (both in the casadi wheel).
SOLVERS = ("ipopt", "fatrop")


@dataclass(frozen=True)
class StateBound:
    """A bound on one state at every interval end of the horizon (physical units).

    ``penalty`` None makes the bound hard (an NLP constraint, which can make the problem infeasible);
    a number makes it soft with an exact L1 penalty of that weight, in objective units per physical unit of
    violation and per interval. It must exceed the bound's Lagrange multiplier to be exact.

    With ``output`` the bound is on a function of the state (e.g. glucose in mg/dL from a mass per volume),
    written against a math namespace like a right-hand side, with the prediction's parameters.
    """

    state: str  # state name, one of model.states (with ``output``: the output's name)
    low: float = -math.inf  # physical units
    high: float = math.inf  # physical units
    penalty: float | None = None  # None: hard; else L1 weight (objective units per unit violation)
    # optional output(x, p, m) of the state columns x, parameters p (by name) and math namespace m bounded
    # instead of a state (a Task's Limit.output); None: the state called ``state``
    output: Callable[..., Any] | None = field(default=None, compare=False)
    scale: float | None = None  # magnitude of an output, scales its slack (None: the largest finite bound)


@dataclass(frozen=True)
class NMPCConfig:
    """Horizon, objective, constraints and solver settings of an :class:`NMPC`."""

    horizon: int = 20  # intervals predicted and optimised
    discretisation: str = "collocation"  # "collocation" (Radau IIA) or "shooting" (interval function)
    collocation_degree: int = 3  # Radau points per finite element
    collocation_elements: int = 1  # finite elements per control interval
    tracked: tuple[str, ...] = ()  # states tracked by the default stage cost (reference columns)
    tracking_weights: tuple[float, ...] = ()  # per tracked state, on the squared error in physical units
    du_weights: tuple[float, ...] | None = None  # per input, on (Δu / input range)²; None: no move penalty
    state_bounds: tuple[StateBound, ...] = ()  # soft or hard bounds at every interval end
    strict: bool = False  # raise on a failed solve (NMPCSolveError) or a bad reading instead of falling back
    tol: float = 1e-8  # the solver's convergence tolerance
    max_iter: int = 100  # the solver's iteration limit per attempt
    max_cpu_time: float = 60.0  # s, time limit per solve (IPOPT only: fatrop has none)
    warm_start: bool = True  # start from the shifted previous solution (IPOPT: primal and dual)
    retry_cold: bool = True  # after a failed warm-started attempt, try once more from the cold guess
    hessian: str = "exact"  # "exact" or "limited-memory" (L-BFGS); IPOPT only
    # "ipopt" (MUMPS) or "fatrop" (structure-exploiting interior point, stage-wise Riccati; no time limit, no
    # multipliers taken as warm start); see docs/decisions.md#nmpc-solver
    solver: str = "fatrop"
    du_start: int = 0  # first interval k whose move u_k - u_{k-1} is penalised (0: from u_prev on)
    # per input, pull the first input to a proposal a given per solve, w_j ((u_0j - a_j) / range_j)² (a safety
    # filter's objective; needs du_start >= 1); None: no proposal
    proposal_weights: tuple[float, ...] | None = None
    terminal: str = "free"  # "free" or "equilibrium": x_N is a steady state of the model under u_{N-1}
    terminal_penalty: float | None = None  # None: the terminal condition hard; else its L1 weight
    # "equilibrium" within a band: |f(x_N, u_{N-1}) dt / x_scale| <= this, per state (a neighbourhood of the
    # steady states: the slow modes need not have settled at the horizon's end)
    terminal_tolerance: float = 0.0

    def __post_init__(self) -> None:
        # the names (discretisation, hessian, states) are checked against the model by NMPC
        validation.positive_int("horizon", self.horizon)
        validation.positive_int("collocation_degree", self.collocation_degree)
        validation.positive_int("collocation_elements", self.collocation_elements)
        tracked = validation.names("tracked", self.tracked)
        validation.reals("tracking_weights", self.tracking_weights, length=len(tracked), low=0.0)
        if self.du_weights is not None:
            validation.reals("du_weights", self.du_weights, low=0.0)
        for i, bound in enumerate(self.state_bounds):
            if not isinstance(bound, StateBound):
                raise TypeError(f"state_bounds[{i}] must be a StateBound, got {bound!r}")
        validation.boolean("strict", self.strict)
        validation.solver_limits(self.tol, self.max_iter, self.max_cpu_time)
        validation.boolean("warm_start", self.warm_start)
        validation.boolean("retry_cold", self.retry_cold)
        validation.integer("du_start", self.du_start, low=0)
        if self.proposal_weights is not None:
            validation.reals("proposal_weights", self.proposal_weights, low=0.0)
            if self.du_start < 1:
                raise ValueError("proposal_weights need du_start >= 1: the first move is pulled to the proposal")
        if self.terminal not in TERMINAL_SETS:
            raise ValueError(f"terminal must be one of {', '.join(TERMINAL_SETS)}, got {self.terminal!r}")
        if self.terminal_penalty is not None:
            validation.positive("terminal_penalty", self.terminal_penalty)
        validation.reals("terminal_tolerance", (self.terminal_tolerance,), low=0.0)


class Observed(NamedTuple):
    """What an observer extracts from an observation for the NMPC."""

    x: np.ndarray  # (nx,) full state, physical units
    u_prev: np.ndarray  # (nu,) input applied in the last interval
    reference: np.ndarray | None  # (n_ref,) or (horizon, n_ref)
    t0: float  # time at the start of the next interval (time-varying models)
    params: np.ndarray | None = None  # (n_params,) parameters to predict with (e.g. estimated); None: own
    rejected: int = 0  # measured entries of this observation the observer could not use (NaN, inf, range)


class Observer(Protocol):
    """Maps observations to the full state and the reference (e.g. a state estimator plus a setpoint).

    :meth:`NMPC.act` calls it once per interval and then :meth:`applied` with the input it returns, so an
    observer can predict over the interval or remember the input without reading it from the observation.
    """

    def reset(self, seed: int | None = None) -> None: ...

    def __call__(self, obs: np.ndarray) -> Observed: ...

    def applied(self, u: np.ndarray) -> None: ...


class FullStateObserver:
    """The observer of a plant whose observation is its full state (physical units, the model's order).

    ``u_prev`` is the controller's own previous input (``u_init`` in the first interval), as in do-mpc: the
    move penalty refers to what the controller chose, whatever a wrapper applied. Time counts intervals
    since :meth:`reset` (``t0 = k dt``, for time-varying models).

    A NaN or inf entry (a lost reading) is replaced by the prediction of ``model`` from the last state over
    the last interval with the input applied (without a model: the entry's last value), counted in
    :attr:`rejected_measurements` and warned about once, so that one bad reading does not stop the
    controller; ``strict`` raises ``ValueError`` instead. The first observation must be finite.

    Args:
        dt: the control interval (the model's ``dt``).
        u_init: the "previous input" of the first interval of an episode, shape (nu,).
        reference: the NMPC's reference, (n_ref,) or (horizon, n_ref); None for a stage cost without one.
        model: predicts replaced entries (with ``params``); None: they hold their last value.
        params: the model's parameters (dataclass or vector).
        strict: raise on a non-finite entry instead of replacing it.
    """

    def __init__(self, dt: float, u_init: np.ndarray, reference: np.ndarray | None = None,
                 model: ODEModel | None = None, params: Any = None, strict: bool = False) -> None:
        self.dt = float(dt)
        self.u_init = np.asarray(u_init, dtype=float)
        self.reference = reference
        self.model = model
        if model is not None and params is None:
            raise ValueError("a FullStateObserver with a model needs its params")
        self._p = None if model is None else (
            params if isinstance(params, np.ndarray) else model.param_vector(params))
        self.strict = bool(strict)
        self._k = 0
        self._u_prev = self.u_init.copy()
        self._x_last: np.ndarray | None = None
        self._warned = False
        #: State entries replaced since construction (one entry at one interval each).
        self.rejected_measurements = 0

    def reset(self, seed: int | None = None) -> None:
        """Back to interval 0 and ``u_init``; ``seed`` is unused."""
        self._k = 0
        self._u_prev = self.u_init.copy()
        self._x_last = None

    def _state(self, x: np.ndarray, u_prev: np.ndarray) -> tuple[np.ndarray, int]:
        """``x`` with its non-finite entries replaced (see the class docstring); the count replaced."""
        x = np.asarray(x, dtype=float)
        bad = ~np.isfinite(x)
        if bad.any():
            what = f"non-finite state entries {x}"
            if self.strict or self._x_last is None:
                first = "" if self._x_last is not None else " in the first observation of the episode"
                raise ValueError(f"{type(self).__name__}: {what}{first}")
            if self.model is not None:
                guess = self.model.step(self._x_last, u_prev, self._p, (self._k - 1) * self.dt)
            else:
                guess = self._x_last
            if not self._warned:
                how = "the model's prediction" if self.model is not None else "the last value"
                warnings.warn(f"{type(self).__name__}: {what} replaced by {how} (warned once; counted in "
                              "rejected_measurements)", FallbackWarning, stacklevel=4)
                self._warned = True
            x = np.where(bad, guess, x)
            self.rejected_measurements += int(bad.sum())
        self._x_last = x.copy()
        return x, int(bad.sum())

    def __call__(self, obs: np.ndarray) -> Observed:
        x, rejected = self._state(obs, self._u_prev)
        return Observed(x, self._u_prev, self.reference, self._k * self.dt, None, rejected)

    def applied(self, u: np.ndarray) -> None:
        self._k += 1
        self._u_prev = np.asarray(u, dtype=float).copy()


class NMPCSolveError(RuntimeError):
    """A solve failed and the controller is ``strict``."""


@dataclass(frozen=True)
class NMPCSolution:
    """The outcome of one :meth:`NMPC.solve`, physical units."""

    u: np.ndarray  # (nu,) input to apply now
    u_plan: np.ndarray  # (horizon, nu) planned inputs; on fallback, the shifted previous plan
    x_plan: np.ndarray  # (horizon + 1, nx) predicted states, x_plan[0] = the initial state
    status: str  # the solver's return status (IPOPT's names; see NMPC._attempt), or an adopted plan's
    success: bool  # the status is in CONVERGED and the solution is finite (or an adopted plan)
    fallback: bool  # the applied input did not come from this solve
    iterations: int  # solver iterations, over all attempts
    solve_time: float  # s, wall time of the solver calls
    objective: float  # optimal value (NaN on failure)
    max_slack: float  # largest predicted soft-bound violation, physical units (0 if none)
    terminal_slack: float = 0.0  # largest violation of a soft terminal condition, scaled (0 if none)


@dataclass
class SolveRecord:
    """Per-step statistics kept by the controller for studies."""

    status: str  # the solver's status of the last attempt
    success: bool
    fallback: bool
    iterations: int  # over all attempts
    solve_time: float  # s, over all attempts
    retried: bool = False  # the warm-started attempt failed and a cold one followed
    rejected: int = 0  # measured entries the observer could not use for this step (act only)


@dataclass
class NMPCStats:
    """Solve statistics over the controller's whole life, one record per solve, with episode boundaries.

    The totals (``solves``, ``failures``, ...) count every solve since construction, so nobody has to add up
    episodes; :meth:`episode` and :attr:`episodes` give the same statistics for one episode (the solves from
    one :meth:`NMPC.reset` to the next). Solves before the first reset count in the totals only.
    """

    records: list[SolveRecord] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)  # index into records where each episode starts

    def begin_episode(self) -> None:
        """Start a new episode at the next solve (called by :meth:`NMPC.reset`)."""
        self.starts.append(len(self.records))

    @property
    def episodes(self) -> list[NMPCStats]:
        """One view per episode, in order (each with that episode's records only)."""
        ends = self.starts[1:] + [len(self.records)]
        return [NMPCStats(self.records[a:b], [0]) for a, b in zip(self.starts, ends)]

    def episode(self, k: int = -1) -> NMPCStats:
        """The k-th episode's statistics (default: the current one).

        Raises:
            IndexError: no such episode (none before the first reset).
        """
        if not self.starts:
            raise IndexError("no episode has started: NMPC.reset() starts one")
        return self.episodes[k]

    @property
    def solves(self) -> int:
        return len(self.records)

    @property
    def failures(self) -> int:
        return sum(not r.success for r in self.records)

    @property
    def fallbacks(self) -> int:
        return sum(r.fallback for r in self.records)

    @property
    def retries(self) -> int:
        return sum(r.retried for r in self.records)

    @property
    def rejected_measurements(self) -> int:
        """Measured entries the observer left out or replaced (NaN, inf, out of range), over all steps."""
        return sum(r.rejected for r in self.records)

    def solve_times(self) -> np.ndarray:
        return np.array([r.solve_time for r in self.records])

    def iterations(self) -> np.ndarray:
        return np.array([r.iterations for r in self.records], dtype=int)


def radau_coefficients(degree: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Radau IIA collocation on [0, 1]: points tau (degree,), derivative matrix C (degree+1, degree+1), D.

    With the Lagrange basis l_j on (0, tau_1, ..., tau_d), ``C[j, r] = l_j'(tau_r)`` and ``D[j] = l_j(1)``;
    the state at a collocation point r is matched by ``h f(x_r) = sum_j C[j, r] x_j``.
    """
    if degree < 1:
        raise ValueError(f"collocation degree must be >= 1, got {degree}")
    tau = np.array([0.0, *ca.collocation_points(degree, "radau")])
    C = np.zeros((degree + 1, degree + 1))
    D = np.zeros(degree + 1)
    for j in range(degree + 1):
        basis = np.poly1d([1.0])
        for r in range(degree + 1):
            if r != j:
                basis *= np.poly1d([1.0, -tau[r]]) / (tau[j] - tau[r])
        D[j] = basis(1.0)
        deriv = np.polyder(basis)
        C[j] = [deriv(t) for t in tau]
    return tau[1:], C, D


class NMPC:
    """Nonlinear MPC of an :class:`~safectrl.models.core.ODEModel`; see the module docstring for the problem.

    Args:
        model: the model whose equations are predicted (never a copy of them).
        params: the model's parameter dataclass (plant parameters: oracle; others: mismatch).
        config: horizon, objective, bounds and solver settings.
        stage_cost: optional ``l(x, u, r) -> SX scalar`` replacing the default tracking cost; ``x`` (nx,)
            is the state at the end of an interval, ``u`` (nu,) the input over it, ``r`` (n_ref,) that
            interval's reference row, all CasADi SX column vectors in physical units.
        n_ref: reference columns of a custom ``stage_cost`` (default: ``len(config.tracked)``).
        transition: optional discrete transition ``(x0, u, p[, t0]) -> xf`` used by ``"shooting"`` instead
            of ``model.interval_function()``.
        observer: maps observations to full state and reference (:class:`Observer`); needed by :meth:`act`
            only.

    Raises:
        ValueError: on an inconsistent configuration (unknown state names, weight counts, bounds).
        TypeError: an observer without the :class:`Observer` methods.
    """

    def __init__(
        self,
        model: ODEModel,
        params: Any,
        config: NMPCConfig = NMPCConfig(),
        *,
        stage_cost: StageCost | None = None,
        n_ref: int | None = None,
        transition: ca.Function | None = None,
        observer: Observer | None = None,
    ) -> None:
        self.model = model
        self.config = config
        missing = [name for name in ("reset", "__call__", "applied")
                   if not callable(getattr(observer, name, None))]
        if observer is not None and missing:
            raise TypeError(f"the observer {type(observer).__name__} lacks {', '.join(missing)} "
                            "(an Observer has reset(seed), __call__(obs) -> Observed and applied(u))")
        self.observer = observer
        self._p = model.param_vector(params)
        self._validate(stage_cost, n_ref, transition)
        self.n_ref = len(config.tracked) if stage_cost is None else int(n_ref or 0)
        self._tracked = [model.states.index(s) for s in config.tracked]
        self._soft = [b for b in config.state_bounds if b.penalty is not None]
        self._hard = [b for b in config.state_bounds if b.penalty is None]
        self._build(stage_cost, transition)
        self.stats = NMPCStats()
        self._last: NMPCSolution | None = None
        self._warm: dict[str, np.ndarray] | None = None
        self._terminal_slack = 0.0
        #: The unshifted solution of the last probe (``solve(..., commit=False)``), None if it failed.
        self.pending: dict[str, Any] | None = None

    # -- configuration checks -----------------------------------------------------------------------

    def _validate(
        self, stage_cost: StageCost | None, n_ref: int | None, transition: ca.Function | None
    ) -> None:
        cfg, m = self.config, self.model
        if cfg.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {cfg.horizon}")
        if cfg.discretisation not in ("collocation", "shooting"):
            raise ValueError(
                f"discretisation must be 'collocation' or 'shooting', got {cfg.discretisation!r}")
        if transition is not None and cfg.discretisation != "shooting":
            raise ValueError("a transition function needs discretisation='shooting'")
        if cfg.collocation_elements < 1:
            raise ValueError(f"collocation_elements must be >= 1, got {cfg.collocation_elements}")
        if cfg.hessian not in ("exact", "limited-memory"):
            raise ValueError(f"hessian must be 'exact' or 'limited-memory', got {cfg.hessian!r}")
        if cfg.solver not in SOLVERS:
            raise ValueError(f"solver must be one of {', '.join(SOLVERS)}, got {cfg.solver!r}")
        if cfg.solver == "fatrop" and cfg.hessian != "exact":
            raise ValueError("fatrop needs hessian='exact'")
        for name in cfg.tracked + tuple(b.state for b in cfg.state_bounds if b.output is None):
            if name not in m.states:
                raise ValueError(f"unknown state {name!r}; {m.name} has states {', '.join(m.states)}")
        if stage_cost is None:
            if len(cfg.tracking_weights) != len(cfg.tracked):
                raise ValueError(
                    f"{len(cfg.tracking_weights)} tracking weights for {len(cfg.tracked)} tracked states"
                )
            if n_ref is not None and n_ref != len(cfg.tracked):
                raise ValueError("n_ref is only for a custom stage_cost; the default tracks config.tracked")
        if cfg.du_weights is not None and len(cfg.du_weights) != m.nu:
            raise ValueError(f"{len(cfg.du_weights)} du_weights for {m.nu} inputs")
        if cfg.proposal_weights is not None and len(cfg.proposal_weights) != m.nu:
            raise ValueError(f"{len(cfg.proposal_weights)} proposal_weights for {m.nu} inputs")
        finite = np.all(np.isfinite(m.u_low)) and np.all(np.isfinite(m.u_high))
        if not (finite and np.all(m.u_high > m.u_low)):
            raise ValueError(f"{m.name} needs finite input bounds with u_high > u_low")
        for b in cfg.state_bounds:
            if not b.low < b.high:
                raise ValueError(f"bound on {b.state}: low {b.low} must be below high {b.high}")
            if b.penalty is not None and not b.penalty > 0:
                raise ValueError(f"bound on {b.state}: penalty must be positive (None for a hard bound)")

    # -- the NLP, built once --------------------------------------------------------------------------

    def _interval_dynamics(self, transition: ca.Function | None) -> Callable:
        """``step(x0, u, p, t0) -> (xf, equality residuals, collocation variables)`` of one interval."""
        m, cfg = self.model, self.config
        s = ca.DM(m.x_scale)
        if cfg.discretisation == "shooting":
            fn = transition if transition is not None else m.interval_function()

            def shoot(x0, u, p, t0):
                args = [x0, u, p] + ([t0] if m.time_varying else [])
                return fn(*args)[0] if fn.n_out() > 1 else fn(*args), [], []

            return shoot

        d, ne = cfg.collocation_degree, cfg.collocation_elements
        tau, C, D = radau_coefficients(d)
        h = m.dt / ne
        rhs = m.rhs_function()

        def collocate(x0, u, p, t0):
            xs, residuals, variables = x0, [], []
            for e in range(ne):
                zc = ca.SX.sym("zc", m.nx, d)  # scaled collocation states of this element
                variables.append(ca.vec(zc))
                xc = [zc[:, j] * s for j in range(d)]
                for r in range(1, d + 1):
                    slope = C[0, r] * xs + sum(C[j, r] * xc[j - 1] for j in range(1, d + 1))
                    args = [xc[r - 1], u, p] + ([t0 + (e + tau[r - 1]) * h] if m.time_varying else [])
                    residuals.append((h * rhs(*args) - slope) / s)
                xs = D[0] * xs + sum(D[j] * xc[j - 1] for j in range(1, d + 1))
            return xs, residuals, variables

        return collocate

    def _build(self, stage_cost: StageCost | None, transition: ca.Function | None) -> None:
        m, cfg, N = self.model, self.config, self.config.horizon
        s = ca.DM(m.x_scale)
        u_low, u_range = ca.DM(m.u_low), ca.DM(m.u_high - m.u_low)
        x0 = ca.SX.sym("x0", m.nx)
        u_prev = ca.SX.sym("u_prev", m.nu)
        ref = ca.SX.sym("ref", self.n_ref, N)
        p = ca.SX.sym("p", m.n_params)
        t0 = ca.SX.sym("t0")
        step = self._interval_dynamics(transition)
        du_w = ca.DM(cfg.du_weights) if cfg.du_weights is not None else None
        track_w = ca.DM(list(cfg.tracking_weights))
        proposal = ca.SX.sym("proposal", m.nu if cfg.proposal_weights is not None else 0)
        p_named = m._params_namespace(ca.vertsplit(p))

        def bounded(b: StateBound, x: ca.SX) -> tuple[ca.SX, float]:
            """The bounded quantity at state ``x`` and its scale."""
            if b.output is None:
                i = m.states.index(b.state)
                return x[i], float(m.x_scale[i])
            finite = [abs(v) for v in (b.low, b.high) if math.isfinite(v)]
            scale = b.scale if b.scale is not None else max(finite + [1e-12])
            return b.output(ca.vertsplit(x), p_named, CASADI), float(scale)

        # Stage-wise layout (the one fatrop's structure detection reads; IPOPT does not care): stage k has the
        # state X_k = [z_k, w_k] (the scaled state and the previous input, scaled to [0, 1]: the move penalty
        # stays inside a stage) and the controls [v_k (the input), collocation states, slacks]; its rows are
        # the gap-closing constraints X_{k+1} - F(X_k, controls) first, then its path constraints. Everything
        # about the interval's end state is written on F's xf, a function of stage k alone, so the Hessian is
        # block-diagonal by stage. Every entry has a key (stage, name); the warm start shifts by keys.
        w, w_lo, w_hi, w_keys = [], [], [], []
        g, g_lo, g_hi, g_keys = [], [], [], []
        cold_state: list[int] = []  # per entry of w: the state it starts at cold (-1: none)
        cold_input: list[int] = []  # per entry of w: the input it starts at cold (-1: none)

        def var(sym: ca.SX, low: Any, high: Any, stage: int, name: str, kind: str = "") -> ca.SX:
            """A decision variable; ``kind`` "x": its entries are states (cycling), "u": inputs, "": slacks."""
            n = sym.shape[0]
            w.append(sym)
            w_lo.append(np.broadcast_to(np.asarray(low, dtype=float), (n,)))
            w_hi.append(np.broadcast_to(np.asarray(high, dtype=float), (n,)))
            w_keys.extend((stage, f"{name}{i}") for i in range(n))
            cold_state.extend(i % m.nx if kind == "x" else -1 for i in range(n))
            cold_input.extend(i % m.nu if kind == "u" else -1 for i in range(n))
            return sym

        def row(expr: ca.SX, low: Any, high: Any, stage: int, name: str) -> None:
            n = expr.shape[0]
            g.append(expr)
            g_lo.append(np.broadcast_to(np.asarray(low, dtype=float), (n,)))
            g_hi.append(np.broadcast_to(np.asarray(high, dtype=float), (n,)))
            g_keys.extend((stage, f"{name}{i}") for i in range(n))

        z_lo, z_hi = np.full(m.nx, -np.inf), np.full(m.nx, np.inf)
        for b in self._hard:
            if b.output is None:
                i = m.states.index(b.state)
                z_lo[i] = max(z_lo[i], b.low / m.x_scale[i])
                z_hi[i] = min(z_hi[i], b.high / m.x_scale[i])
        free = (-np.inf, np.inf)
        z = [ca.SX.sym(f"z{k}", m.nx) for k in range(N + 1)]
        w_in = [ca.SX.sym(f"w{k}", m.nu) for k in range(N + 1)]
        objective = 0
        self._soft_scales = [bounded(b, x0)[1] for b in self._soft]
        v_idx, z_idx, slack_idx = [], [], []
        for k in range(N):
            # stage k's state: z_0 is the initial state (hard bounds only on the predicted ones)
            var(z[k], *((z_lo, z_hi) if k > 0 else free), k, "z", "x")
            var(w_in[k], *free, k, "w", "u")
            v = var(ca.SX.sym(f"v{k}", m.nu), 0.0, 1.0, k, "v", "u")
            v_idx.append(sum(x.shape[0] for x in w) - m.nu)
            u = u_low + v * u_range
            xf, residuals, coll = step(z[k] * s, u, p, t0 + k * m.dt)
            for j, c in enumerate(coll):
                var(c, *free, k, f"c{j}_", "x")
            slacks = []
            for j, b in enumerate(self._soft):
                slacks.append(var(ca.SX.sym(f"s{k}_{j}"), 0.0, np.inf, k, f"s{j}_"))
                slack_idx.append(sum(x.shape[0] for x in w) - 1)
            # gap-closing rows (+1 on the next stage's state), then the path rows of stage k
            row(z[k + 1] - xf / s, 0.0, 0.0, k, "gap_z")
            row(w_in[k + 1] - v, 0.0, 0.0, k, "gap_w")
            if k == 0:
                row(z[0] - x0 / s, 0.0, 0.0, k, "x0_")
                row(w_in[0] - (u_prev - u_low) / u_range, 0.0, 0.0, k, "u_prev")
            for j, r in enumerate(residuals):
                row(r, 0.0, 0.0, k, f"coll{j}_")
            for j, b in enumerate(self._hard):
                if b.output is not None:
                    value, scale = bounded(b, xf)
                    row(value / scale, b.low / scale, b.high / scale, k, f"hard{j}_")
            for j, (b, slack) in enumerate(zip(self._soft, slacks)):
                value, scale = bounded(b, xf)
                objective += b.penalty * scale * slack
                if math.isfinite(b.high):
                    row(value / scale - slack, -np.inf, b.high / scale, k, f"soft_hi{j}_")
                if math.isfinite(b.low):
                    row(value / scale + slack, b.low / scale, np.inf, k, f"soft_lo{j}_")
            if stage_cost is None:
                err = ref[:, k] - xf[self._tracked] if self._tracked else ca.SX(0, 1)
                objective += ca.dot(track_w, err**2)
            else:
                objective += stage_cost(xf, u, ref[:, k])
            if cfg.proposal_weights is not None and k == 0:
                objective += ca.dot(ca.DM(cfg.proposal_weights), ((u - proposal) / u_range) ** 2)
            if du_w is not None and k >= cfg.du_start:
                objective += ca.dot(du_w, (v - w_in[k]) ** 2)
        # the last stage: x_N, the last input, and the terminal condition on them
        var(z[N], z_lo, z_hi, N, "z", "x")
        var(w_in[N], *free, N, "w", "u")
        first = {key: i for i, key in reversed(list(enumerate(w_keys)))}
        z_idx = [first[(k, "z0")] for k in range(1, N + 1)]
        terminal_idx: list[int] = []
        if cfg.terminal == "equilibrium":
            u_last = u_low + w_in[N] * u_range
            args = [z[N] * s, u_last, p] + ([t0 + N * m.dt] if m.time_varying else [])
            drift = m.rhs_function()(*args) * m.dt / s  # change over one interval if x_N were held, scaled
            band = np.full(m.nx, cfg.terminal_tolerance)
            if cfg.terminal_penalty is None:
                row(drift, -band, band, N, "terminal")
            else:
                slack = var(ca.SX.sym("s_terminal", m.nx), 0.0, np.inf, N, "s_terminal")
                terminal_idx = list(range(sum(x.shape[0] for x in w) - m.nx, sum(x.shape[0] for x in w)))
                objective += cfg.terminal_penalty * ca.sum1(slack)
                row(drift - slack, -np.inf, band, N, "terminal_hi")
                row(drift + slack, -band, np.inf, N, "terminal_lo")
        self._w_lo = np.concatenate(w_lo)
        self._w_hi = np.concatenate(w_hi)
        self._g_lo = np.concatenate(g_lo)
        self._g_hi = np.concatenate(g_hi)
        self._v_idx = np.array(v_idx)[:, None] + np.arange(m.nu)  # (N, nu) positions of the inputs in w
        self._z_idx = np.array(z_idx)[:, None] + np.arange(m.nx)  # (N, nx) positions of z_1 .. z_N
        self._slack_idx = np.array(slack_idx, dtype=int).reshape(N, len(self._soft))
        self._terminal_idx = np.array(terminal_idx, dtype=int)
        self._w_shift = self._shift_index(w_keys)
        self._g_shift = self._shift_index(g_keys)
        self._cold_state = np.array(cold_state)
        self._cold_input = np.array(cold_input)
        nlp = {
            "x": ca.vertcat(*w),
            "p": ca.vertcat(x0, u_prev, ca.vec(ref), p, t0, proposal),
            "f": objective,
            "g": ca.vertcat(*g),
        }
        self._nlp = nlp
        # The NLP's objective, its gradient and the constraints at a cold start (every state at the current one):
        # a state outside the model's domain (e.g. the log of a negative glucose reading) is refused before the
        # solver sees it. fatrop has no time limit and, started at a NaN gradient, never returns (seen: > 40 min
        # in its linear solver); a warm start is the previous solution, finite, and fatrop returns a failure
        # when a NaN appears later. 0.15-0.25 ms per check, so only cold attempts are checked.
        self._start_fn = ca.Function(
            f"{m.name}_nmpc_start", [nlp["x"], nlp["p"]],
            [ca.vertcat(nlp["f"], ca.gradient(nlp["f"], nlp["x"]), nlp["g"])]).expand()
        self._solver = ca.nlpsol(f"{m.name}_nmpc", cfg.solver, nlp, self._solver_options(cfg.warm_start))
        # fatrop's options cannot change per call, and the warm start's (small mu, iterates close to their
        # bounds) fail from a cold guess: a second instance with the default ones, built when first needed
        self._cold_solver = self._solver if cfg.solver == "ipopt" or not cfg.warm_start else None
        self._plan_fn = ca.Function(
            f"{m.name}_nmpc_plan", [nlp["x"]],
            [ca.horzcat(*[u_low + nlp["x"][self._v_idx[k]] * u_range for k in range(N)])], ["w"], ["u_plan"],
        )

    @staticmethod
    def _shift_index(keys: list[tuple[int, str]]) -> np.ndarray:
        """Positions such that ``values[index]`` moves every entry one stage earlier: entry (k, name) takes
        the value of (k + 1, name); entries without a successor (the last stage, stage 0's own rows) keep
        theirs. The warm start for the next interval."""
        where = {key: i for i, key in enumerate(keys)}
        return np.array([where.get((k + 1, name), where.get((k, name))) for k, name in keys])

    def _solver_options(self, warm: bool) -> dict[str, Any]:
        cfg = self.config
        if cfg.solver == "fatrop":
            eq = (self._g_lo == self._g_hi).tolist()
            opts: dict[str, Any] = {
                "print_time": False, "expand": True, "structure_detection": "auto", "equality": eq,
                "fatrop.print_level": 0, "fatrop.tol": cfg.tol, "fatrop.max_iter": cfg.max_iter,
            }
            if warm:  # fatrop takes no multipliers: start close to the boundary, with a small mu
                opts.update({"fatrop.mu_init": 1e-6, "fatrop.bound_push": 1e-6, "fatrop.bound_frac": 1e-6})
            return opts
        opts = {
            "print_time": False,
            "ipopt.print_level": 0,
            "ipopt.sb": "yes",
            "ipopt.tol": cfg.tol,
            "ipopt.max_iter": cfg.max_iter,
            "ipopt.max_cpu_time": cfg.max_cpu_time,
            "ipopt.hessian_approximation": cfg.hessian,
            "ipopt.bound_relax_factor": 0.0,
        }
        if warm:
            opts.update({
                "ipopt.warm_start_init_point": "yes",
                "ipopt.warm_start_bound_push": 1e-8,
                "ipopt.warm_start_mult_bound_push": 1e-8,
                "ipopt.mu_init": 1e-5,
            })
        return opts

    # -- solving ----------------------------------------------------------------------------------------

    def _reference(self, reference: np.ndarray | None) -> np.ndarray:
        N = self.config.horizon
        if self.n_ref == 0:
            return np.zeros((N, 0))
        if reference is None:
            raise ValueError(f"a reference with {self.n_ref} columns is required")
        r = np.asarray(reference, dtype=float)
        if r.shape == (self.n_ref,):
            r = np.tile(r, (N, 1))
        if r.shape != (N, self.n_ref) or not np.all(np.isfinite(r)):
            raise ValueError(
                f"reference must be finite with shape ({self.n_ref},) or ({N}, {self.n_ref}), got {r.shape}"
            )
        return r

    def _initial_guess(self, x: np.ndarray, u_prev: np.ndarray) -> np.ndarray:
        """Cold start: every state (and collocation state) at the initial state, every input at the previous
        input, slacks at zero."""
        m = self.model
        v_prev = (u_prev - m.u_low) / (m.u_high - m.u_low)
        return np.where(self._cold_state >= 0, (x / m.x_scale)[self._cold_state],
                        np.where(self._cold_input >= 0, v_prev[self._cold_input], 0.0))

    def solve(
        self,
        x: np.ndarray,
        u_prev: np.ndarray,
        reference: np.ndarray | None = None,
        t0: float = 0.0,
        params: Any = None,
        proposal: np.ndarray | None = None,
        *,
        first_input: np.ndarray | None = None,
        commit: bool = True,
        warm_from: dict[str, np.ndarray] | None = None,
    ) -> NMPCSolution:
        """Solve the NMPC problem from state ``x`` and record the outcome in :attr:`stats`.

        Args:
            x: current full state, shape (nx,), physical units.
            u_prev: input applied over the last interval, shape (nu,) (the move penalty's reference).
            reference: (n_ref,) constant over the horizon, or (horizon, n_ref), row k for the end of
                interval k.
            t0: time at the start of the first interval (time-varying models).
            params: parameters to predict with for this solve (dataclass or vector); default: the ones
                given at construction.
            proposal: (nu,) the input the first move is pulled to (``config.proposal_weights``; required
                then, ignored otherwise), physical units.
            first_input: (nu,) pins the first input (physical units): is there a plan that starts with it?
            commit: False leaves the controller as it was (warm start, last plan, :attr:`stats`): a *probe*;
                its solution waits in :attr:`pending` (None if it failed) for :meth:`commit`.
            warm_from: start the solver from this unshifted solution of the same interval (``pending``).

        Returns:
            The solution; on a failed solve (not strict) the shifted previous plan, ``fallback`` True.

        Raises:
            NMPCSolveError: the solve failed and ``config.strict`` is set.
            ValueError: on malformed input.
        """
        m = self.model
        x = np.asarray(x, dtype=float)
        u_prev = np.asarray(u_prev, dtype=float)
        if x.shape != (m.nx,) or not np.all(np.isfinite(x)):
            raise ValueError(f"state must be finite with shape ({m.nx},), got {x!r}")
        if u_prev.shape != (m.nu,) or not np.all(np.isfinite(u_prev)):
            raise ValueError(f"previous input must be finite with shape ({m.nu},), got {u_prev!r}")
        ref = self._reference(reference)
        if self.config.proposal_weights is not None:
            a = np.asarray(proposal, dtype=float) if proposal is not None else None
            if a is None or a.shape != (m.nu,) or not np.all(np.isfinite(a)):
                raise ValueError(f"proposal must be finite with shape ({m.nu},), got {proposal!r}")
        else:
            a = np.zeros(0)
        p = self._p if params is None else (
            params if isinstance(params, np.ndarray) else m.param_vector(params))
        w_lo, w_hi = self._w_lo, self._w_hi
        if first_input is not None:
            v0 = (np.asarray(first_input, dtype=float) - m.u_low) / (m.u_high - m.u_low)
            if v0.shape != (m.nu,) or not np.all((v0 >= 0.0) & (v0 <= 1.0)):
                raise ValueError(f"first_input must lie in the input bounds, got {first_input!r}")
            w_lo, w_hi = w_lo.copy(), w_hi.copy()
            w_lo[self._v_idx[0]] = w_hi[self._v_idx[0]] = v0
        args: dict[str, Any] = {
            # Row k of the reference is column k of the NLP's (n_ref, N) parameter.
            "p": np.concatenate([x, u_prev, ref.ravel(), p, [t0], a]),
            "lbx": w_lo, "ubx": w_hi, "lbg": self._g_lo, "ubg": self._g_hi,
        }
        cold = {"x0": self._initial_guess(x, np.clip(u_prev, m.u_low, m.u_high))}
        start = warm_from if warm_from is not None else self._warm
        warm = start is not None and self.config.warm_start
        if warm:
            first = {"x0": start["w"], "lam_x0": start["lam_x"], "lam_g0": start["lam_g"]}
            if first_input is not None:
                first["x0"] = first["x0"].copy()
                first["x0"][self._v_idx[0]] = v0
        else:
            first = cold
        out, status, iterations, solve_time = self._attempt({**args, **first}, warm)
        w = np.asarray(out["x"]).ravel()
        success = status in CONVERGED and bool(np.all(np.isfinite(w)))
        retried = warm and not success and self.config.retry_cold
        if retried:
            out, status, its, seconds = self._attempt({**args, **cold}, False)
            iterations += its
            solve_time += seconds
            w = np.asarray(out["x"]).ravel()
            success = status in CONVERGED and bool(np.all(np.isfinite(w)))
        if not commit:
            self.pending = None
            if not success:
                nan = np.full((self.config.horizon, m.nu), np.nan)
                return NMPCSolution(nan[0], nan, np.full((self.config.horizon + 1, m.nx), np.nan), status,
                                    False, False, iterations, solve_time, float("nan"), float("nan"),
                                    float("nan"))
            u_plan, x_plan, max_slack = self._plan(x, w)
            self.pending = {"w": w, "lam_x": np.asarray(out["lam_x"]).ravel(),
                            "lam_g": np.asarray(out["lam_g"]).ravel(),
                            "record": SolveRecord(status, True, False, iterations, solve_time, retried)}
            return NMPCSolution(u_plan[0].copy(), u_plan, x_plan, status, True, False, iterations, solve_time,
                                float(out["f"]), max_slack, self._terminal_slack)
        if success:
            u_plan, x_plan, max_slack = self._plan(x, w)
            objective = float(out["f"])
            self._warm = self._shifted_warm(w, out["lam_x"], out["lam_g"])
        else:
            if self.config.strict:
                self.stats.records.append(SolveRecord(status, False, False, iterations, solve_time, retried))
                raise NMPCSolveError(
                    f"NMPC solve failed: {self.config.solver} status {status} after {iterations} iterations")
            u_plan, x_plan = self._shifted_plan(x, u_prev)
            objective = max_slack = self._terminal_slack = float("nan")
        sol = NMPCSolution(
            u=u_plan[0].copy(),
            u_plan=u_plan,
            x_plan=x_plan,
            status=status,
            success=success,
            fallback=not success,
            iterations=iterations,
            solve_time=solve_time,
            objective=objective,
            max_slack=max_slack,
            terminal_slack=self._terminal_slack,
        )
        self.stats.records.append(SolveRecord(status, success, sol.fallback, iterations, solve_time, retried))
        self._last = sol
        return sol

    def _shifted_warm(self, w: Any, lam_x: Any, lam_g: Any) -> dict[str, np.ndarray]:
        """A solution moved one interval along (the warm start of the next): see :meth:`_shift_index`."""
        return {
            "w": np.asarray(w).ravel()[self._w_shift],
            "lam_x": np.asarray(lam_x).ravel()[self._w_shift],
            "lam_g": np.asarray(lam_g).ravel()[self._g_shift],
        }

    def _advance_warm(self) -> None:
        """Move the kept warm start one more interval along (an interval passed without a new solution)."""
        if self._warm is not None:
            self._warm = {k: v[self._g_shift if k == "lam_g" else self._w_shift] for k, v in self._warm.items()}

    def commit(self, sol: NMPCSolution) -> None:
        """Make the probe ``sol`` (``solve(..., commit=False)``, successful) this interval's solution: its plan
        becomes the warm start and the backup, and it is recorded in :attr:`stats`."""
        if self.pending is None:
            raise RuntimeError("commit() needs a successful probe: solve(..., commit=False)")
        raw = self.pending
        self._warm = self._shifted_warm(raw["w"], raw["lam_x"], raw["lam_g"])
        self.stats.records.append(raw["record"])
        self._last = sol
        self.pending = None

    def backup(self, x: np.ndarray, u_prev: np.ndarray, status: str = "rejected") -> NMPCSolution:
        """This interval's input from the last plan (shifted by one interval; none: ``u_prev`` held), recorded
        as a fallback with ``status``: for a caller that rejects a solve's plan (e.g. a safety filter whose
        check of the plan on the integrator failed)."""
        x = np.asarray(x, dtype=float)
        u_plan, x_plan = self._shifted_plan(x, np.asarray(u_prev, dtype=float))
        nan = float("nan")
        sol = NMPCSolution(u_plan[0].copy(), u_plan, x_plan, status, False, True, 0, 0.0, nan, nan, nan)
        self.stats.records.append(SolveRecord(status, False, True, 0, 0.0, False))
        self._last = sol
        self.pending = None
        return sol

    def adopt(self, x: np.ndarray, u_plan: np.ndarray, x_plan: np.ndarray, status: str = "adopted") -> NMPCSolution:
        """Make a plan found without a solve this interval's solution (e.g. a safety filter's last plan
        continued and checked on the integrator): it becomes the backup and the warm start moves one interval
        along, as after a fallback; recorded with ``status`` and 0 iterations, not as a failure."""
        N, m = self.config.horizon, self.model
        u_plan = np.asarray(u_plan, dtype=float)
        x_plan = np.asarray(x_plan, dtype=float)
        if u_plan.shape != (N, m.nu) or x_plan.shape != (N + 1, m.nx):
            raise ValueError(f"a plan needs inputs ({N}, {m.nu}) and states ({N + 1}, {m.nx}), got "
                             f"{u_plan.shape} and {x_plan.shape}")
        self._advance_warm()
        sol = NMPCSolution(u_plan[0].copy(), u_plan, x_plan, status, True, False, 0, 0.0, float("nan"), 0.0, 0.0)
        self.stats.records.append(SolveRecord(status, True, False, 0, 0.0, False))
        self._last = sol
        self.pending = None
        return sol

    def _attempt(self, args: dict[str, Any], warm: bool) -> tuple[dict[str, Any], str, int, float]:
        """One solver call: its outputs, return status (IPOPT's names; fatrop's success as
        ``Solve_Succeeded``, its other return flags as ``fatrop_flag_<n>``; :data:`INVALID_START` without a
        call when a cold start point is not finite), iterations and wall time (s)."""
        t_start = time.perf_counter()
        if warm:
            solver = self._solver
        else:
            if not np.all(np.isfinite(np.asarray(self._start_fn(args["x0"], args["p"])))):
                nan = np.full(self._w_lo.size, np.nan)
                out = {"x": nan, "lam_x": nan, "lam_g": np.full(self._g_lo.size, np.nan), "f": np.nan}
                return out, INVALID_START, 0, time.perf_counter() - t_start
            if self._cold_solver is None:  # built for the first cold start that passes the check
                t_build = time.perf_counter()
                self._cold_solver = ca.nlpsol(f"{self.model.name}_nmpc_cold", self.config.solver, self._nlp,
                                              self._solver_options(False))
                t_start += time.perf_counter() - t_build  # the build is not part of the solve's time
            solver = self._cold_solver
        try:
            out = solver(**args)
        except RuntimeError as exc:  # fatrop raises where IPOPT returns a status (e.g. a NaN in its KKT system)
            nan = np.full(self._w_lo.size, np.nan)
            out = {"x": nan, "lam_x": nan, "lam_g": np.full(self._g_lo.size, np.nan), "f": np.nan}
            return out, f"solver_exception: {str(exc).splitlines()[-1][:80]}", 0, time.perf_counter() - t_start
        solve_time = time.perf_counter() - t_start
        st = solver.stats()
        iterations = int(st.get("iter_count", -1))
        if self.config.solver == "fatrop":  # fatrop's return flag is 0 or 1; the iteration count tells more
            if st.get("success"):
                status = "Solve_Succeeded"
            elif iterations >= self.config.max_iter:
                status = "Maximum_Iterations_Exceeded"
            else:
                status = f"fatrop_failed_flag_{st.get('return_status')}"
            return out, status, iterations, solve_time
        return out, str(st.get("return_status", "unknown")), iterations, solve_time

    def _plan(self, x: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        """Planned inputs (N, nu), predicted states (N+1, nx) and largest slack of an NLP solution ``w``."""
        m = self.model
        u_plan = np.clip(np.asarray(self._plan_fn(w)).T, m.u_low, m.u_high)
        z = w[self._z_idx] * m.x_scale
        soft_scale = np.array(self._soft_scales)
        slack = w[self._slack_idx] * soft_scale
        self._terminal_slack = float(w[self._terminal_idx].max()) if self._terminal_idx.size else 0.0
        return u_plan, np.vstack([x, z]), float(slack.max()) if slack.size else 0.0

    def _shifted_plan(self, x: np.ndarray, u_prev: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The fallback: the previous plan shifted by one interval, or the previous input held."""
        m, N = self.model, self.config.horizon
        if self._last is not None:
            u_plan = np.vstack([self._last.u_plan[1:], self._last.u_plan[-1:]])
            x_plan = np.vstack([x, self._last.x_plan[2:], self._last.x_plan[-1:]])
        else:
            u_plan = np.tile(np.clip(u_prev, m.u_low, m.u_high), (N, 1))
            x_plan = np.tile(x, (N + 1, 1))
        self._advance_warm()  # keep warm-starting from the last good solution, one more shift along
        return u_plan, x_plan

    # -- the common controller interface -------------------------------------------------------------

    @property
    def last_solution(self) -> NMPCSolution | None:
        """The solution of the most recent :meth:`solve` (None after :meth:`reset`)."""
        return self._last

    def reset(self, seed: int | None = None) -> None:
        """Forget the warm start and the previous plan, start an episode in :attr:`stats` (which keeps the
        earlier ones) and reset the observer."""
        self.stats.begin_episode()
        self._last = None
        self._warm = None
        self.pending = None
        if self.observer is not None:
            self.observer.reset(seed)

    def episode_report(self) -> dict[str, int]:
        """The episode's fallbacks as a study column: ``fallbacks``, the solves of the current episode whose
        input did not come from that solve (the previous plan shifted or the previous input held); none
        before the first :meth:`reset`. A reading the observer leaves out is not one: the solve runs on the
        predicted state (``stats.episode().rejected_measurements`` counts those)."""
        if not self.stats.starts:
            return {}
        return {"fallbacks": self.stats.episode().fallbacks}

    def act(self, obs: np.ndarray) -> np.ndarray:
        """Input for the next interval from an observation, through the observer."""
        if self.observer is None:
            raise RuntimeError("act() needs an observer that maps observations to states; use solve(x, ...)")
        seen = self.observer(obs)
        u = self.solve(seen.x, seen.u_prev, seen.reference, seen.t0, seen.params).u
        self.stats.records[-1].rejected = seen.rejected
        self.observer.applied(u)
        return u
