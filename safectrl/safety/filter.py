"""A safety filter that wraps any policy and corrects its action with a convex cost model.

``SafetyFilter(policy, cost_model, box, method="gd" | "exact")`` has the common interface
(``reset(seed=None)``, ``act(obs) -> action``). Each step it asks the policy for its action a_pol, and
returns, in physical units,

    a* = argmin_a  f(obs, a) + trust/2 ‖s(a) − s(ā_pol)‖²   over the action box,

where f is the cost model, s the cost model's action standardisation and ā_pol the policy's action
projected onto the box. The box is the input bounds, optionally intersected with a rate limit around the
previous input read from the observation. Nothing here knows which plant it runs on: bounds and the
observation layout come from the caller as an :class:`ActionBox`.

Per step the filter records the raw action, the corrected action and the predicted cost of both
(:attr:`SafetyFilter.record`), cleared by ``reset``.

A non-finite proposal or observation, an empty rate box, or a failed correction (a solver's status, a
non-finite result) is answered with a safe input: the last input the filter returned (first step: the
proposal clipped to the input bounds, or their midpoint if it is not finite), marked in the record's
``fallback`` column and warned about once; ``strict=True`` raises instead. A sensor fault must not take
the plant's input away.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from safectrl.common.faults import FallbackWarning
from safectrl.common.protocol import DecisionMaker
from safectrl.safety.correction import CorrectionError, ExactCorrector, GDConfig, GradientCorrector
from safectrl.safety.cost_model import ConvexCostModel
from safectrl.safety.picnn import PICNNArrays

METHODS = ("gd", "exact")


@dataclass(frozen=True)
class ActionBox:
    """Where corrected actions may go, physical units.

    ``low``/``high`` are the input bounds. ``rate`` (optional) bounds |a − a_prev| per control interval,
    with a_prev read from the observation at ``prev_action_index``.
    """

    low: tuple[float, ...]
    high: tuple[float, ...]
    rate: tuple[float, ...] | None = None
    prev_action_index: tuple[int, ...] | None = None

    def __post_init__(self) -> None:
        low, high = np.asarray(self.low, dtype=float), np.asarray(self.high, dtype=float)
        if low.ndim != 1 or low.shape != high.shape or len(low) == 0:
            raise ValueError(f"low and high must be equal-length vectors, got {self.low!r}, {self.high!r}")
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError("action bounds must be finite")
        if np.any(low > high):
            raise ValueError(f"empty action box: low {self.low} > high {self.high}")
        if self.rate is not None:
            rate = np.asarray(self.rate, dtype=float)
            if rate.shape != low.shape or not np.all(rate > 0):
                raise ValueError(f"rate must be {len(low)} positive numbers, got {self.rate!r}")
            if self.prev_action_index is None or len(self.prev_action_index) != len(low):
                raise ValueError("a rate limit needs prev_action_index: where the observation holds the "
                                 "previous action")
        for name in ("low", "high", "rate", "prev_action_index"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, tuple(int(v) if name == "prev_action_index" else float(v)
                                                     for v in value))

    @property
    def dim(self) -> int:
        return len(self.low)

    def bounds(self, obs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Per-state bounds (lo, hi), each (N, dim), for observations (N, n_obs).

        Raises:
            ValueError: if the rate box around the previous action misses the input box.
        """
        n = len(obs)
        lo = np.tile(np.asarray(self.low), (n, 1))
        hi = np.tile(np.asarray(self.high), (n, 1))
        if self.rate is not None:
            prev = obs[:, list(self.prev_action_index)]
            lo = np.maximum(lo, prev - np.asarray(self.rate))
            hi = np.minimum(hi, prev + np.asarray(self.rate))
            empty = np.any(lo > hi, axis=1)
            if empty.any():
                k = int(np.flatnonzero(empty)[0])
                raise ValueError(f"empty action box: previous action {prev[k]} is more than the rate limit "
                                 f"{self.rate} outside the bounds [{self.low}, {self.high}]")
        return lo, hi


@dataclass
class FilterRecord:
    """What the filter did, one row per ``act`` call since the last ``reset``."""

    raw_action: list[np.ndarray] = field(default_factory=list)  # policy action, physical units
    action: list[np.ndarray] = field(default_factory=list)  # corrected action, physical units
    predicted_cost_raw: list[float] = field(default_factory=list)  # f at the policy action clipped to the bounds
    predicted_cost: list[float] = field(default_factory=list)  # f at the corrected action
    iterations: list[int] = field(default_factory=list)  # GD gradient evaluations or solver iterations
    fallback: list[bool] = field(default_factory=list)  # the action is the safe fallback, not a correction

    @property
    def fallbacks(self) -> int:
        """Steps answered with the safe fallback input."""
        return int(sum(self.fallback))

    def arrays(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v) for k, v in self.__dict__.items()}


