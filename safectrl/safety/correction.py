r"""Action correction with a PICNN cost model: the same convex problem solved two ways.

For a state x (network units) and a reference action y_ref (the policy's action), both solvers return

    y* = argmin_y  f(x, y) + trust/2 ‖y − y_ref‖²    subject to  lo <= y <= hi,

where f is a :class:`~safectrl.safety.picnn.PICNN` (convex in y) and [lo, hi] the per-state action box
(input bounds intersected with a rate limit, say). Everything here is in network units: the caller maps
physical actions in and out (:class:`~safectrl.safety.filter.SafetyFilter` does).

* :class:`GradientCorrector` — projected gradient descent from y_ref (projected onto the box), batched
  over states in torch, with an adaptive step: a trial step is taken only if it does not increase the
  objective; on success the step grows, on failure it shrinks. A state stops when the attempted projected
  move is below ``tol`` in every coordinate, or after ``max_steps`` gradient evaluations. The objective is
  therefore never worse than at the start (the projected policy action).
* :class:`ExactCorrector` — the epigraph program of the network at fixed x: with A_i, B_i, c_i from
  :meth:`PICNN.export <safectrl.safety.picnn.PICNN.export>`,

      minimise   A_{k-1} z_{k-1} + B_{k-1} y + c_{k-1} + trust/2 ‖y − y_ref‖²
      subject to z_{i+1} >= A_i z_i + B_i y + c_i,  z_{i+1} >= s (A_i z_i + B_i y + c_i)   (i < k-1)
                 lo <= y <= hi

  (s the leaky slope; layer 0 has no A-term). Because A_i >= 0 and the activations are non-decreasing, any
  feasible z over-estimates the forward pass, so the optimum is min_y f(x, y) + trust term — exactly. The
  problem is built once in cvxpy with A_i, B_i, c_i, lo, hi, y_ref as Parameters (DPP, checked) and re-solved
  per state: an LP (trust = 0, HiGHS's simplex) or a QP (trust > 0, Clarabel's interior point). HiGHS's QP
  solver is about twice as fast on most states but cycled without end on a state of a start-up episode
  (its iteration limit then ends it with status "user_limit"), so it is not the default. Every solve's
  status is checked.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import cvxpy as cp
import numpy as np
import torch

from safectrl.safety.picnn import PICNN


class CorrectionError(RuntimeError):
    """A solver did not return an optimal solution."""


@dataclass(frozen=True)
class GDConfig:
    """Projected gradient descent on f(x, ·) + trust term, in network action units."""

    step: float = 0.1  # initial step, action units per unit of gradient
    max_steps: int = 50  # budget of gradient evaluations per state
    tol: float = 1e-4  # stop once an attempted projected move is below this in every coordinate
    grow: float = 1.5  # step multiplier after a step that did not increase the objective
    shrink: float = 0.3  # step multiplier after a rejected step

    def __post_init__(self) -> None:
        if not (self.step > 0 and self.tol > 0 and self.max_steps >= 1):
            raise ValueError(f"step and tol must be > 0 and max_steps >= 1, got {self}")
        if not (self.grow >= 1.0 and 0.0 < self.shrink < 1.0):
            raise ValueError(f"grow must be >= 1 and shrink in (0, 1), got {self}")


@dataclass(frozen=True)
class Correction:
    """Corrected actions of a batch of states, network units."""

    action: np.ndarray  # (N, action_dim) the minimiser found
    cost: np.ndarray  # (N,) f(x, action), network output units
    objective: np.ndarray  # (N,) f + trust/2 ‖action − y_ref‖², as reported by the solver
    iterations: np.ndarray  # (N,) gradient evaluations (GD) or solver iterations (exact)
    path: np.ndarray | None = None  # (steps + 1, N, action_dim) GD iterates, if requested


def check_problem(x: np.ndarray, y_ref: np.ndarray, lo: np.ndarray, hi: np.ndarray, state_dim: int,
                  action_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate a batch of correction problems; returns float64 arrays of shapes (N, n_x), (N, n_y) x 3.

    Raises:
        ValueError: wrong shapes, non-finite numbers, or an empty box (lo > hi in some coordinate).
    """
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.shape[1] != state_dim:
        raise ValueError(f"states must have shape (N, {state_dim}), got {x.shape}")
    n = len(x)
    out = [x]
    for name, arr in (("y_ref", y_ref), ("lo", lo), ("hi", hi)):
        a = np.asarray(arr, dtype=float)
        if a.shape != (n, action_dim):
            raise ValueError(f"{name} must have shape ({n}, {action_dim}), got {a.shape}")
        out.append(a)
    for name, a in zip(("state", "reference action", "lower bound", "upper bound"), out):
        if not np.all(np.isfinite(a)):
            row = int(np.argwhere(~np.isfinite(a))[0, 0])
            raise ValueError(f"{name} of problem {row} contains NaN or inf")
    empty = np.any(out[2] > out[3], axis=1)
    if empty.any():
        row = int(np.flatnonzero(empty)[0])
        raise ValueError(f"empty action box in problem {row}: lo {out[2][row]} > hi {out[3][row]}")
    return out[0], out[1], out[2], out[3]


