"""Figures of closed-loop trajectories and of a learned cost surface. Library code: figures are saved to files, never shown."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from safectrl.models import polycstr as pc  # noqa: E402
from safectrl.models.task import Task  # noqa: E402
from safectrl.rl.rollout import Episode  # noqa: E402
from safectrl.studies.metrics import PER_HOUR  # noqa: E402

if TYPE_CHECKING:
    from safectrl.safety.correction import GDConfig
    from safectrl.safety.cost_model import ConvexCostModel
    from safectrl.safety.filter import ActionBox


@dataclass(frozen=True)
class Trace:
    """One episode drawn in a trajectory figure."""

    episode: Episode
    label: str | None  # None: no legend entry
    color: str = "C0"
    width: float = 1.5
    alpha: float = 1.0


def trajectory_figure(panels: dict[str, Sequence[Trace]], path: str | os.PathLike, title: str = "",
                      task: Task | None = None) -> None:
    """The tracked states (setpoint dashed, operating limits shaded) and the inputs over time; one column per
    scenario. For the reactor: P, T (T_max band), f_I and T_c.

    Args:
        panels: scenario name -> traces to draw in its column.
        path: output file (PNG or PDF by extension).
        title: figure title.
        task: the task of the episodes (default: the polymerisation CSTR).
    """
    task = pc.TASK if task is None else task
    m = task.model
    tracked = list(task.setpoint_names) or [lim.name for lim in task.limits if lim.output is None][:2]
    rows = [("state", s) for s in tracked] + [("input", u) for u in m.inputs]
    names = list(panels)
    fig, axes = plt.subplots(len(rows), len(names), figsize=(4.6 * len(names), 2.4 * len(rows) + 0.3),
                             sharex=True, squeeze=False)
    hours = m.dt / PER_HOUR[task.time_unit]
    for col, name in enumerate(names):
        sp = task.scenario(name).setpoint
        for r, (kind, var) in enumerate(rows):
            ax = axes[r, col]
            for tr in panels[name]:
                ep = tr.episode
                x = ep.infos["state"]
                t = np.arange(len(x)) * hours
                kw = dict(color=tr.color, lw=tr.width, alpha=tr.alpha)
                if kind == "state":
                    ax.plot(t, x[:, task.states.index(var)], label=tr.label if r == 0 else None, **kw)
                else:
                    u = np.clip(ep.actions, m.u_low, m.u_high)
                    ax.step(t[:-1], u[:, m.inputs.index(var)], where="post", **kw)
            if kind == "state":
                values = np.concatenate([tr.episode.infos["state"][:, task.states.index(var)]
                                         for tr in panels[name]])
                values = values[np.isfinite(values)]
                lo, hi = (values.min(), values.max()) if len(values) else (0.0, 1.0)
                if var in task.setpoint_names:
                    target = sp[task.setpoint_names.index(var)]
                    ax.axhline(target, color="k", ls="--", lw=1, label="setpoint" if r == 0 else None)
                    lo, hi = min(lo, target), max(hi, target)
                pad = 0.05 * max(hi - lo, 1e-9)
                for lim in task.limits:
                    if lim.name == var and lim.output is None:
                        for edge, other in ((lim.high, np.inf), (lim.low, -np.inf)):
                            if np.isfinite(edge):
                                band = (edge, edge + 100 * pad) if other > 0 else (edge - 100 * pad, edge)
                                sign = ">" if other > 0 else "<"
                                ax.axhspan(*band, color="tab:red", alpha=0.12,
                                           label=f"{var} {sign} {edge:g} {lim.unit}".rstrip())
                                ax.axhline(edge, color="tab:red", lw=1)
                                lo, hi = min(lo, edge), max(hi, edge)
                ax.set_ylim(lo - pad - 0.05 * (hi - lo), hi + pad + 0.05 * (hi - lo))
            else:
                j = m.inputs.index(var)
                margin = 0.04 * (m.u_high[j] - m.u_low[j])
                ax.set_ylim(m.u_low[j] - margin, m.u_high[j] + margin)
            if col == 0:
                ax.set_ylabel(f"{var} [{task.units.get(var, '-')}]")
            ax.grid(alpha=0.3)
        axes[0, col].set_title(name)
        axes[-1, col].set_xlabel("time [h]")
    handles, labels = [], []
    for ax in axes[:, 0]:
        h, lab = ax.get_legend_handles_labels()
        for hh, ll in zip(h, lab):
            if ll not in labels:
                handles.append(hh)
                labels.append(ll)
    ncol = max(1, min(len(labels), 3 * len(names)))
    fig.legend(handles, labels, loc="lower center", ncol=ncol, frameon=False)
    legend_rows = -(-len(labels) // ncol)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.035 * legend_rows * 4 / max(4, len(rows)), 1, 0.97 if title else 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def filter_figure(episode: Episode, trace: dict[str, np.ndarray], task: Task | None = None, instants: int = 4,
                  title: str = "") -> plt.Figure:
    """One episode behind a predictive safety filter: the output of the task's first operating limit (the
    reactor: T, with T_max) and the filter's predictions of it at ``instants`` evenly spaced steps (top),
    and per input the policy's proposal against the applied input.

    Args:
        episode: the closed-loop episode (``infos["state"]``: (steps + 1, nx)).
        trace: ``proposal``, ``applied`` ((steps, nu), physical units) and ``predicted`` ((steps, horizon + 1),
            the limit's output along each step's plan), as the comparative study stores them.
        task: the task of the episode (default: the polymerisation CSTR); it needs an operating limit.
        instants: steps whose predictions are drawn.
        title: figure title.

    Returns:
        The figure (the caller saves and closes it, e.g. with :func:`save_figure`).
    """
    task = pc.TASK if task is None else task
    if not task.limits:
        raise ValueError(f"{task.name} has no operating limit whose predictions could be drawn")
    m = task.model
    limit = task.limits[0]
    proposal, applied = np.asarray(trace["proposal"], float), np.asarray(trace["applied"], float)
    predicted = np.asarray(trace["predicted"], float)
    if proposal.shape != applied.shape or proposal.shape[0] != predicted.shape[0]:
        raise ValueError(f"trace shapes disagree: proposal {proposal.shape}, applied {applied.shape}, "
                         f"predicted {predicted.shape}")
    hours = m.dt / PER_HOUR[task.time_unit]
    x = np.asarray(episode.infos["state"], float)
    t = np.arange(len(x)) * hours
    y = np.asarray(limit.value(x, task.nominal, task.states), float)
    fig, axes = plt.subplots(1 + m.nu, 1, figsize=(10.5, 2.6 * (1 + m.nu) + 0.4), sharex=True)
    ax = axes[0]
    ax.plot(t, y, color="C0", lw=1.8, label="plant")
    unit = f" {limit.unit}".rstrip() if limit.unit else ""
    for edge, word in ((limit.high, "max"), (limit.low, "min")):
        if np.isfinite(edge):
            ax.axhline(edge, color="tab:red", lw=1.2, label=f"{limit.name}_{word} = {edge:g}{unit}")
    n = len(predicted)
    picks = np.unique(np.linspace(0, n - 1, instants).round().astype(int)) if n else np.zeros(0, int)
    for j, k in enumerate(picks):
        tk = (k + np.arange(predicted.shape[1])) * hours
        ax.plot(tk, predicted[k], color=f"C{j + 1}", ls="--", lw=1.2, label=f"predicted at {k * hours:g} h")
    ax.set_ylabel(f"{limit.name} [{limit.unit or '-'}]")
    # outside the axes: inside, wherever it goes, it hides a predicted horizon or the plant
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0.0)
    for i, name in enumerate(m.inputs):
        ax = axes[1 + i]
        ax.step(t[:len(proposal)], np.clip(proposal[:, i], m.u_low[i], m.u_high[i]), where="post", color="C7",
                lw=1.2, ls="--", label="proposal (policy)")
        ax.step(t[:len(applied)], applied[:, i], where="post", color="C0", lw=1.6, label="applied (filter)")
        ax.set_ylabel(f"{name} [{task.units.get(name, '-')}]")
        if i == 0:
            ax.legend(loc="best", fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    axes[-1].set_xlabel("time [h]")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def save_figure(fig: plt.Figure, path: str | os.PathLike, dpi: int = 110) -> None:
    """Write ``fig`` to ``path`` (PNG or PDF by extension) and close it."""
    fig.savefig(path, dpi=dpi)
    plt.close(fig)


def distribution_figure(
    metrics: dict,
    variants: Sequence[str],
    scenarios: Sequence[str],
    controllers: Sequence[str],
    path: str | os.PathLike,
    task: Task | None = None,
) -> None:
    """Per-seed cost, final offset of the first tracked state and intervals outside the operating limits:
    one column per scenario, one point per episode.

    Args:
        metrics: ``(variant, scenario, controller) -> list of EpisodeMetrics``.
        task: the task of the episodes (default: the polymerisation CSTR).
    """
    task = pc.TASK if task is None else task
    rows = [("cost", "episode cost", True)]
    if task.setpoint_names:
        s0 = task.setpoint_names[0]
        rows.append((f"final_abs_e{s0}", f"final |e_{s0}| [{task.units.get(s0, '-')}]", True))
    rows.append(("violations", "intervals outside the limits", False))
    fig, axes = plt.subplots(len(rows), len(scenarios), figsize=(4.8 * len(scenarios), 9.0), squeeze=False)
    rng = np.random.default_rng(0)  # jitter only
    width = 0.8 / max(1, len(variants))
    for col, scenario in enumerate(scenarios):
        for row, (attr, label, log) in enumerate(rows):
            ax = axes[row, col]
            for v, variant in enumerate(variants):
                for c, controller in enumerate(controllers):
                    ms = metrics.get((variant, scenario, controller), [])
                    y = np.array([m[attr] for m in ms], dtype=float)
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


def loss_figure(steps: np.ndarray, curves: dict[str, np.ndarray], path: str | os.PathLike, title: str = "") -> None:
    """Training curves, one panel each, against the gradient step; log scale where a curve stays positive.

    Args:
        steps: (n,) gradient step of each point.
        curves: name -> (n,) values (e.g. block means of a loss).
        path: output file (PNG or PDF by extension).
        title: figure title.
    """
    fig, axes = plt.subplots(1, len(curves), figsize=(3.6 * len(curves), 3.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], curves.items()):
        ax.plot(steps, values, lw=1.2)
        if np.all(values > 0):
            ax.set_yscale("log")
        ax.set_title(name)
        ax.set_xlabel("gradient step")
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def prediction_figure(ep: Episode, solutions: Sequence, horizon: int, path: str | os.PathLike, instants: int = 4,
                      title: str = "") -> None:
    """P, T, f_I, T_c of an NMPC episode (left) and its first 2 horizons with the NMPC's predictions (right).

    ``solutions``: the NMPC's solution of each interval (``x_plan``, ``u_plan``); the predicted state and input
    trajectories are drawn at ``instants`` instants spread over the first ``horizon``, where the transient is.
    """
    x = ep.infos["state"]
    hours = pc.DT / 3600.0
    t = np.arange(len(x)) * hours
    u = np.clip(ep.actions, pc.U_LOW, pc.U_HIGH)
    sp = ep.infos["setpoint"][0]
    n = len(solutions)
    picks = np.unique(np.linspace(0, min(horizon, n - 1), instants).astype(int)) if n else np.zeros(0, int)
    fig, axes = plt.subplots(4, 2, figsize=(12, 9.5), sharex="col", sharey="row")
    for col in range(2):
        ax_P, ax_T, ax_f, ax_c = axes[:, col]
        ax_P.plot(t, x[:, 3], color="C0", lw=2, label="plant")
        ax_T.plot(t, x[:, 4], color="C0", lw=2)
        ax_f.step(t[:-1], u[:, 0], where="post", color="C0", lw=2)
        ax_c.step(t[:-1], u[:, 1], where="post", color="C0", lw=2)
        ax_P.axhline(sp[0], color="k", ls=":", lw=1, label="setpoint")
        ax_T.axhline(sp[1], color="k", ls=":", lw=1)
        ax_T.axhline(pc.T_MAX, color="tab:red", lw=1, label=f"T_max = {pc.T_MAX:g} K")
        ax_T.axhspan(pc.T_MAX, pc.T_MAX + 100, color="tab:red", alpha=0.12)
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
        ax_c.set_xlabel("time [h]")
    for j, k in enumerate(picks):
        sol = solutions[k]
        tk = (k + np.arange(len(sol.x_plan))) * hours
        kw = dict(color=f"C{j + 1}", lw=1.3, ls="--")
        ax_P, ax_T, ax_f, ax_c = axes[:, 1]
        ax_P.plot(tk, sol.x_plan[:, 3], label=f"prediction at {k * hours:g} h", **kw)
        ax_T.plot(tk, sol.x_plan[:, 4], **kw)
        ax_f.step(tk[:-1], sol.u_plan[:, 0], where="post", **kw)
        ax_c.step(tk[:-1], sol.u_plan[:, 1], where="post", **kw)
    axes[0, 1].set_xlim(0, 2 * horizon * hours)
    axes[0, 0].set_title("episode")
    axes[0, 1].set_title("first two horizons, with NMPC predictions")
    axes[1, 0].set_ylim(min(335.0, np.nanmin(x[:, 4]) - 2), pc.T_MAX + 4)
    axes[2, 0].set_ylim(pc.U_LOW[0] - 0.1, pc.U_HIGH[0] + 0.1)
    axes[3, 0].set_ylim(pc.U_LOW[1] - 2, pc.U_HIGH[1] + 2)
    for ax, label in zip(axes[:, 0], ("P [kg/m³]", "T [K]", "f_I [kg/h]", "T_c [K]")):
        ax.set_ylabel(label)
    handles, labels = axes[0, 1].get_legend_handles_labels()
    h2, l2 = axes[1, 1].get_legend_handles_labels()
    fig.legend(handles + h2, labels + l2, loc="lower center", ncol=4, frameon=False)
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.05, 1, 0.97 if title else 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)



def cost_surface_figure(
    model: ConvexCostModel,
    obs: np.ndarray,
    policy_action: np.ndarray,
    box: ActionBox,
    path: str | os.PathLike,
    trust: float,
    gd_config: GDConfig | None = None,
    data_actions: np.ndarray | None = None,
    title: str = "",
    grid: int = 161,
) -> dict[str, np.ndarray]:
    """The learned cost over the input box at one state, with the policy action, GD path and exact optimum.

    Left: f(obs, ·) over the whole input box with its exact minimiser (the LP, λ = 0) and, if given, the
    dataset's actions. Right: the correction objective f + λ/2‖·‖² near the policy action, the projected
    gradient path from the policy action and the exact QP optimum; ``box`` bounds the inputs, ``trust`` is λ.
    Returns the points drawn (physical units).
    """
    from safectrl.safety.correction import ExactCorrector, GDConfig, GradientCorrector  # torch, cvxpy: on use

    obs = np.asarray(obs, dtype=float)[None]
    lo, hi = box.bounds(obs)
    x = model.state_features(obs)
    y_lo, y_hi = model.scale_action(lo), model.scale_action(hi)
    y_ref = model.scale_action(np.clip(np.asarray(policy_action, dtype=float)[None], lo, hi))
    lp = ExactCorrector(model.picnn, 0.0).correct(x, y_ref, y_lo, y_hi)
    qp = ExactCorrector(model.picnn, trust).correct(x, y_ref, y_lo, y_hi)
    gd = GradientCorrector(model.picnn, trust, gd_config or GDConfig()).correct(x, y_ref, y_lo, y_hi, record_path=True)
    points = {
        "policy": model.unscale_action(y_ref)[0],
        "lp_optimum": model.unscale_action(lp.action)[0],
        "qp_optimum": model.unscale_action(qp.action)[0],
        "gd_path": model.unscale_action(gd.path[:, 0]),
    }
    std = model.action_std.numpy()
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 5.2))
    half = np.maximum(4 * std, np.abs(points["qp_optimum"] - points["policy"]) * 1.5)
    windows = [(lo[0], hi[0]), (np.maximum(lo[0], points["policy"] - half), np.minimum(hi[0], points["policy"] + half))]
    for k, (ax, (w_lo, w_hi)) in enumerate(zip(axes, windows)):
        f_I, T_c = np.meshgrid(np.linspace(w_lo[0], w_hi[0], grid), np.linspace(w_lo[1], w_hi[1], grid))
        acts = np.stack([f_I.ravel(), T_c.ravel()], axis=1)
        cost = model.predict(np.repeat(obs, len(acts), axis=0), acts)
        if k == 1:
            trust_term = 0.5 * trust * np.sum((model.scale_action(acts) - y_ref) ** 2, axis=1)
            cost = cost + trust_term * float(model.cost_std)
        cs = ax.contourf(f_I, T_c, cost.reshape(f_I.shape), levels=30, cmap="viridis")
        fig.colorbar(cs, ax=ax, label="predicted cost-to-go" + (" + trust term" if k else ""))
        if k == 0 and data_actions is not None:
            ax.scatter(data_actions[:, 0], data_actions[:, 1], s=2, c="silver", alpha=0.3, lw=0,
                       label="dataset actions (all states)")
        if k == 1:
            path_pts = points["gd_path"]
            ax.plot(path_pts[:, 0], path_pts[:, 1], "-o", color="tab:orange", ms=3, lw=1.2,
                    label=f"gradient path ({len(path_pts) - 1} steps)")
            ax.plot(*points["qp_optimum"], "*", color="tab:red", ms=16, mec="k",
                    label=f"exact optimum (QP, λ = {trust:g})")
        else:
            ax.plot(*points["lp_optimum"], "*", color="tab:red", ms=16, mec="k", label="exact optimum (LP, λ = 0)")
        ax.plot(*points["policy"], "s", color="w", ms=8, mec="k", label="policy action")
        ax.set_xlim(w_lo[0], w_hi[0])
        ax.set_ylim(w_lo[1], w_hi[1])
        ax.set_xlabel("f_I [kg/h]")
        ax.set_ylabel("T_c [K]")
        ax.set_title("whole input box" if k == 0 else "near the policy action")
        ax.legend(loc="lower left", fontsize=8, framealpha=0.8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return points
