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
  compiler is present (see :mod:`safectrl.models.compiled`), one reactor or N reactors per call.

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
        self._interval_fn: ca.Function | None = None
        self._adaptive_fn: ca.Function | None = None
        self._mapped: dict[int, ca.Function] = {}
        self._direct: compiled.DirectCall | None = None
        #: Largest accepted RODAS4 error estimate per interval; above it CVODES recomputes the interval.
        self.err_tol = float(err_tol)
        #: Intervals recomputed by CVODES since construction (visible, never silent).
        self.fallbacks = 0

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

    def interval_function(self) -> ca.Function:
        """CasADi Function ``F(x0, u, p(, t0)) -> xf``: one interval ``dt`` with ``u`` held, built once.

        An SX graph (fixed RODAS4 substeps), so it can be compiled, mapped, or embedded in an NLP.
        """
        if self._interval_fn is None:
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
                zf, err = euler_interval(fun, z0, q, self.dt, self.substeps), ca.SX(0)
            else:
                zf, err = rodas4_interval(fun, z0, q, self.dt, self.substeps, self.pivoting)
            ins, names = [x0, u, p], ["x0", "u", "p"]
            if self.time_varying:
                ins, names = ins + [t0], names + ["t0"]
            self._interval_fn = ca.Function(
                f"{self.name}_interval", ins, [zf[: self.nx] * s, err], names, ["xf", "err"]
            )
        return self._interval_fn

    def _batched(self, n: int) -> ca.Function:
        """The (compiled) interval function mapped over ``n`` reactors, cached per ``n``."""
        fn = self._mapped.get(n)
        if fn is None:
            fn = compiled.mapped(compiled.compile_function(self.interval_function()), n)
            self._mapped[n] = fn
        return fn

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

        Reactors whose RODAS4 error estimate exceeds :attr:`err_tol` are recomputed by CVODES (counted in
        :attr:`fallbacks`), so the result is accurate also far from the operating region.

        Args:
            x: states, shape (N, nx), physical units.
            u: inputs held over the interval, shape (N, nu).
            p: parameter vectors, shape (N, n_params) or (n_params,) for all alike.
            t0: interval start times (time-varying models only), shape (N,) or scalar.

        Returns:
            States at the end of the interval, shape (N, nx). NaN where even CVODES failed.
        """
        x = np.atleast_2d(np.asarray(x, dtype=float))
        n = x.shape[0]
        u = np.broadcast_to(np.asarray(u, dtype=float), (n, self.nu))
        p = np.broadcast_to(np.asarray(p, dtype=float), (n, self.n_params))
        t0 = np.broadcast_to(np.asarray(t0, dtype=float), (n,))
        if n == 1:  # one reactor: call the compiled code directly, skipping CasADi's argument conversion
            if self._direct is None:
                self._direct = compiled.DirectCall(self.interval_function())
            args1 = [x[0], u[0], p[0]] + ([t0[:1]] if self.time_varying else [])
            xf1, err = self._direct(*args1)
            xf = xf1[None, :]
        else:
            args = [x.T, u.T, p.T] + ([t0[None, :]] if self.time_varying else [])
            xf, err = self._batched(n)(*args)
            xf = np.asarray(xf).T.reshape(n, self.nx)
        redo = ~(np.asarray(err).ravel() <= self.err_tol)  # NaN counts as too large
        for k in np.flatnonzero(redo):
            xf[k] = self._adaptive_step(x[k], u[k], p[k], t0[k])
        self.fallbacks += int(redo.sum())
        return xf

    def step(self, x: np.ndarray, u: np.ndarray, params: Any, t0: float = 0.0) -> np.ndarray:
        """Advance one reactor by one interval; ``params`` is the dataclass or its vector. Shape (nx,)."""
        p = params if isinstance(params, np.ndarray) else self.param_vector(params)
        return self.step_batch(np.asarray(x, dtype=float)[None, :], u, p, t0)[0]