def _frozen_float64(net: PICNN) -> PICNN:
    clone = copy.deepcopy(net).double().eval()
    clone.check_convex()
    for p in clone.parameters():
        p.requires_grad_(False)
    return clone


class GradientCorrector:
    """Projected gradient descent, batched over states (see the module docstring).

    Args:
        net: the cost network (copied as float64; later changes to ``net`` are not seen).
        trust: weight of ‖y − y_ref‖²/2, network cost units per squared action unit; >= 0.
        config: step size, budget and stopping rule.
    """

    def __init__(self, net: PICNN, trust: float = 0.0, config: GDConfig = GDConfig()) -> None:
        if not trust >= 0:
            raise ValueError(f"trust must be >= 0, got {trust}")
        self.net = _frozen_float64(net)
        self.trust = float(trust)
        self.config = config

    def _objective(self, x, y, y_ref):
        y = y.detach().requires_grad_(True)
        with torch.enable_grad():
            f = self.net(x, y)
            obj = f + 0.5 * self.trust * ((y - y_ref) ** 2).sum(1)
            (grad,) = torch.autograd.grad(obj.sum(), y)
        return obj.detach(), f.detach(), grad

    def correct(self, x: np.ndarray, y_ref: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                record_path: bool = False) -> Correction:
        """Correct a batch: ``x`` (N, state_dim), ``y_ref``, ``lo``, ``hi`` (N, action_dim)."""
        cfg = self.config
        arrays = check_problem(x, y_ref, lo, hi, self.net.config.state_dim, self.net.config.action_dim)
        X, Yref, Lo, Hi = (torch.as_tensor(a) for a in arrays)
        y = torch.minimum(torch.maximum(Yref, Lo), Hi)
        obj, f, g = self._objective(X, y, Yref)
        eta = torch.full((len(y),), cfg.step, dtype=y.dtype)
        active = torch.ones(len(y), dtype=torch.bool)
        evals = torch.ones(len(y), dtype=torch.int64)
        path = [y.clone()] if record_path else None
        for _ in range(cfg.max_steps - 1):
            trial = torch.minimum(torch.maximum(y - eta[:, None] * g, Lo), Hi)
            active &= (trial - y).abs().amax(1) > cfg.tol
            if not active.any():
                break
            t_obj, t_f, t_g = self._objective(X, trial, Yref)
            evals += active
            accept = active & (t_obj <= obj)
            y = torch.where(accept[:, None], trial, y)
            obj, f = torch.where(accept, t_obj, obj), torch.where(accept, t_f, f)
            g = torch.where(accept[:, None], t_g, g)
            eta = torch.where(accept, eta * cfg.grow, torch.where(active, eta * cfg.shrink, eta))
            if path is not None:
                path.append(y.clone())
        return Correction(
            action=y.numpy(), cost=f.numpy(), objective=obj.numpy(), iterations=evals.numpy(),
            path=None if path is None else torch.stack(path).numpy(),
        )


