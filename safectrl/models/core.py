"""The generic ODE model: named states and inputs, one right-hand side, one control-interval integrator.

A model is described by an :class:`ODEModel`: the names of its states and inputs, a frozen parameter
dataclass, a right-hand side ``rhs(x, u, p, m)`` written once against a :mod:`~safectrl.models.mathns`
namespace ``m``, the control interval ``dt`` and the nominal magnitude of every state. From these the class
builds, once and cached:

* ``rhs_function()`` — the CasADi ``Function`` of the right-hand side, ``(x, u, p) -> xdot``;
* ``interval_function()`` — a CasADi ``Function`` advancing the state over one interval with the inputs
  held (zero-order hold), ``(x0, u, p) -> xf``, by a fixed number of L-stable Rosenbrock (RODAS4) substeps.
  Being a plain SX expression it can be compiled to C, mapped over many reactors, or embedded in an NLP;
* ``step(x, u, params)`` and ``step_batch(x, u, p)`` — the same function evaluated as compiled C when a C
  compiler is present (see :mod:`safectrl.models.compiled`), one reactor or N reactors per call; a model
  with ``coarse_substeps`` first tries fewer substeps and keeps them where the error estimate allows (the
  choice made in the compiled code: ``rung_function``).
* ``dae(algebraic)`` — the same model with some states made algebraic, ``0 = (their rhs rows)``: a
  :class:`DAEModel`, integrated over one interval by IDAS or by CasADi's collocation integrator.

Why RODAS4 with fixed substeps: the models are stiff, and an L-stable Rosenbrock method has a fixed cost
(one factorisation per substep, no Newton iterations) and is a plain SX expression, which an adaptive
integrator such as CVODES is not. An interval whose embedded error estimate exceeds ``err_tol`` (a runaway,
a violent transient) is recomputed by CVODES, so accuracy holds outside the operating region as well.
Accuracy and cost: ``docs/decisions.md#integrator``.

Rosenbrock form used (Hairer & Wanner, *Solving ODEs II*, 1996, sec. IV.7; coefficients of RODAS4 in the
"K" formulation of Sandu et al., Atmos. Environ. 31, 1997)::

    G = I / (h gamma) - J(y0)
    G K_i = f(y0 + sum_j a_ij K_j) + sum_j (c_ij / h) K_j        i = 1..6
    y1 = y0 + sum_j m_j K_j

States are integrated in scaled form ``z = x / x_scale`` so that the factorisation of G sees entries of
comparable size; Rosenbrock methods are invariant under this linear change of variables.
"""

from __future__ import annotations

import dataclasses
from types import SimpleNamespace
from typing import Any, Callable, Sequence

import casadi as ca
import numpy as np

from safectrl.models import compiled
from safectrl.models.mathns import CASADI, NUMPY

# RODAS4, six stages, order 4, L-stable and stiffly accurate. a_ij and c_ij strictly lower triangular,
# stored row-wise: (2,1), (3,1), (3,2), (4,1), ...
_RODAS4_GAMMA = 0.25
_RODAS4_A = (
    1.544,
    0.9466785280815826, 0.2557011698983284,
    3.314825187068521, 2.896124015972201, 0.9986419139977817,
    1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950,
    1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950, 1.0,
)  # fmt: skip
_RODAS4_C = (
    -5.6688,
    -2.430093356833875, -0.2063599157091915,
    -0.1073529058151375, -9.594562251023355, -20.47028614809616,
    7.496443313967647, -10.24680431464352, -33.99990352819905, 11.70890893206160,
    8.083246795921522, -7.981132988064893, -31.52159432874371, 16.31930543123136, -6.058818238834054,
)  # fmt: skip
_RODAS4_M = (1.221224509226641, 6.019134481288629, 12.53708332932087, -0.6878860361058950, 1.0, 1.0)
_RODAS4_STAGES = 6
_NO_ROWS = np.zeros(0, dtype=np.intp)
_NO_ROWS.flags.writeable = False


def any_true(b: np.ndarray) -> bool:
    """``b.any()``, a microsecond faster on the few entries of one plant, where NumPy's reduction costs more
    than the work: below 16 entries, a plain loop over them."""
    return any(b.flat) if b.size < 16 else bool(b.any())


def all_true(b: np.ndarray) -> bool:
    """``b.all()``, as :func:`any_true`."""
    return all(b.flat) if b.size < 16 else bool(b.all())


