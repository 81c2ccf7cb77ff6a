"""Figures of closed-loop trajectories. Library code: figures are saved to files, never shown."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from safectrl.models import polycstr as pc  # noqa: E402
from safectrl.rl.rollout import Episode  # noqa: E402


@dataclass(frozen=True)
class Trace:
    """One episode drawn in a trajectory figure."""

    episode: Episode
    label: str | None  # None: no legend entry
    color: str = "C0"
    width: float = 1.5
    alpha: float = 1.0


def trajectory_figure(panels: dict[str, Sequence[Trace]], path: str | os.PathLike, title: str = "") -> None:
    """P, T (setpoint and T_max band), f_I and T_c over time; one column per scenario.

    Args:
        panels: scenario name -> traces to draw in its column.
        path: output file (PNG or PDF by extension).
        title: figure title.
    """
    names = list(panels)
    fig, axes = plt.subplots(4, len(names), figsize=(4.6 * len(names), 9.5), sharex=True, squeeze=False)
    for col, name in enumerate(names):
        ax_P, ax_T, ax_f, ax_c = axes[:, col]
        sp = pc.get_scenario(name).setpoint
        for tr in panels[name]:
            ep = tr.episode
            x = ep.infos["state"]
            t = np.arange(len(x)) * pc.DT / 3600
            kw = dict(color=tr.color, lw=tr.width, alpha=tr.alpha)
            ax_P.plot(t, x[:, 3], label=tr.label, **kw)
            ax_T.plot(t, x[:, 4], **kw)
            u = np.clip(ep.actions, pc.U_LOW, pc.U_HIGH)
            ax_f.step(t[:-1], u[:, 0], where="post", **kw)
            ax_c.step(t[:-1], u[:, 1], where="post", **kw)
        ax_P.axhline(sp[0], color="k", ls="--", lw=1, label="setpoint")
        ax_T.axhline(sp[1], color="k", ls="--", lw=1)
        ax_T.axhspan(pc.T_MAX, pc.T_MAX + 100, color="tab:red", alpha=0.12, label=f"T > {pc.T_MAX:g} K")
        ax_T.axhline(pc.T_MAX, color="tab:red", lw=1)
        T_all = np.concatenate([tr.episode.infos["state"][:, 4] for tr in panels[name]])
        T_all = T_all[np.isfinite(T_all)]
        ax_T.set_ylim(min(335.0, T_all.min() - 2), min(max(pc.T_MAX + 5, T_all.max() + 2), 420))
        P_all = np.concatenate([tr.episode.infos["state"][:, 3] for tr in panels[name]])
        P_all = P_all[np.isfinite(P_all)]
        ax_P.set_ylim(min(-5.0, P_all.min() - 5), min(P_all.max() + 5, 1.6 * max(sp[0], 100.0)))
        ax_f.set_ylim(pc.U_LOW[0] - 0.1, pc.U_HIGH[0] + 0.1)
        ax_c.set_ylim(pc.U_LOW[1] - 2, pc.U_HIGH[1] + 2)
        ax_P.set_title(name)
        ax_c.set_xlabel("time [h]")
        if col == 0:
            ax_P.set_ylabel("P [kg/m³]")
            ax_T.set_ylabel("T [K]")
            ax_f.set_ylabel("f_I [kg/h]")
            ax_c.set_ylabel("T_c [K]")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    h2, l2 = axes[1, 0].get_legend_handles_labels()
    fig.legend(handles + h2, labels + l2, loc="lower center", ncol=min(6, len(labels) + len(l2)), frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.04, 1, 0.97 if title else 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def distribution_figure(
    metrics: dict,
    variants: Sequence[str],
    scenarios: Sequence[str],
    controllers: Sequence[str],
    path: str | os.PathLike,
) -> None:
    """Per-seed cost, final |e_P| and intervals above T_max: one column per scenario, one point per episode.

    Args:
        metrics: ``(variant, scenario, controller) -> list of EpisodeMetrics``.
    """
    rows = (("cost", "episode cost", True), ("final_abs_eP", "final |e_P| [kg/m³]", True),
            ("violations", "intervals with T > T_max", False))
    fig, axes = plt.subplots(len(rows), len(scenarios), figsize=(4.8 * len(scenarios), 9.0), squeeze=False)
    rng = np.random.default_rng(0)  # jitter only
    width = 0.8 / max(1, len(variants))
    for col, scenario in enumerate(scenarios):
        for row, (attr, label, log) in enumerate(rows):
            ax = axes[row, col]
            for v, variant in enumerate(variants):
                for c, controller in enumerate(controllers):
                    ms = metrics.get((variant, scenario, controller), [])
                    y = np.array([getattr(m, attr) for m in ms], dtype=float)
                    if log:
                        y = np.maximum(y, 1e-4)
                    x = c + (v - (len(variants) - 1) / 2) * width + rng.uniform(-0.25, 0.25, len(y)) * width
                    ax.scatter(x, y, s=14, color=f"C{v}", alpha=0.75, label=variant if c == 0 else None)
            if log:
                ax.set_yscale("log")
            else:
                ax.set_ylim(bottom=-0.5, top=max(ax.get_ylim()[1], 1.5))
                ax.yaxis.get_major_locator().set_params(integer=True)
            ax.set_xticks(range(len(controllers)))
            ax.set_xticklabels(controllers, rotation=35, ha="right", fontsize=8)
            ax.grid(alpha=0.3)
            if col == 0:
                ax.set_ylabel(label)
            if row == 0:
                ax.set_title(scenario)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper right", frameon=False, title="plant")
    fig.tight_layout(rect=(0, 0, 0.93, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)