class SafetyFilter:
    """Wrap ``policy`` so that each action is corrected with ``cost_model`` (see the module docstring).

    Args:
        policy: anything with ``reset(seed=None)`` and ``act(obs)`` returning a physical action.
        cost_model: the convex cost model; its observation layout must be the policy's.
        box: input bounds and optional rate limit, physical units.
        method: "gd" (projected gradient descent) or "exact" (the LP/QP in cvxpy).
        trust: weight λ of the trust term, network cost units per squared standardised action unit.
        gd: step size, budget and stopping rule of "gd".
        solver: cvxpy solver of "exact" (default HiGHS for λ = 0, DAQP for λ > 0).
        strict: raise on a non-finite proposal or observation or a failed correction instead of answering
            with the safe fallback input (see the module docstring).
    """

    def __init__(
        self,
        policy: DecisionMaker,
        cost_model: ConvexCostModel,
        box: ActionBox,
        method: str = "gd",
        trust: float = 1.0,
        gd: GDConfig = GDConfig(),
        solver: str | None = None,
        strict: bool = False,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown correction method {method!r}; valid methods: {', '.join(METHODS)}")
        if box.dim != cost_model.act_dim:
            raise ValueError(f"box has {box.dim} actions, the cost model {cost_model.act_dim}")
        self.policy = policy
        self.cost_model = cost_model
        self.box = box
        self.method = method
        if method == "gd":
            self.corrector: GradientCorrector | ExactCorrector = GradientCorrector(cost_model.picnn, trust, gd)
        else:
            self.corrector = ExactCorrector(cost_model.picnn, trust, solver)
        self._arrays = PICNNArrays(cost_model.picnn)  # the cost of the raw action, without torch's overhead
        self.strict = bool(strict)
        self.record = FilterRecord()
        self._last_safe: np.ndarray | None = None
        self._warned = False

    def reset(self, seed: int | None = None) -> None:
        self.policy.reset(seed=seed)
        self.record = FilterRecord()
        self._last_safe = None

    def episode_report(self) -> dict[str, int]:
        """The episode's fallbacks as a study column: ``fallbacks``, the steps since the last reset answered
        with the safe fallback input (:attr:`FilterRecord.fallbacks`)."""
        return {"fallbacks": self.record.fallbacks}

    def _safe_input(self, raw: np.ndarray) -> np.ndarray:
        """The fallback: the last input returned, else the proposal clipped to the bounds, else the middle."""
        if self._last_safe is not None:
            return self._last_safe.copy()
        low, high = np.asarray(self.box.low), np.asarray(self.box.high)
        return np.clip(raw, low, high) if np.all(np.isfinite(raw)) else (low + high) / 2

    def act(self, obs: np.ndarray) -> np.ndarray:
        obs = np.asarray(obs, dtype=float)
        if obs.shape != (self.cost_model.obs_dim,):
            raise ValueError(f"observation must have shape ({self.cost_model.obs_dim},), got {obs.shape}")
        raw = np.asarray(self.policy.act(obs), dtype=float)
        if raw.shape != (self.cost_model.act_dim,):
            raise ValueError(f"policy action must have shape ({self.cost_model.act_dim},), got {raw.shape}")
        try:
            action, cost_raw, cost, iters = self.correct(obs[None], raw[None])
            if not np.all(np.isfinite(action)):
                raise CorrectionError(f"the {self.method} correction gave a non-finite action {action[0]}")
            fallback = False
        except (ValueError, CorrectionError, ArithmeticError) as err:
            if self.strict:
                raise
            if not self._warned:
                warnings.warn(f"SafetyFilter: {err}; answered with the safe fallback input (warned once; "
                              "counted in record.fallback)", FallbackWarning, stacklevel=2)
                self._warned = True
            action, cost_raw, cost, iters = self._safe_input(raw)[None], [np.nan], [np.nan], [0]
            fallback = True
        self._last_safe = action[0].copy()
        r = self.record
        r.raw_action.append(raw.copy())
        r.action.append(action[0].copy())
        r.predicted_cost_raw.append(float(cost_raw[0]))
        r.predicted_cost.append(float(cost[0]))
        r.iterations.append(int(iters[0]))
        r.fallback.append(fallback)
        return action[0]

    def correct(self, obs: np.ndarray, raw: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Correct a batch of policy actions, physical units.

        Args:
            obs: (N, n_obs) observations.
            raw: (N, n_act) policy actions.

        Returns:
            corrected actions (N, n_act); predicted cost of the raw actions clipped to the input bounds and of
            the corrected actions (N,), in the cost model's target units; iterations (N,).

        Raises:
            ValueError: non-finite or wrongly shaped observations or actions, or an empty action box.
        """
        obs = np.asarray(obs, dtype=float)
        raw = np.asarray(raw, dtype=float)
        m, n_x = self.cost_model.act_dim, self.cost_model.obs_dim
        if obs.ndim != 2 or obs.shape[1] != n_x:
            raise ValueError(f"observations must have shape (N, {n_x}), got {obs.shape}")
        if raw.shape != (len(obs), m):
            raise ValueError(f"policy actions must have shape ({len(obs)}, {m}), got {raw.shape}")
        if not np.all(np.isfinite(obs)):
            raise ValueError(f"observation contains NaN or inf: {obs[~np.all(np.isfinite(obs), axis=1)][0]}")
        if not np.all(np.isfinite(raw)):
            raise ValueError(f"policy action contains NaN or inf: {raw[~np.all(np.isfinite(raw), axis=1)][0]}")
        lo, hi = self.box.bounds(obs)
        model = self.cost_model
        x = model.state_features(obs)
        y_lo, y_hi = model.scale_action(lo), model.scale_action(hi)
        y_ref = model.scale_action(np.clip(raw, lo, hi))
        result = self.corrector.correct(x, y_ref, y_lo, y_hi)
        action = np.clip(model.unscale_action(result.action), lo, hi)
        clipped = model.scale_action(np.clip(raw, self.box.low, self.box.high))
        f_raw = self._arrays.value(self._arrays.gates(x), clipped)
        return action, model.cost_from_network(f_raw), model.cost_from_network(result.cost), result.iterations