def _lower(coeffs: Sequence[float], i: int, j: int) -> float:
    """Entry (i, j), i > j >= 0, of a strictly lower-triangular tableau stored row-wise."""
    return coeffs[i * (i - 1) // 2 + j]


def _factorise(G: ca.SX, pivoting: bool) -> Callable[[ca.SX], ca.SX]:
    """Symbolic factorisation of a small square SX matrix; returns ``b -> G^{-1} b``.

    Without pivoting this is Gaussian elimination that skips structural zeros (cheap for the sparse
    Jacobians of reactor models; stable because G = I/(h gamma) - J is diagonally dominant in scaled
    states for these models). With ``pivoting`` it is a Householder QR, stable for any nonsingular G.
    """
    n = G.shape[0]
    if pivoting:
        Q, R = ca.qr(G)

        def solve_qr(b: ca.SX) -> ca.SX:
            rhs = ca.mtimes(Q.T, b)
            x = [None] * n
            for i in reversed(range(n)):
                s = rhs[i]
                for j in range(i + 1, n):
                    s = s - R[i, j] * x[j]
                x[i] = s / R[i, i]
            return ca.vertcat(*x)

        return solve_qr

    U = [[G[i, j] for j in range(n)] for i in range(n)]
    L = [[None] * n for _ in range(n)]
    for k in range(n):
        for i in range(k + 1, n):
            if U[i][k].is_zero():
                continue
            L[i][k] = U[i][k] / U[k][k]
            for j in range(k + 1, n):
                if not U[k][j].is_zero():
                    U[i][j] = U[i][j] - L[i][k] * U[k][j]

    def solve_lu(b: ca.SX) -> ca.SX:
        y = [b[i] for i in range(n)]
        for i in range(n):
            for k in range(i):
                if L[i][k] is not None:
                    y[i] = y[i] - L[i][k] * y[k]
        x = [None] * n
        for i in reversed(range(n)):
            s = y[i]
            for j in range(i + 1, n):
                if not U[i][j].is_zero():
                    s = s - U[i][j] * x[j]
            x[i] = s / U[i][i]
        return ca.vertcat(*x)

    return solve_lu


def rodas4_interval(
    fun: ca.Function, z0: ca.SX, q: ca.SX, h_total: float, substeps: int, pivoting: bool = False
) -> tuple[ca.SX, ca.SX]:
    """Advance ``z' = fun(z, q)`` from ``z0`` over ``h_total`` by ``substeps`` fixed RODAS4 steps.

    ``q`` holds what is constant over the interval (inputs, parameters). Returns the end state and the
    largest local-error estimate over the substeps, ``max |K_6| / (1 + |z|)`` in scaled units (RODAS4's
    embedded third-order solution differs from the fourth-order one by K_6).
    """
    h = h_total / substeps
    n = z0.shape[0]
    z_sym = ca.SX.sym("z", n)
    q_sym = ca.SX.sym("q", q.shape[0])
    jac = ca.Function("rodas4_jacobian", [z_sym, q_sym], [ca.jacobian(fun(z_sym, q_sym), z_sym)])
    z = z0
    err = ca.SX(0)
    for _ in range(substeps):
        solve = _factorise(ca.SX.eye(n) / (h * _RODAS4_GAMMA) - jac(z, q), pivoting)
        K: list[ca.SX] = []
        for i in range(_RODAS4_STAGES):
            z_stage = z
            rhs = ca.SX.zeros(n)
            for j in range(i):
                z_stage = z_stage + _lower(_RODAS4_A, i, j) * K[j]
                rhs = rhs + (_lower(_RODAS4_C, i, j) / h) * K[j]
            K.append(solve(fun(z_stage, q) + rhs))
        z_next = z + sum(m * k for m, k in zip(_RODAS4_M, K))
        err = ca.fmax(err, ca.mmax(ca.fabs(K[-1]) / (1 + ca.fmax(ca.fabs(z), ca.fabs(z_next)))))
        z = z_next
    return z, err


def euler_interval(fun: ca.Function, z0: ca.SX, q: ca.SX, h_total: float, substeps: int) -> ca.SX:
    """Advance ``z' = fun(z, q)`` from ``z0`` over ``h_total`` by ``substeps`` explicit Euler steps."""
    h = h_total / substeps
    z = z0
    for _ in range(substeps):
        z = z + h * fun(z, q)
    return z


class ODEModel:
    """A model ``dx/dt = rhs(x, u, p)`` with named states and inputs and a zero-order-hold interval.

    Args:
        name: short identifier, used in CasADi Function names.
        states: state names, in vector order.
        inputs: input names, in vector order.
        params_type: the frozen parameter dataclass; its fields, in order, form the parameter vector.
        rhs: ``rhs(x, u, p, m)`` (or ``rhs(x, u, p, m, t)`` if ``time_varying``) returning one derivative
            per state; ``x``, ``u`` are sequences of scalars, ``p`` has the parameter fields as attributes,
            ``m`` is a :class:`~safectrl.models.mathns.MathNamespace`.
        dt: control interval, in the model's time unit.
        x_scale: nominal magnitude of every state (used to scale the integration), shape (nx,).
        u_low, u_high: input bounds, shape (nu,).
        substeps: RODAS4 substeps per interval.
        time_varying: if True, ``rhs`` takes the time ``t`` and the interval function takes ``t0``.
        pivoting: factorise with QR instead of unpivoted elimination (see :func:`_factorise`).
        integrator: ``"rodas4"`` (default) or ``"euler"``: ``substeps`` explicit Euler steps per interval, for
            a model whose plant is *defined* by that discretisation (e.g. Gymnasium's CartPole); its error
            estimate is 0, so CVODES never takes over.
        err_tol: largest accepted RODAS4 error estimate per interval (scaled units) before CVODES takes over.
        coarse_substeps: if > 0, simulation (:meth:`step`, :meth:`step_batch`, ``Task.transition``) first
            takes an interval in this many substeps and keeps it when its error estimate is at most
            ``coarse_tol``; otherwise it retakes the interval in ``substeps`` (counted in :attr:`refined`).
            :meth:`interval_function`, which NLPs and estimators embed, is always the ``substeps`` one.
        coarse_tol: largest accepted error estimate of the coarse interval (scaled units).

    ``coarse_substeps`` is read at every call: set it to 0 to simulate with ``substeps`` alone (the
    benchmarks compare both in one process).
    """

    def __init__(
        self,
        *,
        name: str,
        states: tuple[str, ...],
        inputs: tuple[str, ...],
        params_type: type,
        rhs: Callable[..., Sequence[Any]],
        dt: float,
        x_scale: Sequence[float],
        u_low: Sequence[float],
        u_high: Sequence[float],
        substeps: int,
        time_varying: bool = False,
        pivoting: bool = False,
        integrator: str = "rodas4",
        err_tol: float = 1e-4,
        coarse_substeps: int = 0,
        coarse_tol: float = 3e-6,
    ) -> None:
        self.name = name
        self.states = tuple(states)
        self.inputs = tuple(inputs)
        self.params_type = params_type
        self.param_names = tuple(f.name for f in dataclasses.fields(params_type))
        self.rhs = rhs
        self.dt = float(dt)
        self.x_scale = np.asarray(x_scale, dtype=float)
        self.u_low = np.asarray(u_low, dtype=float)
        self.u_high = np.asarray(u_high, dtype=float)
        self.substeps = int(substeps)
        self.time_varying = bool(time_varying)
        self.pivoting = bool(pivoting)
        if integrator not in ("rodas4", "euler"):
            raise ValueError(f"integrator must be 'rodas4' or 'euler', got {integrator!r}")
        self.integrator = integrator
        if self.x_scale.shape != (self.nx,) or np.any(self.x_scale <= 0):
            raise ValueError(f"x_scale must be {self.nx} positive numbers, got {x_scale!r}")
        self._rhs_fn: ca.Function | None = None
        if not 0 <= int(coarse_substeps) < self.substeps or (coarse_substeps and integrator != "rodas4"):
            raise ValueError(f"coarse_substeps must be 0 (off) or a RODAS4 step count below substeps = "
                             f"{self.substeps}, got {coarse_substeps!r}")
        self.coarse_substeps = int(coarse_substeps)
        #: Largest accepted error estimate of a coarse interval; above it the interval is retaken finely.
        self.coarse_tol = float(coarse_tol)
        self._interval_fns: dict[int, ca.Function] = {}
        self._adaptive_fn: ca.Function | None = None
        self._rows: dict[tuple, compiled.Rows] = {}  # by _rung_key
        self._dae: dict[tuple[str, ...], DAEModel] = {}
        #: Largest accepted RODAS4 error estimate per interval; above it CVODES recomputes the interval.
        self.err_tol = float(err_tol)
        #: Intervals recomputed by CVODES since construction (visible, never silent).
        self.fallbacks = 0
        #: Intervals simulated, and of those retaken in ``substeps`` because the coarse one was not accurate.
        self.intervals = 0
        self.refined = 0

    @property
    def nx(self) -> int:
        return len(self.states)

    @property
    def nu(self) -> int:
        return len(self.inputs)

    @property
    def n_params(self) -> int:
        return len(self.param_names)

    # -- parameters ---------------------------------------------------------------------------------

    def param_vector(self, params: Any) -> np.ndarray:
        """The parameter dataclass as a float vector, fields in declaration order, shape (n_params,)."""
        if not isinstance(params, self.params_type):
            raise TypeError(f"expected {self.params_type.__name__}, got {type(params).__name__}")
        return np.array([float(getattr(params, n)) for n in self.param_names])

    def _params_namespace(self, values: Sequence[Any]) -> SimpleNamespace:
        return SimpleNamespace(**dict(zip(self.param_names, values)))

    # -- the right-hand side, in each backend -------------------------------------------------------

    def _call_rhs(self, x, u, p, m, t):
        args = (x, u, p, m, t) if self.time_varying else (x, u, p, m)
        out = self.rhs(*args)
        if len(out) != self.nx:
            raise ValueError(f"{self.name} rhs returned {len(out)} derivatives for {self.nx} states")
        return out

    def rhs_numpy(self, x: np.ndarray, u: np.ndarray, params: Any, t: float = 0.0) -> np.ndarray:
        """Right-hand side in NumPy; ``x`` (..., nx) and ``u`` (..., nu) broadcast over leading axes."""
        x = np.asarray(x, dtype=float)
        u = np.asarray(u, dtype=float)
        p = params if not isinstance(params, np.ndarray) else self._params_namespace(params)
        out = self._call_rhs(
            [x[..., i] for i in range(self.nx)], [u[..., i] for i in range(self.nu)], p, NUMPY, t
        )
        return np.stack(np.broadcast_arrays(*out), axis=-1)

    def rhs_function(self) -> ca.Function:
        """CasADi Function ``rhs(x[nx], u[nu], p[n_params](, t)) -> xdot[nx]``, built once."""
        if self._rhs_fn is None:
            x = ca.SX.sym("x", self.nx)
            u = ca.SX.sym("u", self.nu)
            p = ca.SX.sym("p", self.n_params)
            t = ca.SX.sym("t")
            xdot = ca.vertcat(
                *self._call_rhs(ca.vertsplit(x), ca.vertsplit(u), self._params_namespace(ca.vertsplit(p)),
                                CASADI, t)
            )
            ins, names = [x, u, p], ["x", "u", "p"]
            if self.time_varying:
                ins, names = ins + [t], names + ["t"]
            self._rhs_fn = ca.Function(f"{self.name}_rhs", ins, [xdot], names, ["xdot"])
        return self._rhs_fn

    # -- one control interval ----------------------------------------------------------------------

    def interval_function(self, substeps: int | None = None) -> ca.Function:
        """CasADi Function ``F(x0, u, p(, t0)) -> (xf, err)``: one interval ``dt`` with ``u`` held, built once.

        An SX graph of ``substeps`` fixed RODAS4 steps (default: the model's), so it can be compiled,
        mapped, or embedded in an NLP; ``err`` is the largest local error estimate over the substeps
        (scaled units).
        """
        substeps = self.substeps if substeps is None else int(substeps)
        if substeps < 1:
            raise ValueError(f"substeps must be >= 1, got {substeps}")
        fn = self._interval_fns.get(substeps)
        if fn is None:
            rhs = self.rhs_function()
            x0 = ca.SX.sym("x0", self.nx)
            u = ca.SX.sym("u", self.nu)
            p = ca.SX.sym("p", self.n_params)
            t0 = ca.SX.sym("t0")
            s = ca.DM(self.x_scale)
            q = ca.vertcat(u, p)
            qs = ca.SX.sym("q", q.shape[0])
            us, ps = qs[: self.nu], qs[self.nu :]
            if self.time_varying:
                # Time becomes an extra state with unit rate, so the Jacobian carries df/dt.
                z = ca.SX.sym("z", self.nx + 1)
                zdot = ca.vertcat(rhs(z[: self.nx] * s, us, ps, z[self.nx]) / s, 1.0)
                z0 = ca.vertcat(x0 / s, t0)
            else:
                z = ca.SX.sym("z", self.nx)
                zdot = rhs(z * s, us, ps) / s
                z0 = x0 / s
            fun = ca.Function(f"{self.name}_scaled_rhs", [z, qs], [zdot])
            if self.integrator == "euler":
                zf, err = euler_interval(fun, z0, q, self.dt, substeps), ca.SX(0)
            else:
                zf, err = rodas4_interval(fun, z0, q, self.dt, substeps, self.pivoting)
            ins, names = [x0, u, p], ["x0", "u", "p"]
            if self.time_varying:
                ins, names = ins + [t0], names + ["t0"]
            # The fine interval keeps its historical name (compiled libraries are cached by it).
            fname = f"{self.name}_interval" if substeps == self.substeps else f"{self.name}_interval{substeps}"
            fn = self._interval_fns[substeps] = ca.Function(
                fname, ins, [zf[: self.nx] * s, err], names, ["xf", "err"]
            )
        return fn

    def coarse_interval_function(self) -> ca.Function | None:
        """The same interval in ``coarse_substeps`` RODAS4 steps (None without a coarse rung)."""
        return self.interval_function(self.coarse_substeps) if self.coarse_substeps else None

    def rung_function(self, fine: ca.Function, coarse: ca.Function | None, name: str) -> ca.Function:
        """What simulation evaluates, from interval Functions whose first two outputs are ``(xf, err)``
        (:meth:`interval_function` or a transition built on it): ``fine``'s inputs and outputs, then two
        flags per row, ``refined`` and ``unsettled`` (0 or 1).

        With a ``coarse`` rung the interval is taken coarsely and kept where its estimate is at most
        :attr:`coarse_tol`; elsewhere (a NaN estimate included) ``fine`` retakes it and ``refined`` is 1.
        The choice is a CasADi Switch, so in the compiled code ``fine`` runs only on the rows that need it:
        a batch needs no gather and scatter, and one plant one C call. ``unsettled`` is 1 where the kept
        estimate exceeds :attr:`err_tol` (NaN included) or the end state is not finite: the only rows for
        which the callers look further (:meth:`recompute_inaccurate`, the non-finite treatment). The
        tolerances are baked in; callers cache by :meth:`_rung_key`.
        """
        ins = [ca.MX.sym(fine.name_in(i), fine.sparsity_in(i)) for i in range(fine.n_in())]
        refined: ca.MX | float = 0.0
        if coarse is None:
            outs = fine.call(ins)
        else:
            first = coarse.call(ins)
            kept = [ca.MX.sym(f"coarse_{fine.name_out(i)}", o.sparsity()) for i, o in enumerate(first)]
            keep = ca.Function(f"{name}_keep", ins + kept, kept)
            retake = ca.Function(f"{name}_retake", ins + kept, fine.call(ins))
            switch = ca.Function.if_else(f"{name}_switch", keep, retake)
            accurate = first[1] <= self.coarse_tol
            outs = switch.call([accurate] + ins + first)
            refined = 1 - accurate
        xf, err = outs[0], outs[1]
        settled = ca.fmin(ca.mmin(ca.fabs(xf) < ca.inf), err <= self.err_tol)  # NaN compares false
        return ca.Function(name, ins, [*outs, refined, 1 - settled], fine.name_in(),
                           [*fine.name_out(), "refined", "unsettled"])

    def _rung_key(self) -> tuple[int, float, float]:
        """What a :meth:`rung_function` depends on besides its Functions (read at every call)."""
        return self.coarse_substeps, self.coarse_tol, self.err_tol

    def simulate_rows(self, rows: compiled.Rows, *args: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
        """Evaluate a compiled :meth:`rung_function` on rows of ``args``, counting the intervals and those
        retaken (:attr:`intervals`, :attr:`refined`). Returns its outputs without the two flags, (n, nnz_out)
        each, and the indices of the unsettled rows. CVODES is not involved here (see
        :meth:`recompute_inaccurate`)."""
        *out, refined, unsettled = rows(*args)
        self.intervals += len(args[0])
        if any_true(refined):
            self.refined += int(np.count_nonzero(refined))
        if any_true(unsettled):
            return out, np.flatnonzero(unsettled[:, 0])
        return out, _NO_ROWS

    def _interval_rows(self) -> compiled.Rows:
        """The model's interval as simulation takes it (:meth:`rung_function` of the two rungs), compiled."""
        key = self._rung_key()
        rows = self._rows.get(key)
        if rows is None:
            k = self.coarse_substeps
            fn = self.rung_function(self.interval_function(), self.coarse_interval_function(),
                                    f"{self.name}_simulate{k}")
            rows = self._rows[key] = compiled.Rows(fn)
        return rows

    def adaptive_interval_function(self) -> ca.Function:
        """CVODES (BDF, rtol 1e-9) over one interval, same signature as :meth:`interval_function`.

        The reference for tests, and the fallback for the rare intervals whose RODAS4 error estimate is
        too large (a runaway, a violent input change).
        """
        if self._adaptive_fn is None:
            rhs = self.rhs_function()
            s = ca.DM(self.x_scale)
            z = ca.MX.sym("z", self.nx)
            u = ca.MX.sym("u", self.nu)
            p = ca.MX.sym("p", self.n_params)
            t0 = ca.MX.sym("t0")
            tau = ca.MX.sym("tau")
            args = [z * s, u, p] + ([t0 + tau] if self.time_varying else [])
            dae = {"x": z, "p": ca.vertcat(u, p, t0), "t": tau, "ode": rhs(*args) / s}
            opts = {"reltol": 1e-9, "abstol": 1e-11, "max_num_steps": 100000}
            cvodes = ca.integrator(f"{self.name}_cvodes", "cvodes", dae, 0.0, self.dt, opts)
            x0 = ca.MX.sym("x0", self.nx)
            xf = cvodes(x0=x0 / s, p=ca.vertcat(u, p, t0))["xf"] * s
            self._adaptive_fn = ca.Function(
                f"{self.name}_adaptive_interval", [x0, u, p, t0], [xf], ["x0", "u", "p", "t0"], ["xf"]
            )
        return self._adaptive_fn

    def _adaptive_step(self, x: np.ndarray, u: np.ndarray, p: np.ndarray, t0: float) -> np.ndarray:
        try:
            return np.asarray(self.adaptive_interval_function()(x, u, p, t0)).ravel()
        except RuntimeError:  # CVODES gave up: the state left any physical range
            return np.full(self.nx, np.nan)

    def step_batch(
        self, x: np.ndarray, u: np.ndarray, p: np.ndarray, t0: np.ndarray | float = 0.0
    ) -> np.ndarray:
        """Advance N reactors by one interval in one call.

        With a coarse rung (``coarse_substeps``), every interval is first taken coarsely and retaken in
        ``substeps`` where its error estimate exceeds :attr:`coarse_tol` (counted in :attr:`refined`).
        Reactors whose ``substeps`` estimate exceeds :attr:`err_tol` are recomputed by CVODES (counted in
        :attr:`fallbacks`), so the result is accurate also far from the operating region. A reactor's
        result does not depend on the others in the batch.

        Args:
            x: states, shape (N, nx), physical units.
            u: inputs held over the interval, shape (N, nu).
            p: parameter vectors, shape (N, n_params) or (n_params,) for all alike.
            t0: interval start times (time-varying models only), shape (N,) or scalar.

        Returns:
            States at the end of the interval, shape (N, nx). NaN where even CVODES failed.
        """
        x, u, p, t0 = self.batch_args(x, u, p, t0)
        args = (x, u, p) + ((t0[:, None],) if self.time_varying else ())
        (xf, err), unsettled = self.simulate_rows(self._interval_rows(), *args)
        if len(unsettled):
            self.recompute_inaccurate(xf, err, x, u, p, t0)
        return xf

    def batch_args(self, x, u, p, t0) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``step_batch``'s arguments as float arrays (N, nx), (N, nu), (N, n_params), (N,)."""
        x = np.asarray(x, dtype=float)
        if x.ndim == 1:
            x = x[None, :]
        n = x.shape[0]
        if n == 1:  # the env's case: reshape instead of broadcast_to, a few microseconds a call
            u = np.asarray(u, dtype=float).reshape(1, self.nu)
            p = np.asarray(p, dtype=float).reshape(1, self.n_params)
            return x, u, p, np.asarray(t0, dtype=float).reshape(1)
        u = np.broadcast_to(np.asarray(u, dtype=float), (n, self.nu))
        p = np.broadcast_to(np.asarray(p, dtype=float), (n, self.n_params))
        return x, u, p, np.broadcast_to(np.asarray(t0, dtype=float), (n,))

    def recompute_inaccurate(self, xf: np.ndarray, err: Any, x: np.ndarray, u: np.ndarray, p: np.ndarray,
                             t0: np.ndarray) -> np.ndarray:
        """Recompute by CVODES, in place, the rows of ``xf`` whose RODAS4 error estimate ``err`` exceeds
        :attr:`err_tol` (NaN counts as too large); counted in :attr:`fallbacks`. Returns their indices."""
        err = np.asarray(err).ravel()
        if all_true(err <= self.err_tol):  # every row accurate (a NaN compares False and takes the long way)
            return _NO_ROWS
        redo = np.flatnonzero(~(err <= self.err_tol))
        for k in redo:
            xf[k] = self._adaptive_step(x[k], u[k], p[k], t0[k])
        self.fallbacks += len(redo)
        return redo

    def step(self, x: np.ndarray, u: np.ndarray, params: Any, t0: float = 0.0) -> np.ndarray:
        """Advance one reactor by one interval; ``params`` is the dataclass or its vector. Shape (nx,)."""
        p = params if isinstance(params, np.ndarray) else self.param_vector(params)
        return self.step_batch(np.asarray(x, dtype=float)[None, :], u, p, t0)[0]

    # -- the same model with some states algebraic ----------------------------------------------------

    def dae(self, algebraic: Sequence[str]) -> DAEModel:
        """This model with the states named in ``algebraic`` made algebraic (their rhs rows set to 0).

        Built once per tuple of names; see :class:`DAEModel`.
        """
        key = tuple(algebraic) if not isinstance(algebraic, str) else (algebraic,)
        dae = self._dae.get(key)
        if dae is None:
            dae = DAEModel(self, key)
            self._dae[key] = dae
        return dae


#: Integrators of :meth:`DAEModel.interval_function`.
DAE_METHODS = ("idas", "collocation")


class DAEModel:
    """An :class:`ODEModel` with some states made algebraic: a semi-explicit DAE from the same rhs.

    With ``x`` the differential and ``z`` the algebraic states (each in the model's state order)::

        dx/dt = rhs_x(x, z, u, p)        the rhs rows of the differential states
        0     = rhs_z(x, z, u, p)        the rhs rows of the algebraic states

    which is the quasi-steady-state reduction of the fast states named in ``algebraic``; it is index 1
    wherever d rhs_z / dz is nonsingular. No equation is written here: both parts are rows of the model's
    one :meth:`ODEModel.rhs_function`. A reduction, not another integrator of the same model: the
    differential states differ from the ODE's by the effect of the fast states' lag, small only where
    those relax fast against the interval (the reactor: ``docs/decisions.md#reactor-dae``).

    The interval function keeps the ODE's signature, full state in and out, so the two forms are
    interchangeable: the algebraic entries of ``x0`` are only the initial guess of the Newton iteration
    that makes the algebraic states consistent with the differential ones, and those of ``xf`` are the
    consistent values at the interval end. They differ from the ODE's values there (the ODE's fast states
    lag their quasi-steady state); compare the two forms on the differential states.

    Args:
        model: the ODE model whose rhs is used.
        algebraic: names of the states made algebraic, at least one, not all.
        reltol, abstol: IDAS tolerances, on states scaled by ``model.x_scale``.
        collocation_elements: finite elements per interval of the collocation integrator.
        collocation_degree: Radau points per finite element of the collocation integrator.

    Raises:
        ValueError: if a name is not a state of ``model``, is repeated, or no differential state is left.
    """

    def __init__(
        self,
        model: ODEModel,
        algebraic: Sequence[str],
        *,
        reltol: float = 1e-8,
        abstol: float = 1e-10,
        collocation_elements: int = 2,
        collocation_degree: int = 3,
    ) -> None:
        algebraic = (algebraic,) if isinstance(algebraic, str) else tuple(algebraic)
        unknown = [a for a in algebraic if a not in model.states]
        if unknown:
            raise ValueError(
                f"{model.name}: algebraic states {unknown!r} are not states of the model; "
                f"its states are {', '.join(model.states)}"
            )
        if not algebraic or len(set(algebraic)) != len(algebraic) or len(algebraic) == model.nx:
            raise ValueError(
                f"{model.name}: algebraic must name distinct states, at least one and not all "
                f"({model.nx}), got {algebraic!r}"
            )
        if collocation_elements < 1 or collocation_degree < 1:
            raise ValueError(
                f"collocation_elements and collocation_degree must be >= 1, got "
                f"{collocation_elements} and {collocation_degree}"
            )
        self.model = model
        self.name = f"{model.name}_dae"
        # In the model's state order, whatever the order of ``algebraic``.
        self.algebraic = tuple(s for s in model.states if s in algebraic)
        self.differential = tuple(s for s in model.states if s not in algebraic)
        self.alg_index = np.array([model.states.index(s) for s in self.algebraic])
        self.diff_index = np.array([model.states.index(s) for s in self.differential])
        self.reltol = float(reltol)
        self.abstol = float(abstol)
        self.collocation_elements = int(collocation_elements)
        self.collocation_degree = int(collocation_degree)
        self._dae_fn: ca.Function | None = None
        self._consistent_fn: ca.Function | None = None
        self._interval_fns: dict[str, ca.Function] = {}

    @property
    def nx(self) -> int:
        """Number of differential states."""
        return len(self.differential)

    @property
    def nz(self) -> int:
        """Number of algebraic states."""
        return len(self.algebraic)

    def _merge(self, x: Any, z: Any) -> list:
        """The full state, model order, from the differential and algebraic entries (lists of scalars)."""
        full = [None] * self.model.nx
        for k, i in enumerate(self.diff_index):
            full[i] = x[k]
        for k, i in enumerate(self.alg_index):
            full[i] = z[k]
        return full

    def _time_args(self, t: Any) -> list:
        return [t] if self.model.time_varying else []

    def dae_function(self) -> ca.Function:
        """CasADi Function ``dae(x[nx], z[nz], u, p(, t)) -> (ode[nx], alg[nz])``, physical units, built once.

        ``ode`` are the rhs rows of the differential states, ``alg`` those of the algebraic ones (the
        algebraic residual, in the unit of the algebraic states' derivatives).
        """
        if self._dae_fn is None:
            m = self.model
            x = ca.SX.sym("x", self.nx)
            z = ca.SX.sym("z", self.nz)
            u = ca.SX.sym("u", m.nu)
            p = ca.SX.sym("p", m.n_params)
            t = ca.SX.sym("t")
            full = ca.vertcat(*self._merge(ca.vertsplit(x), ca.vertsplit(z)))
            xdot = m.rhs_function()(full, u, p, *self._time_args(t))
            ins, names = [x, z, u, p], ["x", "z", "u", "p"]
            if m.time_varying:
                ins, names = ins + [t], names + ["t"]
            self._dae_fn = ca.Function(
                self.name, ins, [xdot[self.diff_index.tolist()], xdot[self.alg_index.tolist()]], names,
                ["ode", "alg"],
            )
        return self._dae_fn

    def _scaled(self, xs: ca.MX, zs: ca.MX, u: ca.MX, p: ca.MX, t: Any) -> tuple[ca.MX, ca.MX]:
        """The DAE in states scaled by ``x_scale``: (ode, alg), each divided by its state's scale."""
        s = self.model.x_scale
        sx, sz = ca.DM(s[self.diff_index]), ca.DM(s[self.alg_index])
        ode, alg = self.dae_function()(xs * sx, zs * sz, u, p, *self._time_args(t))
        return ode / sx, alg / sz

    def consistent_function(self) -> ca.Function:
        """CasADi Function ``consistent(x[nx_full], u, p(, t)) -> z[nz]``: the algebraic states with alg = 0.

        Newton's method on the scaled algebraic residual, started from the algebraic entries of the full
        state ``x`` (the differential entries are held); raises a RuntimeError if it does not converge.
        """
        if self._consistent_fn is None:
            m = self.model
            s = ca.DM(m.x_scale)
            zs = ca.MX.sym("zs", self.nz)
            xs = ca.MX.sym("xs", self.nx)
            u = ca.MX.sym("u", m.nu)
            p = ca.MX.sym("p", m.n_params)
            t = ca.MX.sym("t")
            _, alg = self._scaled(xs, zs, u, p, t)
            held = ca.vertcat(xs, u, p, *self._time_args(t))
            newton = ca.rootfinder(
                f"{self.name}_newton", "newton",
                {"x": zs, "p": held, "g": alg},
                {"abstol": 1e-14, "max_iter": 100, "error_on_fail": True},
            )
            x = ca.MX.sym("x", m.nx)
            x_scaled = x / s
            held_value = ca.vertcat(x_scaled[self.diff_index.tolist()], u, p, *self._time_args(t))
            z = newton(x_scaled[self.alg_index.tolist()], held_value)
            z = z * s[self.alg_index.tolist()]
            ins, names = [x, u, p], ["x", "u", "p"]
            if m.time_varying:
                ins, names = ins + [t], names + ["t"]
            self._consistent_fn = ca.Function(f"{self.name}_consistent", ins, [z], names, ["z"])
        return self._consistent_fn

    def interval_function(self, method: str = "idas") -> ca.Function:
        """CasADi Function ``F(x0[nx_full], u, p(, t0)) -> xf[nx_full]``: one interval with ``u`` held.

        Same signature as :meth:`ODEModel.interval_function` (without its ``err``): the algebraic entries
        of ``x0`` are the Newton guess of :meth:`consistent_function`, which makes them consistent before
        the integrator starts; those of ``xf`` are the integrator's consistent end values. An MX Function
        around a CasADi integrator: ``"idas"`` (adaptive BDF, ``reltol``/``abstol`` on scaled states) or
        ``"collocation"`` (Radau, ``collocation_degree`` points on ``collocation_elements`` elements,
        solved by Newton's method). Built once per method; an integrator failure raises a RuntimeError.
        """
        if method not in DAE_METHODS:
            raise ValueError(f"method must be one of {DAE_METHODS}, got {method!r}")
        fn = self._interval_fns.get(method)
        if fn is not None:
            return fn
        m = self.model
        s = m.x_scale
        xs = ca.MX.sym("xs", self.nx)
        zs = ca.MX.sym("zs", self.nz)
        q = ca.MX.sym("q", m.nu + m.n_params + 1)  # u, p, t0: constant over the interval
        tau = ca.MX.sym("tau")
        u_q, p_q, t0_q = q[: m.nu], q[m.nu : m.nu + m.n_params], q[-1]
        ode, alg = self._scaled(xs, zs, u_q, p_q, t0_q + tau)
        dae = {"x": xs, "z": zs, "p": q, "t": tau, "ode": ode, "alg": alg}
        if method == "idas":
            # The rootfinder below makes z0 consistent; IDAS's own initial-condition search would hide a
            # failure of it.
            opts = {"reltol": self.reltol, "abstol": self.abstol, "max_num_steps": 100000, "calc_ic": False}
        else:
            opts = {
                "number_of_finite_elements": self.collocation_elements,
                "interpolation_order": self.collocation_degree,
                "collocation_scheme": "radau",
                "rootfinder": "newton",
                "rootfinder_options": {"abstol": 1e-12, "max_iter": 50, "error_on_fail": True},
            }
        integ = ca.integrator(f"{self.name}_{method}", method, dae, 0.0, m.dt, opts)
        x0 = ca.MX.sym("x0", m.nx)
        u = ca.MX.sym("u", m.nu)
        p = ca.MX.sym("p", m.n_params)
        t0 = ca.MX.sym("t0")
        t0_used = t0 if m.time_varying else ca.MX(0.0)
        z0 = self.consistent_function()(x0, u, p, *self._time_args(t0))
        sol = integ(x0=x0[self.diff_index.tolist()] / ca.DM(s[self.diff_index]),
                    z0=z0 / ca.DM(s[self.alg_index]), p=ca.vertcat(u, p, t0_used))
        xf_d = sol["xf"] * ca.DM(s[self.diff_index])
        xf_z = sol["zf"] * ca.DM(s[self.alg_index])
        xf = ca.vertcat(*self._merge(ca.vertsplit(xf_d), ca.vertsplit(xf_z)))
        ins, names = [x0, u, p], ["x0", "u", "p"]
        if m.time_varying:
            ins, names = ins + [t0], names + ["t0"]
        fn = ca.Function(f"{self.name}_{method}_interval", ins, [xf], names, ["xf"])
        self._interval_fns[method] = fn
        return fn

    def step(
        self, x: np.ndarray, u: np.ndarray, params: Any, t0: float = 0.0, method: str = "idas"
    ) -> np.ndarray:
        """One interval of :meth:`interval_function`; ``params`` the dataclass or its vector. (nx_full,)."""
        p = params if isinstance(params, np.ndarray) else self.model.param_vector(params)
        args = [np.asarray(x, dtype=float), np.asarray(u, dtype=float), p]
        if self.model.time_varying:
            args.append(float(t0))
        return np.asarray(self.interval_function(method)(*args)).ravel()
