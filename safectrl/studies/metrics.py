"""Closed-loop metrics of one episode of the polymerisation CSTR, the numbers every study reports."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from safectrl.models import polycstr as pc
from safectrl.rl.rollout import Episode

#: Final offsets are averaged over the last 10 h (20 intervals) of an episode.
FINAL_WINDOW = 20


@dataclass(frozen=True)
class EpisodeMetrics:
    """Per-episode metrics; costs in the env's reward units, temperatures in K, concentrations kg/m³."""

    cost: float  # -sum of rewards (includes the failure charge if the episode failed)
    final_abs_eP: float  # mean |P_sp - P| over the last FINAL_WINDOW intervals
    final_abs_eT: float  # mean |T_sp - T| over the last FINAL_WINDOW intervals
    iae_P: float  # sum |e_P| dt over the episode, kg/m³ h
    iae_T: float  # sum |e_T| dt over the episode, K h
    violations: int  # intervals ending above T_max
    worst_exceedance: float  # max(0, max T - T_max)
    peak_T: float
    failure: bool
    length: int  # intervals simulated
    decision_ms: float  # median time per act() call

    def as_dict(self) -> dict:
        return asdict(self)


def episode_metrics(ep: Episode) -> EpisodeMetrics:
    x = ep.infos["state"][1:]
    sp = ep.infos["setpoint"][1:]
    e = sp - x[:, [3, 4]]
    finite = np.all(np.isfinite(x), axis=1)
    e_fin = np.abs(e[finite])
    window = e_fin[-FINAL_WINDOW:] if len(e_fin) else np.full((1, 2), np.nan)
    T = x[finite, 4]
    peak = float(T.max()) if len(T) else float("nan")
    hours = pc.DT / 3600.0
    return EpisodeMetrics(
        cost=float(-ep.rewards.sum()),
        final_abs_eP=float(window[:, 0].mean()),
        final_abs_eT=float(window[:, 1].mean()),
        iae_P=float(e_fin[:, 0].sum() * hours),
        iae_T=float(e_fin[:, 1].sum() * hours),
        violations=int(np.asarray(ep.infos["violation"][1:]).sum()),
        worst_exceedance=float(max(0.0, peak - pc.T_MAX)) if len(T) else float("inf"),
        peak_T=peak,
        failure=ep.failed,
        length=ep.length,
        decision_ms=float(np.median(ep.decision_time) * 1e3) if len(ep.decision_time) else float("nan"),
    )
