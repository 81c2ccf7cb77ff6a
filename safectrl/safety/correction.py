r"""Action correction with a PICNN cost model: the same convex problem solved two ways.

For a state x (network units) and a reference action y_ref (the policy's action), both solvers return

    y* = argmin_y  f(x, y) + trust/2 ‖y − y_ref‖²    subject to  lo <= y <= hi,

where f is a :class:`~safectrl.safety.picnn.PICNN` (convex in y) and [lo, hi] the per-state action box
(input bounds intersected with a rate limit, say). Everything here is in network units: the caller maps
physical actions in and out (:class:`~safectrl.safety.filter.SafetyFilter` does).

* :class:`GradientCorrector` — projected gradient descent from y_ref (projected onto the box), batched
  over states, in NumPy on the network's float64 snapshot (the state's gates once, then the action path
  forward and back per gradient evaluation), with an adaptive step: a trial step is taken only if it does
  not increase the objective; on success the step grows, on failure it shrinks. A state stops when the attempted projected
  move is below ``tol`` in every coordinate, or after ``max_steps`` gradient evaluations. The objective is
  therefore never worse than at the start (the projected policy action).
* :class:`ExactCorrector` — the epigraph program of the network at fixed x: with A_i, B_i, c_i from
  :meth:`PICNN.export <safectrl.safety.picnn.PICNN.export>`,

      minimise   A_{k-1} z_{k-1} + B_{k-1} y + c_{k-1} + trust/2 ‖y − y_ref‖²
      subject to z_{i+1} >= A_i z_i + B_i y + c_i,  z_{i+1} >= s (A_i z_i + B_i y + c_i)   (i < k-1)
                 lo <= y <= hi

  (s the leaky slope; layer 0 has no A-term). Because A_i >= 0 and the activations are non-decreasing, any
  feasible z over-estimates the forward pass, so the optimum is min_y f(x, y) + trust term — exactly. The
  problem is built once in cvxpy with Parameters (DPP, checked) and re-solved per state: an LP (trust = 0,
  HiGHS's simplex) or a QP (trust > 0, DAQP's dual active set; Clarabel's interior point on request). For
  the sparse solvers (HiGHS, Clarabel) the program is written in a *gated* form. Only gate *vectors* depend
  on the state (:meth:`PICNN.gates <safectrl.safety.picnn.PICNN.gates>`), so the hidden z-terms are written
  ``A_i z_i = W_i^z s_i`` with ``s_i = gz_i ∘ z_i`` (an extra variable and equality per hidden layer): W_i^z is
  a constant and the state enters as a diagonal, not as a 64 x 64 parameter matrix. Exactness is unchanged
  (s_i is a definition), and the solver sees the sparsity of the clamped W^z instead of a dense parameter
  matrix. The y-terms are written the same way, ``B_i y = W_i^y (gy_i ∘ y)``, so per state only the gate
  entries of the constraint matrix change. c_i, the output row of A_{k-1}, lo, hi and y_ref remain
  Parameters (they enter costs and right-hand sides). DAQP works on dense data, where the gated form's extra
  variables only add work, so for DAQP A_i and B_i are parameter matrices.

  Per state the parameters go through cvxpy's compiled parameter-to-data map (kept as sparse matrices, see
  :class:`_ProgramData`) straight into one long-lived solver: HiGHS keeps its model and receives only the
  costs, bounds and coefficients that changed, so the simplex restarts from the previous optimal basis;
  DAQP's workspace is updated and starts from the previous working set, and its answer is checked against
  the KKT conditions; Clarabel is updated in place (no new symbolic factorisation). Gates and the cost at
  the answer are evaluated by a NumPy snapshot of the network (:class:`~safectrl.safety.picnn.PICNNArrays`).
  Other solvers, and a QP with HiGHS, go through ``Problem.solve`` with A_i and B_i as parameter matrices
  (HiGHS's QP solver reported the gated form "unbounded" on states with closed gates). HiGHS is not the
  QP default: it was no faster than Clarabel and less reliable. Every solve's status is checked. Solver
  choices and their timings: ``docs/decisions.md#exact-correction``.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import dataclass

import cvxpy as cp
import numpy as np
from scipy import sparse as sp

from safectrl.common import validation
from safectrl.safety.picnn import PICNN, Gates, PICNNArrays


# largest violation of the KKT conditions (network units) accepted from DAQP: its exact answers reach ~1e-12
KKT_TOL = 1e-8


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
        validation.positive("step", self.step)
        validation.positive_int("max_steps", self.max_steps)
        validation.positive("tol", self.tol)
        validation.real("grow", self.grow, low=1.0)
        validation.real("shrink", self.shrink, low=0.0, high=1.0, low_open=True, high_open=True)


@dataclass(frozen=True)
class Correction:
    """Corrected actions of a batch of states, network units."""

    action: np.ndarray  # (N, act_dim) the minimiser found
    cost: np.ndarray  # (N,) f(x, action), network output units
    objective: np.ndarray  # (N,) f + trust/2 ‖action − y_ref‖², as reported by the solver
    iterations: np.ndarray  # (N,) gradient evaluations (GD) or solver iterations (exact)
    path: np.ndarray | None = None  # (steps + 1, N, act_dim) GD iterates, if requested
    # (N,) seconds in the solver per state (exact): HiGHS's run time; Clarabel's update and solve
    solver_time: np.ndarray | None = None


def check_problem(x: np.ndarray, y_ref: np.ndarray, lo: np.ndarray, hi: np.ndarray, obs_dim: int,
                  act_dim: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Validate a batch of correction problems; returns float64 arrays of shapes (N, n_x), (N, n_y) x 3.

    Raises:
        ValueError: wrong shapes, non-finite numbers, or an empty box (lo > hi in some coordinate).
    """
    x = np.asarray(x, dtype=float)
    if x.ndim != 2 or x.shape[1] != obs_dim:
        raise ValueError(f"states must have shape (N, {obs_dim}), got {x.shape}")
    n = len(x)
    out = [x]
    for name, arr in (("y_ref", y_ref), ("lo", lo), ("hi", hi)):
        a = np.asarray(arr, dtype=float)
        if a.shape != (n, act_dim):
            raise ValueError(f"{name} must have shape ({n}, {act_dim}), got {a.shape}")
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
        self.arrays = PICNNArrays(self.net)
        self.trust = float(trust)
        self.config = config

    def _objective(self, gates: Gates, y: np.ndarray, y_ref: np.ndarray
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        f, grad = self.arrays.value_and_grad(gates, y)
        d = y - y_ref
        return f + 0.5 * self.trust * (d * d).sum(1), f, grad + self.trust * d

    def correct(self, x: np.ndarray, y_ref: np.ndarray, lo: np.ndarray, hi: np.ndarray,
                record_path: bool = False) -> Correction:
        """Correct a batch: ``x`` (N, obs_dim), ``y_ref``, ``lo``, ``hi`` (N, act_dim).

        In NumPy on the network's float64 snapshot: the state's gates once, then per gradient evaluation
        the action path forward and back (:meth:`PICNNArrays.value_and_grad`); 7.6-8.3x faster per
        decision than torch's autograd through the whole network (``benchmarks/safety.py``)."""
        cfg = self.config
        X, Yref, Lo, Hi = check_problem(x, y_ref, lo, hi, self.net.config.obs_dim, self.net.config.act_dim)
        gates = self.arrays.gates(X)
        y = np.minimum(np.maximum(Yref, Lo), Hi)
        obj, f, g = self._objective(gates, y, Yref)
        eta = np.full(len(y), cfg.step)
        active = np.ones(len(y), dtype=bool)
        evals = np.ones(len(y), dtype=np.int64)
        path = [y.copy()] if record_path else None
        for _ in range(cfg.max_steps - 1):
            trial = np.minimum(np.maximum(y - eta[:, None] * g, Lo), Hi)
            active &= np.abs(trial - y).max(1) > cfg.tol
            if not active.any():
                break
            t_obj, t_f, t_g = self._objective(gates, trial, Yref)
            evals += active
            accept = active & (t_obj <= obj)
            y = np.where(accept[:, None], trial, y)
            obj, f = np.where(accept, t_obj, obj), np.where(accept, t_f, f)
            g = np.where(accept[:, None], t_g, g)
            eta = np.where(accept, eta * cfg.grow, np.where(active, eta * cfg.shrink, eta))
            if path is not None:
                path.append(y.copy())
        return Correction(action=y, cost=f, objective=obj, iterations=evals,
                          path=None if path is None else np.stack(path))


class _ProgramData:
    """The solver data of a compiled DPP program as a function of its parameters: three sparse mat-vecs.

    ``Problem.get_problem_data`` compiles the program once into a map, linear in the vector of parameter
    values, from parameters to the data of ``minimise x'Px/2 + c'x + d  s.t.  b - A x in K``. cvxpy's own
    ``apply_parameters`` rebuilds scipy matrices on every call (a third of a whole LP re-solve); the map's
    matrices are taken from the compiled program once instead, with the sparsity
    pattern of A fixed, and checked against ``apply_parameters`` on random values.
    """

    def __init__(self, problem: cp.Problem, solver: str, params: dict[str, cp.Parameter], seed: int = 0) -> None:
        for p in params.values():  # compiling needs values; any will do, they are replaced per state
            p.value = np.zeros(p.shape)
        data, _, _ = problem.get_problem_data(solver)
        prog = data[cp.settings.PARAM_PROB]
        self.dims = data[cp.settings.DIMS]
        if self.dims.soc or self.dims.psd or self.dims.exp or self.dims.p3d or data.get("lower_bounds") is not None:
            raise RuntimeError(f"unexpected cones or variable bounds in the compiled program: {self.dims}")
        self.var_id_to_col = prog.var_id_to_col
        n = self.n = prog.x.size
        self.slots = [(name, prog.param_id_to_col[p.id], p.size) for name, p in params.items()]
        from cvxpy.lin_ops.lin_op import CONSTANT_ID

        self.vector = np.zeros(prog.total_param_size + 1)
        self.vector[prog.param_id_to_col[CONSTANT_ID]] = 1.0
        reduced = prog.reduced_A
        reduced.cache()
        indices, indptr, (self.m, _) = reduced.problem_data_index
        values = sp.csr_array(reduced.reduced_mat)
        self.A_indices, self.A_indptr = indices[: indptr[n]].astype(np.int32), indptr[: n + 1].astype(np.int32)
        self.A_map = -values[: indptr[n]]  # cvxpy's program is A x + b in K; the solvers' is b - A x in K
        self.b_rows, self.b_map = indices[indptr[n] :], values[indptr[n] :]
        self.q_map = sp.csr_array(prog.q)
        self.P = None
        if prog.P is not None:
            if sp.csc_array(prog.P)[:, :-1].nnz:
                raise RuntimeError("the quadratic term depends on parameters")
            self.P = sp.triu(prog.apply_parameters(quad_obj=True)[0], format="csc")
        rng = np.random.default_rng(seed)
        by_id = {p.id: rng.uniform(0.1, 1.0, p.shape) for p in params.values()}
        ref = prog.apply_parameters(by_id, keep_zeros=True, quad_obj=self.P is not None)[-4:]
        mine = self({name: by_id[p.id] for name, p in params.items()})
        for a, b in zip((ref[0], ref[1], -ref[2].toarray(), ref[3]), (mine[0], mine[1], mine[2].toarray(), mine[3])):
            if not np.allclose(a, b, rtol=1e-12, atol=1e-12):
                raise RuntimeError("the extracted parameter map disagrees with cvxpy's apply_parameters")

    def __call__(self, values: dict[str, np.ndarray]) -> tuple[np.ndarray, float, sp.csc_array, np.ndarray]:
        """(c, d, A, b) for the parameter ``values`` (by name); P is the constant :attr:`P`."""
        v = self.vector
        for name, col, size in self.slots:
            v[col : col + size] = np.ravel(values[name], order="F")
        q = self.q_map @ v
        b = np.zeros(self.m)
        b[self.b_rows] = self.b_map @ v
        A = sp.csc_array((self.A_map @ v, self.A_indices, self.A_indptr), shape=(self.m, self.n))
        return q[: self.n], float(q[self.n]), A, b


class _HiGHSLP:
    """One HiGHS instance re-solving LPs of a fixed structure: the model stays loaded, and per solve only the
    costs, row bounds and matrix entries that changed are passed, so the simplex restarts from the previous
    optimal basis with its LP data in place. (Passing a whole new model and the old basis cost about 1 ms
    more per solve: HiGHS rebuilds its simplex instance.) A solve that does not end optimal is repeated
    once from scratch (``clearSolver``), counted in :attr:`cold_retries`.

    Data in cvxpy's conic form: ``A x + s = b`` with s = 0 on the first ``n_eq`` rows and s >= 0 on the rest.
    """

    def __init__(self, options: dict) -> None:
        import highspy

        self._hp = highspy
        self.highs = highspy.Highs()
        self.highs.setOptionValue("output_flag", False)
        for name, value in options.items():
            if self.highs.setOptionValue(name, value) == highspy.HighsStatus.kError:
                raise ValueError(f"HiGHS rejected the option {name} = {value!r}")
        self._loaded: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None = None
        self.cold_retries = 0

    def _load(self, c: np.ndarray, A: sp.csc_array, b: np.ndarray, n_eq: int) -> None:
        hp = self._hp
        lp = hp.HighsLp()
        lp.num_col_, lp.num_row_ = A.shape[1], A.shape[0]
        lp.col_cost_ = c
        lp.col_lower_ = np.full(A.shape[1], -hp.kHighsInf)
        lp.col_upper_ = np.full(A.shape[1], hp.kHighsInf)
        lp.row_lower_ = np.concatenate([b[:n_eq], np.full(len(b) - n_eq, -hp.kHighsInf)])
        lp.row_upper_ = b
        lp.a_matrix_.format_ = hp.MatrixFormat.kColwise
        lp.a_matrix_.start_, lp.a_matrix_.index_, lp.a_matrix_.value_ = A.indptr, A.indices, A.data
        self.highs.passModel(lp)
        self._loaded = (A.indptr.copy(), A.indices.copy(), A.data.copy(), c.copy(), b.copy())
        self._columns = np.repeat(np.arange(A.shape[1], dtype=np.int32), np.diff(A.indptr))

    def _update(self, c: np.ndarray, A: sp.csc_array, b: np.ndarray, n_eq: int) -> None:
        _, _, data, cost, rhs = self._loaded
        h = self.highs
        changed = np.flatnonzero(c != cost)
        if len(changed):
            h.changeColsCost(len(changed), changed.astype(np.int32), c[changed])
        changed = np.flatnonzero(b != rhs)
        if len(changed):
            lower = np.full(len(changed), -self._hp.kHighsInf)
            eq = changed < n_eq
            lower[eq] = b[changed[eq]]
            h.changeRowsBounds(len(changed), changed.astype(np.int32), lower, b[changed])
        changed = np.flatnonzero(A.data != data)
        for row, col, value in zip(A.indices[changed].tolist(), self._columns[changed].tolist(),
                                   A.data[changed].tolist()):
            h.changeCoeff(row, col, value)
        data[changed], cost[:], rhs[:] = A.data[changed], c, b

    def solve(self, c: np.ndarray, A: sp.csc_array, b: np.ndarray, n_eq: int
              ) -> tuple[str, np.ndarray, float, int, float]:
        """Returns (status, x, objective without offset, simplex iterations, solver seconds)."""
        hp = self._hp
        same = (self._loaded is not None and np.array_equal(self._loaded[0], A.indptr)
                and np.array_equal(self._loaded[1], A.indices))
        if same:
            self._update(c, A, b, n_eq)
        else:
            self._load(c, A, b, n_eq)
        start = self.highs.getRunTime()  # cumulative over the runs of one instance
        self.highs.run()
        status = self.highs.getModelStatus()
        if status != hp.HighsModelStatus.kOptimal:
            self.cold_retries += 1
            self.highs.clearSolver()
            self.highs.run()
            status = self.highs.getModelStatus()
        seconds = self.highs.getRunTime() - start
        if status != hp.HighsModelStatus.kOptimal:
            self.highs.clearSolver()
            return self.highs.modelStatusToString(status), np.empty(0), np.nan, 0, seconds
        info = self.highs.getInfo()
        x = np.asarray(self.highs.getSolution().col_value)
        return "optimal", x, info.objective_function_value, info.simplex_iteration_count, seconds


class _Clarabel:
    """One Clarabel instance re-solving QPs of a fixed sparsity pattern through ``update`` (no re-setup).

    Data in cvxpy's conic form: ``A x + s = b``, s in {0}^n_eq × R_+^n_ineq, objective x'Px/2 + c'x.
    """

    def __init__(self, options: dict, n_eq: int, n_ineq: int) -> None:
        import clarabel

        self._clarabel = clarabel
        self.settings = self._settings(options)
        self.cones = [clarabel.ZeroConeT(n_eq), clarabel.NonnegativeConeT(n_ineq)]
        self.solver = None
        self.pattern: tuple[np.ndarray, np.ndarray] | None = None
        # a solve that fails without iterative refinement is repeated once with it (counted here)
        self._refined = None if self.settings.iterative_refinement_enable else self._settings(
            {**options, "iterative_refinement_enable": True})
        self.refined_retries = 0

    def _settings(self, options: dict):
        settings = self._clarabel.DefaultSettings()
        settings.verbose = False
        for name, value in options.items():
            if not hasattr(settings, name):
                raise ValueError(f"Clarabel has no setting {name!r}")
            setattr(settings, name, value)
        return settings

    def solve(self, P: sp.csc_array, c: np.ndarray, A: sp.csc_array, b: np.ndarray
              ) -> tuple[str, np.ndarray, float, int, float]:
        """Returns (status, x, objective without offset, interior-point iterations, solver seconds).

        Solver seconds are the wall time of the data update and the solve, measured here: a reused
        solver's own ``solve_time`` also counts its first setup again on every solve (0.4 ms here).
        """
        start = time.perf_counter()
        same = (self.solver is not None and self.solver.is_data_update_allowed()
                and np.array_equal(self.pattern[0], A.indptr) and np.array_equal(self.pattern[1], A.indices))
        if same:
            self.solver.update(P=P, q=c, A=A, b=b)
        else:
            self.solver = self._clarabel.DefaultSolver(P, c, A, b, self.cones, self.settings)
            self.pattern = (A.indptr.copy(), A.indices.copy())
        sol = self.solver.solve()
        if str(sol.status) != "Solved" and self._refined is not None:
            self.refined_retries += 1
            sol = self._clarabel.DefaultSolver(P, c, A, b, self.cones, self._refined).solve()
        seconds = time.perf_counter() - start
        status = str(sol.status)
        if status != "Solved":
            return status, np.empty(0), np.nan, 0, seconds
        return "optimal", np.asarray(sol.x), sol.obj_val, sol.iterations, seconds


class _DAQP:
    """One DAQP workspace re-solving QPs of a fixed size, warm-started from the previous active set.

    DAQP is a dual active-set method on dense data. Per solve the new costs, right-hand sides and constraint
    matrix go in through ``update``, which keeps the working set of the previous solve, so a state close to
    the last one needs a few active-set changes instead of a cold start's ~200. The Hessian is singular
    (only y is penalised), which DAQP handles by proximal-point outer iterations (``eps_prox`` > 0); run to
    ``eta_prox`` = 1e-12 they end on the exact optimum. Every answer is checked against the KKT conditions
    of the data it was given (:data:`KKT_TOL`), so a solve that DAQP calls optimal but is not fails loudly.
    A solve that fails warm is repeated once from scratch (a fresh workspace), counted in
    :attr:`cold_retries`; after a failure the next solve starts cold.

    Data in cvxpy's conic form: ``A x + s = b``, s in {0}^n_eq × R_+^n_ineq, objective x'Px/2 + c'x.
    """

    def __init__(self, options: dict, n_eq: int, n_ineq: int) -> None:
        import daqp

        self._daqp = daqp
        self.check_settings(options)
        self.settings = dict(options)
        self.n_eq = n_eq
        self.sense = np.zeros(n_eq + n_ineq, dtype=np.int32)
        self.sense[:n_eq] = 5  # DAQP's code for an equality row
        self.model = None
        self._hessian: tuple[sp.csc_array, np.ndarray, sp.csc_array] | None = None
        self.cold_retries = 0

    @staticmethod
    def check_settings(options: dict) -> None:
        """Raises ValueError on a name DAQP does not know: DAQP ignores unknown keys, so a typo would
        silently keep a default."""
        import daqp

        known = daqp.Model().settings
        for name in options:
            if name not in known:
                raise ValueError(f"DAQP has no setting {name!r}")

    def _full_hessian(self, P: sp.csc_array) -> tuple[np.ndarray, sp.csc_array]:
        """The symmetric Hessian (dense for DAQP, sparse for the KKT check) of cvxpy's upper triangle P."""
        if self._hessian is None or self._hessian[0] is not P:
            full = sp.csc_array(P + P.T - sp.diags_array(P.diagonal()))
            self._hessian = (P, full.toarray(), full)
        return self._hessian[1], self._hessian[2]

    def _run(self, H: np.ndarray, c: np.ndarray, A: np.ndarray, b: np.ndarray, lower: np.ndarray, warm: bool):
        if warm and self.model is not None:
            flag = self.model.update(f=c, A=A, bupper=b, blower=lower)  # keeps the previous working set
            if flag < 0:
                return flag, None, {"iterations": 0}
        else:
            self.model = self._daqp.Model()
            self.model.settings = self.settings
            flag, _ = self.model.setup(H, c, A, b, lower, self.sense)
            if flag < 0:
                return flag, None, {"iterations": 0}
        x, _, flag, info = self.model.solve()
        return flag, np.asarray(x), info

    def _kkt_error(self, H: sp.csc_array, c: np.ndarray, A: sp.csc_array, b: np.ndarray, x: np.ndarray,
                   lam: np.ndarray) -> float:
        """Largest violation of the KKT conditions of  min x'Hx/2 + c'x  s.t. (A x - b) in {0} × R_-."""
        n_eq = self.n_eq
        residual = A @ x - b
        return max(
            float(np.max(np.abs(H @ x + c + A.T @ lam), initial=0.0)),  # stationarity
            float(np.max(np.abs(residual[:n_eq]), initial=0.0)),  # equalities
            float(np.max(residual[n_eq:], initial=0.0)),  # inequalities
            float(np.max(-lam[n_eq:], initial=0.0)),  # dual sign
            float(np.max(np.abs(lam[n_eq:] * residual[n_eq:]), initial=0.0)),  # complementarity
        )

    def solve(self, P: sp.csc_array, c: np.ndarray, A: sp.csc_array, b: np.ndarray
              ) -> tuple[str, np.ndarray, float, int, float]:
        """Returns (status, x, objective without offset, active-set iterations, solver seconds).

        Solver seconds are the wall time of the data update, the solve and the KKT check, measured here.
        """
        start = time.perf_counter()
        H, H_sparse = self._full_hessian(P)
        dense = A.toarray()
        lower = np.concatenate([b[: self.n_eq], np.full(len(b) - self.n_eq, -np.inf)])
        iterations = 0
        status = "not run"
        for attempt, warm in enumerate((True, False) if self.model is not None else (False,)):
            self.cold_retries += attempt
            flag, x, info = self._run(H, c, dense, b, lower, warm)
            iterations += info["iterations"]
            if flag != 1:
                status = f"DAQP exit flag {flag}"
            else:
                error = self._kkt_error(H_sparse, c, A, b, x, np.asarray(info["lam"]))
                if error <= KKT_TOL:
                    objective = float(0.5 * x @ (H_sparse @ x) + c @ x)
                    return "optimal", x, objective, iterations, time.perf_counter() - start
                status = f"DAQP answer violates the KKT conditions by {error:.1e} (> {KKT_TOL:g})"
            self.model = None  # the working set that led here is not reused
        return status, np.empty(0), np.nan, iterations, time.perf_counter() - start


class ExactCorrector:
    """The exact LP/QP of the module docstring, built once in cvxpy and re-solved per state.

    Args:
        net: the cost network (copied as float64).
        trust: weight of ‖y − y_ref‖²/2; 0 gives an LP, > 0 a QP.
        solver: a cvxpy solver name; default HiGHS for the LP, DAQP for the QP (``"CLARABEL"`` selects
            Clarabel's interior point instead).
        solver_options: keyword options (settings) of that solver; defaults: for DAQP, proximal weight
            ``eps_prox`` 1e-3 (its Hessian is singular here), outer tolerance ``eta_prox`` 1e-12 and primal
            tolerance 1e-10, so that the proximal iterations end on the exact optimum; for Clarabel, gap and
            feasibility tolerances of 1e-10 (its defaults, 1e-8, leave errors of ~1e-6 in the optimal
            value) and no iterative refinement (a compiled solve that fails without it is repeated once
            with it).
    """

    def __init__(self, net: PICNN, trust: float = 0.0, solver: str | None = None,
                 solver_options: dict | None = None) -> None:
        if not trust >= 0:
            raise ValueError(f"trust must be >= 0, got {trust}")
        self.net = _frozen_float64(net)
        self.trust = float(trust)
        self.solver = solver or (cp.HIGHS if self.trust == 0 else cp.DAQP)
        if solver_options is None and self.solver == cp.DAQP:
            # DAQP's own default, a tiny automatic proximal weight with one outer iteration, stops ~1e-5
            # short of the optimum on these QPs (docs/decisions.md#exact-correction)
            solver_options = {"eps_prox": 1e-3, "eta_prox": 1e-12, "primal_tol": 1e-10}
        if solver_options is None and self.solver == cp.CLARABEL:
            # tight tolerances (the optimum is exact to ~1e-10); no iterative refinement of the KKT solves,
            # which cost time and changed no optimum (docs/decisions.md#exact-correction); a solve that
            # fails without it is repeated once with it
            solver_options = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10,
                              "iterative_refinement_enable": False}
        self.solver_options = dict(solver_options or {})
        self._arrays = PICNNArrays(self.net)
        self._weight_z, self._weight_y = self._arrays.weight_z, self._arrays.weight_y
        # the compiled re-solve for HiGHS (LP), DAQP and Clarabel; Problem.solve otherwise. The gated form
        # for the sparse solvers; DAQP works on dense data, where the gated form's extra variables and
        # equalities only add work (a re-solve took twice as long)
        self._compiled = (self.solver in (cp.DAQP, cp.CLARABEL)
                          or (self.solver == cp.HIGHS and self.trust == 0))
        self._gated = self._compiled and self.solver != cp.DAQP
        self.problem, self._params, self._y = self._build(gated=self._gated)
        self._check_program()
        if self.solver == cp.DAQP:  # before the fast path's fallback below, which would hide the error
            _DAQP.check_settings(self.solver_options)
        try:
            self._compile()
        except (RuntimeError, AttributeError, KeyError, IndexError, TypeError, ValueError) as err:
            # the fast path reads cvxpy's compiled program; if a cvxpy release changes it, stay correct
            # (and slower) through Problem.solve on the parameter-matrix form
            warnings.warn(f"exact correction: compiled re-solve unavailable ({err}); using Problem.solve",
                          RuntimeWarning, stacklevel=2)
            self._compiled, self._gated, self._backend = False, False, None
            self.problem, self._params, self._y = self._build(gated=False)
            self._check_program()

    def _check_program(self) -> None:
        if not self.problem.is_dpp():
            raise RuntimeError("the correction program is not DPP; it would be recompiled at every solve")
        if not self.problem.is_dcp():
            raise RuntimeError("the correction program is not convex (DCP)")

    def _build(self, gated: bool) -> tuple[cp.Problem, dict[str, cp.Parameter], cp.Variable]:
        cfg = self.net.config
        widths, m, slope = cfg.widths, cfg.act_dim, cfg.negative_slope
        k = len(widths)
        y = cp.Variable(m, name="y")
        params: dict[str, cp.Parameter] = {"lo": cp.Parameter(m, name="lo"), "hi": cp.Parameter(m, name="hi")}
        constraints = [y >= params["lo"], y <= params["hi"]]
        z = None
        for i, width in enumerate(widths):
            params[f"c{i}"] = cp.Parameter(width, name=f"c{i}")
            if gated:
                # B_i y = W_i^y (gy_i ∘ y): the state enters through two numbers, W_i^y is a constant
                params[f"gy{i}"] = cp.Parameter(m, name=f"gy{i}")
                gated_y = cp.Variable(m, name=f"gy{i}_y")
                constraints.append(gated_y == cp.multiply(params[f"gy{i}"], y))
                pre = self._weight_y[i] @ gated_y + params[f"c{i}"]
            else:
                params[f"B{i}"] = cp.Parameter((width, m), name=f"B{i}")
                pre = params[f"B{i}"] @ y + params[f"c{i}"]
            if 0 < i < k - 1 and not gated:
                params[f"A{i}"] = cp.Parameter((width, widths[i - 1]), nonneg=True, name=f"A{i}")
                pre = pre + params[f"A{i}"] @ z
            elif 0 < i < k - 1:
                # A_i z_i = W_i^z (gz_i ∘ z_i): the state enters through the gate vector only, the 64 x 64
                # weight is a constant (its zeros dropped), so no parameter matrix multiplies a variable
                params[f"gz{i}"] = cp.Parameter(widths[i - 1], nonneg=True, name=f"gz{i}")
                gated_z = cp.Variable(widths[i - 1], name=f"gz{i}_z{i}")
                constraints.append(gated_z == cp.multiply(params[f"gz{i}"], z))
                pre = pre + self._weight_z[i - 1] @ gated_z
            elif i > 0:
                params[f"a{i}"] = cp.Parameter(widths[i - 1], nonneg=True, name=f"a{i}")  # the one row of A_{k-1}
                pre = pre + params[f"a{i}"] @ z
            if i < k - 1:
                z = cp.Variable(width, name=f"z{i + 1}")
                constraints.append(z >= pre)
                constraints.append(z >= slope * pre if slope > 0 else z >= 0)
        objective = cp.sum(pre)
        if self.trust > 0:
            params["y_ref"] = cp.Parameter(m, name="y_ref")
            objective = objective + 0.5 * self.trust * cp.sum_squares(y - params["y_ref"])
        return cp.Problem(cp.Minimize(objective), constraints), params, y

    def _compile(self) -> None:
        """cvxpy's DPP compilation, done once: the map from parameter values to the solver's data.

        For HiGHS (LP), DAQP and Clarabel the solver is then called on that data directly, keeping one
        solver instance alive (HiGHS hot-started from the previous basis, DAQP from the previous working
        set, Clarabel updated in place); any other solver, or a QP with HiGHS, goes through
        ``Problem.solve`` each time. DAQP reads the conic data compiled for Clarabel (cvxpy's own DAQP
        interface compiles to its QP form, which the extracted map does not read).
        """
        self._backend: _HiGHSLP | _DAQP | _Clarabel | None = None
        if not self._compiled:
            return
        self._data = _ProgramData(self.problem, cp.CLARABEL if self.solver == cp.DAQP else self.solver,
                                  self._params)
        col = self._data.var_id_to_col[self._y.id]
        self._y_cols = slice(col, col + self._y.size)
        n_eq, n_ineq = self._data.dims.zero, self._data.dims.nonneg
        if self.solver == cp.HIGHS:
            self._backend = _HiGHSLP(self.solver_options)
        elif self.solver == cp.DAQP:
            self._backend = _DAQP(self.solver_options, n_eq, n_ineq)
        else:
            self._backend = _Clarabel(self.solver_options, n_eq, n_ineq)

    def _values(self, gates: Gates, k: int, y_ref: np.ndarray, lo: np.ndarray, hi: np.ndarray
                ) -> dict[str, np.ndarray]:
        """Parameter values for state ``k`` of the exported ``gates``."""
        values = {"lo": lo, "hi": hi}
        last = len(gates.c) - 1
        for i in range(len(gates.c)):
            if self._gated:
                values[f"gy{i}"] = gates.gy[i][k]
            else:
                values[f"B{i}"] = self._weight_y[i] * gates.gy[i][k]
            values[f"c{i}"] = gates.c[i][k]
            if 0 < i < last and self._gated:
                values[f"gz{i}"] = gates.gz[i][k]
            elif 0 < i < last:
                values[f"A{i}"] = self._weight_z[i - 1] * gates.gz[i][k]
            elif i > 0:
                values[f"a{i}"] = self._weight_z[i - 1][0] * gates.gz[i][k]
        if self.trust > 0:
            values["y_ref"] = y_ref
        return values

    def _solve_compiled(self, values: dict[str, np.ndarray]) -> tuple[str, np.ndarray, float, int, float]:
        c, d, A, b = self._data(values)
        if isinstance(self._backend, _HiGHSLP):
            status, x, obj, iters, seconds = self._backend.solve(c, A, b, self._data.dims.zero)
        else:
            P = self._data.P if self._data.P is not None else sp.csc_array((len(c), len(c)))
            status, x, obj, iters, seconds = self._backend.solve(P, c, A, b)
        return status, x[self._y_cols] if status == "optimal" else x, obj + d, iters, seconds

    def _solve_problem(self, values: dict[str, np.ndarray]) -> tuple[str, np.ndarray, float, int, float]:
        for name, v in values.items():
            self._params[name].value = v
        try:
            self.problem.solve(solver=self.solver, **self.solver_options)
        except cp.error.SolverError as err:
            return f"solver error ({err})", np.empty(0), np.nan, 0, 0.0
        stats = self.problem.solver_stats
        status = "optimal" if self.problem.status == cp.OPTIMAL else repr(self.problem.status)
        return status, self._y.value, self.problem.value, stats.num_iters or 0, stats.solve_time or 0.0

    def correct(self, x: np.ndarray, y_ref: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> Correction:
        """Correct a batch (one solve per state): ``x`` (N, obs_dim), ``y_ref``, ``lo``, ``hi`` (N, act_dim)."""
        x, y_ref, lo, hi = check_problem(x, y_ref, lo, hi, self.net.config.obs_dim, self.net.config.act_dim)
        gates = self._arrays.gates(x)
        n = len(x)
        action = np.empty_like(y_ref)
        objective = np.empty(n)
        iterations = np.empty(n, dtype=np.int64)
        solver_time = np.empty(n)
        solve = self._solve_problem if self._backend is None else self._solve_compiled
        for k in range(n):
            status, y, objective[k], iterations[k], solver_time[k] = solve(self._values(gates, k, y_ref[k], lo[k], hi[k]))
            if status != "optimal":
                raise CorrectionError(f"{self.solver} returned status {status} for state {k}")
            action[k] = np.clip(y, lo[k], hi[k])  # solver tolerance can leave y a hair outside
        cost = self._arrays.value(gates, action)
        return Correction(action=action, cost=cost, objective=objective, iterations=iterations,
                          solver_time=solver_time)
