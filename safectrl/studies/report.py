"""Plain-text and markdown tables: what the CLI prints and what studies write."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Sequence

if TYPE_CHECKING:  # tables stay importable without the model stack
    from safectrl.models.task import Task
    from safectrl.studies.metrics import EpisodeMetrics


def fmt(value: Any, digits: int = 4) -> str:
    """Numbers with ``digits`` significant figures; integers and strings as they are."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if value != 0 and (abs(value) >= 10**digits or abs(value) < 10 ** -(digits - 1)):
            return f"{value:.{digits - 1}e}"
        return f"{value:.{digits}g}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A GitHub-flavoured markdown table with columns padded for reading as plain text too."""
    cells = [[str(h) for h in headers]] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(cells[0], widths)) + " |"]
    lines.append("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    lines += ["| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |" for r in cells[1:]]
    return "\n".join(lines)


def mean_std(values: Sequence[float], digits: int = 4) -> str:
    """``mean ± std`` of the values (population std), NaN-aware."""
    finite = [float(v) for v in values if not math.isnan(float(v))]
    if not finite:
        return "nan"
    m = sum(finite) / len(finite)
    sd = math.sqrt(sum((v - m) ** 2 for v in finite) / len(finite))
    return f"{fmt(m, digits)} ± {fmt(sd, 2)}"


def _limit_words(task: "Task") -> tuple[str, str]:
    """How the table names the operating limits and the unit of their exceedance."""
    limits = task.limits
    if len(limits) == 1 and limits[0].low == -math.inf:
        words = f"{limits[0].name} > {limits[0].name}_max"
    else:
        words = "outside the limits"
    units = {lim.unit for lim in limits}
    return words, (units.pop() if len(units) == 1 else "")


def summary_headers(reference: str, task: "Task | None" = None) -> tuple[str, ...]:
    """Columns of :func:`controller_rows` for ``task`` (default: the polymerisation CSTR): the comparative
    study's table, also ``safectrl evaluate``'s."""
    task = _default(task)
    unit = task.units.get
    offsets = tuple(f"final |e_{s}| {unit(s, '')}".rstrip() for s in task.setpoint_names)
    iae = (f"IAE_{task.setpoint_names[0]} {unit(task.setpoint_names[0], '')}·h",) if task.setpoint_names else ()
    words, exceed_unit = _limit_words(task)
    return ("scenario", "controller", "episodes", "cost (mean ± std)", f"cost / {reference}", *offsets, *iae,
            f"intervals {words}", f"worst exceedance {exceed_unit}".rstrip(), "failures" if task.name != "PolyCSTR"
            else "runaways", "ms / decision")


def controller_rows(scenario: str, by_controller: dict[str, list[EpisodeMetrics]],
                    reference: str | None = None, task: "Task | None" = None) -> list[list[Any]]:
    """Summary rows (see :func:`summary_headers`) of one scenario; costs also relative to ``reference``'s
    episodes on the same seeds (paired ratio), "n/a" without one."""
    task = _default(task)
    sp = task.setpoint_names
    ref = [m.cost for m in by_controller.get(reference, [])] if reference else []
    rows = []
    for controller, ms in by_controller.items():
        ratio = mean_std([m.cost / r for m, r in zip(ms, ref)]) if ref and len(ref) == len(ms) else "n/a"
        rows.append([
            scenario, controller, len(ms), mean_std([m.cost for m in ms]), ratio,
            *(mean_std([m[f"final_abs_e{s}"] for m in ms]) for s in sp),
            *((mean_std([m[f"iae_{sp[0]}"] for m in ms]),) if sp else ()),
            int(sum(m.violations for m in ms)),
            float(max(m.worst_exceedance for m in ms)), int(sum(m.failure for m in ms)),
            mean_std([m.decision_ms for m in ms], 2),
        ])
    return rows


def filter_headers(task: "Task | None" = None) -> tuple[str, ...]:
    """Columns of :func:`filter_rows` for ``task`` (default: the polymerisation CSTR)."""
    task = _default(task)
    du = tuple(f"mean |u - a| {u} {task.units.get(u, '')}".rstrip() for u in task.model.inputs)
    return ("scenario", "controller", "episodes", "interventions (share of steps)", *du, "fallbacks / episode",
            "ms / decision")


def filter_rows(scenario: str, by_controller: dict[str, list[EpisodeMetrics]],
                task: "Task | None" = None) -> list[list[Any]]:
    """Rows (see :func:`filter_headers`) of one scenario's safety filters: episodes whose metrics carry a
    filter's ``episode_report()`` entries (``interventions``, ``mean_abs_du_<input>``, ``fallbacks``)."""
    task = _default(task)
    return [[scenario, controller, len(ms), mean_std([m.interventions for m in ms]),
             *(mean_std([m[f"mean_abs_du_{u}"] for m in ms]) for u in task.model.inputs),
             mean_std([m.fallbacks for m in ms]), mean_std([m.decision_ms for m in ms], 2)]
            for controller, ms in by_controller.items()]


def _default(task: "Task | None") -> "Task":
    if task is not None:
        return task
    from safectrl.models import polycstr as pc

    return pc.TASK