class ExactCorrector:
    """The exact LP/QP of the module docstring, built once in cvxpy and re-solved per state.

    Args:
        net: the cost network (copied as float64).
        trust: weight of ‖y − y_ref‖²/2; 0 gives an LP, > 0 a QP.
        solver: a cvxpy solver name; default HiGHS for the LP, Clarabel for the QP.
        solver_options: keyword options of that solver; default for Clarabel: gap and feasibility
            tolerances of 1e-10 (its defaults, 1e-8, leave errors of ~1e-6 in the optimal value).
    """

    def __init__(self, net: PICNN, trust: float = 0.0, solver: str | None = None,
                 solver_options: dict | None = None) -> None:
        if not trust >= 0:
            raise ValueError(f"trust must be >= 0, got {trust}")
        self.net = _frozen_float64(net)
        self.trust = float(trust)
        self.solver = solver or (cp.HIGHS if self.trust == 0 else cp.CLARABEL)
        if solver_options is None and self.solver == cp.CLARABEL:
            solver_options = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}
        self.solver_options = dict(solver_options or {})
        self.problem, self._params, self._y = self._build()
        if not self.problem.is_dpp():
            raise RuntimeError("the correction program is not DPP; it would be recompiled at every solve")
        if not self.problem.is_dcp():
            raise RuntimeError("the correction program is not convex (DCP)")

    def _build(self) -> tuple[cp.Problem, dict[str, cp.Parameter], cp.Variable]:
        cfg = self.net.config
        widths, m, slope = cfg.widths, cfg.action_dim, cfg.negative_slope
        y = cp.Variable(m, name="y")
        params: dict[str, cp.Parameter] = {"lo": cp.Parameter(m, name="lo"), "hi": cp.Parameter(m, name="hi")}
        constraints = [y >= params["lo"], y <= params["hi"]]
        z = None
        for i, width in enumerate(widths):
            params[f"B{i}"] = cp.Parameter((width, m), name=f"B{i}")
            params[f"c{i}"] = cp.Parameter(width, name=f"c{i}")
            pre = params[f"B{i}"] @ y + params[f"c{i}"]
            if i > 0:
                params[f"A{i}"] = cp.Parameter((width, widths[i - 1]), nonneg=True, name=f"A{i}")
                pre = pre + params[f"A{i}"] @ z
            if i < len(widths) - 1:
                z = cp.Variable(width, name=f"z{i + 1}")
                constraints.append(z >= pre)
                constraints.append(z >= slope * pre if slope > 0 else z >= 0)
        objective = cp.sum(pre)
        if self.trust > 0:
            params["y_ref"] = cp.Parameter(m, name="y_ref")
            objective = objective + 0.5 * self.trust * cp.sum_squares(y - params["y_ref"])
        return cp.Problem(cp.Minimize(objective), constraints), params, y

    def correct(self, x: np.ndarray, y_ref: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> Correction:
        """Correct a batch (one solve per state): ``x`` (N, state_dim), ``y_ref``, ``lo``, ``hi`` (N, action_dim)."""
        x, y_ref, lo, hi = check_problem(x, y_ref, lo, hi, self.net.config.state_dim, self.net.config.action_dim)
        layers = self.net.export(torch.as_tensor(x))
        n = len(x)
        action = np.empty_like(y_ref)
        objective = np.empty(n)
        iterations = np.empty(n, dtype=np.int64)
        p = self._params
        for k in range(n):
            for i in range(len(layers)):
                p[f"B{i}"].value = layers.B[i][k]
                p[f"c{i}"].value = layers.c[i][k]
                if i > 0:
                    p[f"A{i}"].value = layers.A[i][k]
            p["lo"].value, p["hi"].value = lo[k], hi[k]
            if self.trust > 0:
                p["y_ref"].value = y_ref[k]
            try:
                self.problem.solve(solver=self.solver, **self.solver_options)
            except cp.error.SolverError as err:
                raise CorrectionError(f"{self.solver} failed on state {k}: {err}") from err
            if self.problem.status != cp.OPTIMAL:
                raise CorrectionError(f"{self.solver} returned status {self.problem.status!r} for state {k}")
            action[k] = np.clip(self._y.value, lo[k], hi[k])  # solver tolerance can leave y a hair outside
            objective[k] = self.problem.value
            iterations[k] = self.problem.solver_stats.num_iters or 0
        with torch.no_grad():
            cost = self.net(torch.as_tensor(x), torch.as_tensor(action)).numpy()
        return Correction(action=action, cost=cost, objective=objective, iterations=iterations)
