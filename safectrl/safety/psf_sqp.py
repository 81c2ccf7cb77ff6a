r"""The predictive safety filter's fast correction: sequential quadratic programming on the linearisation of
the model's own integrator about the last plan (a real-time-iteration scheme in the sense of Diehl, Bock and
Schlöder, "A real-time iteration scheme for nonlinear optimization in optimal feedback control", SIAM J.
Control Optim. 43(5), 2005).

The filter's NLP (:mod:`safectrl.safety.psf`) is exact but costs 16-19 IPOPT iterations of ~2.5 ms each where
it must intervene. Here each iteration linearises every interval of the plan (x̄_k, ū_k) with the interval
function the env integrates (fixed-substep RODAS4, compiled; the Jacobians A_k, B_k by forward differences,
all intervals and perturbations in one mapped call), condenses the states out and solves

    minimise    sum_j ((u_0j - a_j) / range_j)²                         the proposal, as in the NLP
                + delta sum_{k>=2} sum_j ((u_kj - u_{k-1,j}) / range_j)²  its move penalty
                + mu sum_{k>=1} sum_j ((u_kj - ū_kj) / range_j)²          proximal: stay near the linearisation
                + rho sum_{k,b} s_{k,b} + rho_f sum_i s_f,i               exact L1 penalties (small curvature)
    subject to  x_0 = x̂,  x_{k+1} = F(x̄_k, ū_k) + A_k (x_k - x̄_k) + B_k (u_k - ū_k)
                u_low <= u_k <= u_high
                low_b - s_{k,b} <= y_b(x̄_k) + C_{k,b} (x_k - x̄_k) <= high_b + s_{k,b}   every limit, tightened
                |r(x̄_N, ū_{N-1}) + linearised change| <= tol + s_f       terminal steady state (equilibrium)

with DAQP's active-set method (dense, N·nu inputs plus the slacks: the reactor's 40 + 25). The linearisation
points are the plan's own states, not a simulation of its inputs (multiple shooting, condensed): the plan
inherited from the last step runs along the runaway once the estimate has moved, and a forward simulation of
it (single shooting) overflowed the fixed RODAS4 steps at ~15 % of the steps behind the most heat with noise.
The next iteration linearises about the states the QP predicts. It stops when u_0 moves by less than ``tol``
of its range (the proximal term vanishes at the fixed point, so u_0 is then the hard problem's up to that
tolerance), or when the QP's inputs, simulated with the integrator, give every limited output within
``output_tol`` of the QP's prediction (the linearisation was exact where the problem is decided). The
first plan is the last accepted one shifted by one interval (the backup), with the filter's last applied
input first.

Nothing here decides what is applied: the filter simulates the result with the model's integrator, checks it
against the limits and the terminal set as it checks an NLP plan, and solves the NLP when this path fails
(slack needed, the check refused, an inaccurate or non-finite linearisation, DAQP failed, no convergence);
every outcome is counted in the filter's record.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import casadi as ca
import numpy as np

from safectrl.models import compiled
from safectrl.models.mathns import CASADI

#: DAQP's exit flags that mean a solution (1 optimal, 2 optimal with soft constraints violated: not used here).
_DAQP_OPTIMAL = (1,)
#: Stand-in for an infinite bound (DAQP takes finite numbers).
_BIG = 1e30
#: Largest RODAS4 error estimate (scaled) of the simulation a QP is built on. The env recomputes intervals above
#: the model's err_tol (1e-4) by CVODES, and so does the filter's check of the result; a linearisation on an
#: interval that is off by a few err_tol still converges to a plan the check accepts, but above the states' own
#: scale the fixed RODAS4 steps have left the solution (Jacobian entries of 1e198 were seen on a runaway)
_LINEARISATION_ERR = 1.0
#: Share of the terminal band the QP plans for: the linearisation's error must fit into the rest, since the
#: integrator's plan is judged against the whole band
_TERMINAL_SHARE = 0.5
#: Curvature of the slacks (objective units per squared unit), against their L1 weights of 1e2-1e3.
_SLACK_CURVATURE = 1e-4


@dataclass
class SQPResult:
    """The outcome of :meth:`CondensedSQP.solve`."""

    status: str  # "converged", "not_converged", "not_finite" or "inaccurate" (the simulation), "qp_failed (flag f)" (DAQP's)
    u_plan: np.ndarray  # (N, nu) the last iterate (the start if no QP was solved)
    iterations: int  # QPs solved
    qp_iterations: int  # DAQP's active-set iterations, summed
    seconds: float  # wall time of the whole solve
    max_slack: float = 0.0  # the last QP's largest limit slack, physical units
    terminal_slack: float = 0.0  # the last QP's largest terminal slack, scaled
    # (N, nx) a converged u_plan simulated from the estimate by the interval function, every interval within
    # the model's err_tol: what ODEModel.step gives (the same compiled code); else None
    states: np.ndarray | None = None

    @property
    def success(self) -> bool:
        return self.status == "converged"


class CondensedSQP:
    """The correction problem of the module docstring for one filter, built once (also usable alone:
    ``solve(x0, U, a, p)``).

    Args:
        model: the task's model (its interval function is the prediction).
        limits: (limit, low, high) per operating limit, the bounds already tightened (physical units).
        params: the parameters the limits' outputs are evaluated with (the filter's design parameters, as its
            integrator check does).
        states: the model's state names, in order.
        horizon: N intervals.
        du_weight, du_start: the NLP's move penalty and the first input it applies to (u_2 - u_1: 2).
        terminal: "equilibrium" or "free"; terminal_tolerance its band on |f(x_N, u_{N-1}) dt / x_scale| (the QP
            plans for :data:`_TERMINAL_SHARE` of it).
        proximal: mu above (per (Δu / range)²).
        tol: convergence of u_0, share of its range; max_iter: QPs per solve.
        output_tol: per limit, physical units: also converged when the QP's inputs, simulated from the
            estimate, give every limited output within this of what the QP predicted (None: u_0 only).
        fd_step: forward-difference step, share of each state's scale and each input's range.
    """

    def __init__(self, model: Any, limits: Sequence[tuple[Any, float, float]], params: Any, states: Sequence[str],
                 horizon: int, du_weight: float, du_start: int, terminal: str, terminal_tolerance: float,
                 limit_penalty: float, terminal_penalty: float,
                 proximal: float = 1e-4, tol: float = 1e-4, max_iter: int = 6,
                 output_tol: Sequence[float] | None = None, fd_step: float = 1e-6) -> None:
        import daqp

        self._daqp = daqp
        m = self.model = model
        self.N, self.nx, self.nu = int(horizon), m.nx, m.nu
        self.range = np.asarray(m.u_high - m.u_low, dtype=float)
        self.u_low, self.u_high = np.asarray(m.u_low, dtype=float), np.asarray(m.u_high, dtype=float)
        self.du_weight, self.du_start = float(du_weight), int(du_start)
        self.terminal, self.terminal_tolerance = terminal, float(terminal_tolerance)
        self.proximal, self.tol, self.max_iter = float(proximal), float(tol), int(max_iter)
        self.output_tol = None if output_tol is None else np.asarray(output_tol, dtype=float)
        self.n_lim = len(limits)
        self.n_terminal = m.nx if terminal == "equilibrium" else 0
        self.limit_penalty, self.terminal_penalty = float(limit_penalty), float(terminal_penalty)
        self.y_low = np.array([lo if math.isfinite(lo) else -_BIG for _, lo, _ in limits])
        self.y_high = np.array([hi if math.isfinite(hi) else _BIG for _, _, hi in limits])
        self._build_sensitivities(fd_step)
        xs = ca.SX.sym("x", m.nx)
        y = ca.vertcat(*[lim.value(ca.vertsplit(xs), params, states, CASADI) for lim, _, _ in limits])
        outputs = ca.Function("psf_limit_outputs", [xs], [y, ca.jacobian(y, xs)])
        self._outputs = outputs.map(self.N)  # at the N interval ends at once: (n_lim, N), (n_lim, nx·N)
        if terminal == "equilibrium":
            us, ps, ts = ca.SX.sym("u", m.nu), ca.SX.sym("p", m.n_params), ca.SX.sym("t")
            args = [xs, us, ps] + ([ts] if m.time_varying else [])
            r = m.rhs_function()(*args) * m.dt / ca.DM(m.x_scale)
            self._residual = ca.Function("psf_terminal_residual", [xs, us, ps, ts],
                                         [r, ca.jacobian(r, xs), ca.jacobian(r, us)])
        self._hessian = self._build_hessian()

    # -- built once -----------------------------------------------------------------------------------

    def _build_sensitivities(self, fd_step: float) -> None:
        """The interval function compiled and evaluated on every interval's forward-difference perturbations
        (1 + nx + nu rows per interval), so that :meth:`_linearise` is one call."""
        m, nx, nu = self.model, self.nx, self.nu
        self._n_dir = 1 + nx + nu
        F = compiled.compile_function(m.interval_function())
        # serial: a filter decides for one plant; the threads of a study's workers are its processes
        self._rows = compiled.Rows(m.interval_function(), threads=1)
        # the plan's inputs chained from the estimate (what the filter's check simulates), in one call
        x0, U, p, t0 = ca.MX.sym("x0", nx), ca.MX.sym("U", nu, self.N), ca.MX.sym("p", m.n_params), ca.MX.sym("t0")
        x, xs, errs = x0, [], []
        for k in range(self.N):
            x, err = F(*([x, U[:, k], p] + ([t0 + k * m.dt] if m.time_varying else [])))
            xs.append(x)
            errs.append(err)
        self._rollout = ca.Function("psf_rollout", [x0, U, p, t0], [ca.horzcat(*xs), ca.mmax(ca.vertcat(*errs))])
        self._hx = fd_step * np.asarray(m.x_scale, dtype=float)
        self._hu = fd_step * self.range
        dX = np.vstack([np.zeros((1, nx)), np.diag(self._hx), np.zeros((nu, nx))])
        dU = np.vstack([np.zeros((1 + nx, nu)), np.diag(self._hu)])
        self._dX, self._dU = np.tile(dX, (self.N, 1)), np.tile(dU, (self.N, 1))

    def _linearise(self, X: np.ndarray, U: np.ndarray, p: np.ndarray, t0: float
                   ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
        """Each interval k from its own start ``X[k]`` (N, nx) with ``U[k]`` (N, nu): the end states (N, nx),
        the forward-difference Jacobians of the end state in the start state (N, nx, nx) and the input
        (N, nx, nu), and the largest RODAS4 error estimate of the N intervals (:data:`_LINEARISATION_ERR`)."""
        m, N, nx, n_dir = self.model, self.N, self.nx, self._n_dir
        xs = np.repeat(X, n_dir, axis=0) + self._dX
        us = np.repeat(U, n_dir, axis=0) + self._dU
        args = [xs, us, np.broadcast_to(np.asarray(p, dtype=float), (N * n_dir, m.n_params))]
        if m.time_varying:
            args.append(np.repeat(t0 + m.dt * np.arange(N), n_dir)[:, None])
        xf, err = self._rows(*args)
        xf = xf.reshape(N, n_dir, nx)
        end = xf[:, 0]
        diff = xf[:, 1:] - end[:, None, :]
        A = (diff[:, :nx] / self._hx[None, :, None]).transpose(0, 2, 1)
        B = (diff[:, nx:] / self._hu[None, :, None]).transpose(0, 2, 1)
        return end, A, B, float(np.max(err[::n_dir, 0]))

    def _build_hessian(self) -> np.ndarray:
        """The QP's Hessian in z = vec(U - Ū) (input-major per interval): constant."""
        N, nu = self.N, self.nu
        n = N * nu
        w = 1.0 / self.range**2
        n_all = n + N * self.n_lim + self.n_terminal
        H = np.zeros((n_all, n_all))
        # the slacks' L1 penalty is exact; a small quadratic makes the Hessian positive definite (DAQP)
        H[n:, n:] = np.diag(np.full(n_all - n, 2.0 * _SLACK_CURVATURE))
        H[:nu, :nu] += np.diag(2.0 * w)
        for k in range(1, N):
            H[k * nu:(k + 1) * nu, k * nu:(k + 1) * nu] += np.diag(2.0 * self.proximal * w)
        for k in range(max(self.du_start, 1), N):
            i, j = k * nu, (k - 1) * nu
            D = np.diag(2.0 * self.du_weight * w)
            H[i:i + nu, i:i + nu] += D
            H[j:j + nu, j:j + nu] += D
            H[i:i + nu, j:j + nu] -= D
            H[j:j + nu, i:i + nu] -= D
        return H

    # -- per solve ------------------------------------------------------------------------------------

    def _qp(self, X: np.ndarray, U: np.ndarray, a: np.ndarray, end: np.ndarray, A: np.ndarray, B: np.ndarray,
            p: np.ndarray, t0: float) -> tuple[int, np.ndarray, np.ndarray, float, float, int]:
        """One QP about the plan (X, U) (interval starts and inputs, (N, nx) and (N, nu)), the intervals'
        end states ``end`` and Jacobians A, B: DAQP's exit flag, the step z (N, nu), the predicted states
        x_1 .. x_N (N, nx) after it, the largest limit slack (physical units), the largest terminal slack
        (scaled) and DAQP's iterations."""
        N, nx, nu, n_lim = self.N, self.nx, self.nu, self.n_lim
        nz, ns, nf = N * nu, N * n_lim, self.n_terminal
        # the linearisation points x̄_1 .. x̄_N: the plan's own interval starts, the last interval's end
        lin = np.vstack([X[1:], end[-1:]])
        defect = end - lin  # the plan's gaps (0 for the last interval)
        # e_{k+1} = x_{k+1} - x̄_{k+1} = A_k e_k + B_k dz_k + defect_k, e_0 = 0: e_{k+1} = M[k] z + c[k]
        M = np.zeros((N, nx, nz))
        c = np.zeros((N, nx))
        for k in range(N):
            if k > 0:
                M[k] = A[k] @ M[k - 1]
                c[k] = A[k] @ c[k - 1]
            M[k][:, k * nu:(k + 1) * nu] += B[k]
            c[k] += defect[k]
        Y, C = (np.asarray(v) for v in self._outputs(lin.T))
        C = C.reshape(n_lim, N, nx)  # C[:, k] the outputs' Jacobian at x̄_{k+1}
        CM = np.einsum("bkx,kxz->kbz", C, M).reshape(ns, nz)
        y = Y.T.ravel() + np.einsum("bkx,kx->kb", C, c).ravel()
        eye_s = np.eye(ns)
        # y + C dx - s <= high  and  y + C dx + s >= low, per interval end and limit (k-major)
        rows = [np.hstack([CM, -eye_s, np.zeros((ns, nf))]), np.hstack([CM, eye_s, np.zeros((ns, nf))])]
        high = [np.tile(self.y_high, N) - y, np.full(ns, _BIG)]
        low = [np.full(ns, -_BIG), np.tile(self.y_low, N) - y]
        if nf:
            r, Rx, Ru = (np.asarray(v) for v in self._residual(lin[-1], U[-1], p, t0 + N * self.model.dt))
            G = Rx @ M[N - 1]
            G[:, (N - 1) * nu:] += Ru
            r = r.ravel() + Rx @ c[N - 1]
            eye_f = np.eye(nf)
            rows += [np.hstack([G, np.zeros((nf, ns)), -eye_f]), np.hstack([G, np.zeros((nf, ns)), eye_f])]
            band = _TERMINAL_SHARE * self.terminal_tolerance
            high += [band - r, np.full(nf, _BIG)]
            low += [np.full(nf, -_BIG), -band - r]
        w = 1.0 / self.range**2
        f = np.concatenate([np.zeros(nz), np.full(ns, self.limit_penalty), np.full(nf, self.terminal_penalty)])
        f[:nu] = 2.0 * w * (U[0] - a)
        for k in range(max(self.du_start, 1), N):
            g = 2.0 * self.du_weight * w * (U[k] - U[k - 1])
            f[k * nu:(k + 1) * nu] += g
            f[(k - 1) * nu:k * nu] -= g
        blower = np.concatenate([(self.u_low - U).ravel(), np.zeros(ns + nf)] + low)
        bupper = np.concatenate([(self.u_high - U).ravel(), np.full(ns + nf, _BIG)] + high)
        sol, _, flag, info = self._daqp.solve(self._hessian, f, np.vstack(rows), bupper, blower,
                                              np.zeros(len(bupper), dtype=np.int32))
        sol = np.asarray(sol)
        z = sol[:nz]
        predicted = lin + np.einsum("kxz,z->kx", M, z) + c
        limit_slack = float(np.max(sol[nz:nz + ns], initial=0.0))
        terminal_slack = float(np.max(sol[nz + ns:], initial=0.0))
        return int(flag), z.reshape(N, nu), predicted, limit_slack, terminal_slack, int(info.get("iterations", 0))

    def solve(self, x0: np.ndarray, U: np.ndarray, a: np.ndarray, p: np.ndarray, t0: float = 0.0,
              X: np.ndarray | None = None) -> SQPResult:
        """Iterate from the plan ``U`` (N, nu), with its predicted states ``X`` ((N + 1, nx); default: ``U``
        simulated from ``x0``), for the proposal ``a`` from the estimate ``x0``."""
        start = time.perf_counter()
        U = np.clip(np.asarray(U, dtype=float), self.u_low, self.u_high)
        x0 = np.asarray(x0, dtype=float)
        if X is None:
            X = [x0]
            for k in range(self.N - 1):
                X.append(self.model.step(X[-1], U[k], p, t0 + k * self.model.dt))
            X = np.asarray(X)
        X = np.vstack([x0, np.asarray(X, dtype=float)[1:self.N]])  # the interval starts, x_0 the estimate
        qp_iterations = 0
        slack = terminal_slack = 0.0

        states = None

        def result(status: str, it: int) -> SQPResult:
            return SQPResult(status, U.copy(), it, qp_iterations, time.perf_counter() - start, slack, terminal_slack,
                             states)

        for it in range(1, self.max_iter + 1):
            if not np.all(np.isfinite(X)):
                return result("not_finite", it - 1)
            end, A, B, err = self._linearise(X, U, p, t0)
            if not (np.all(np.isfinite(end)) and np.all(np.isfinite(A)) and np.all(np.isfinite(B))):
                return result("not_finite", it - 1)
            if not err <= _LINEARISATION_ERR:
                return result("inaccurate", it - 1)
            flag, z, predicted, slack, terminal_slack, n_it = self._qp(X, U, a, end, A, B, p, t0)
            qp_iterations += n_it
            if flag not in _DAQP_OPTIMAL:
                return result(f"qp_failed (flag {flag})", it)
            U = np.clip(U + z, self.u_low, self.u_high)
            X = np.vstack([x0, predicted[:-1]])  # the next linearisation: the states this QP predicts
            sim, sim_err = (np.asarray(v) for v in self._rollout(x0, U.T, p, t0))
            states = sim.T if float(sim_err.ravel()[0]) <= self.model.err_tol else None
            # converged: u_0 has stopped moving, or the integrator does with these inputs what the QP
            # predicted, to output_tol on every limited output (its linearisation was exact where it matters:
            # the next QP would move u_0 by about that error over the output's sensitivity to u_0)
            settled = np.max(np.abs(z[0]) / self.range) <= self.tol
            if not settled and states is not None and self.output_tol is not None:
                y_sim = np.asarray(self._outputs(states.T)[0])
                y_qp = np.asarray(self._outputs(predicted.T)[0])
                settled = bool(np.all(np.abs(y_sim - y_qp) <= self.output_tol[:, None]))
            if settled:
                if states is not None and self.n_terminal and it < self.max_iter:
                    # u_0 has settled, the continuation may not have: where the simulated plan does not end
                    # within the terminal band (the QP plans for half of it), iterate on from its states
                    drift = np.asarray(self._residual(states[-1], U[-1], p, t0 + self.N * self.model.dt)[0])
                    if np.max(np.abs(drift)) > self.terminal_tolerance:
                        X = np.vstack([x0, states[:-1]])
                        continue
                return result("converged", it)
        return result("not_converged", self.max_iter)
