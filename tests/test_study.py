"""The comparative study's predictive-safety-filter rows, the mismatch+noise variant and the filter columns."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from safectrl.models import polycstr as pc

from custom_controller import Constant  # the test tree's controllers

PSF_ROWS = ("BC+PSF", "IQL+PSF", "IQL+PICNN (exact)+PSF")
#: The columns a predictive safety filter's episode_report() adds to episodes.csv on the reactor.
FILTER_COLUMNS = ("interventions", "mean_abs_du_f_I", "mean_abs_du_T_c", "certified", "fallbacks",
                  "rejected_plans", "soft")


def test_mismatch_noise_is_the_actual_plant_behind_noisy_sensors_and_only_in_the_full_preset():
    from safectrl.studies.study import PRESETS, variants

    v = variants(pc.TASK)["mismatch+noise"]
    assert v.plant == pc.TASK.actual != pc.TASK.nominal and v.noise and v.faults is None
    assert "mismatch+noise" in PRESETS["full"].variants and "mismatch+noise" not in PRESETS["quick"].variants


def test_psf_rows_need_their_inner_rows_artifacts_and_run_on_the_reactor_only():
    from safectrl.studies.study import _NEEDS, CONTROLLERS, PRESETS

    assert _NEEDS["BC+PSF"] == _NEEDS["BC"] and _NEEDS["IQL+PSF"] == _NEEDS["IQL"]
    assert _NEEDS["IQL+PICNN (exact)+PSF"] == _NEEDS["IQL+PICNN (exact)"]
    assert all(CONTROLLERS[r].envs == ("safectrl/PolyCSTR-v0",) for r in PSF_ROWS)
    quick = PRESETS["quick"].controllers
    assert "IQL+PSF" in quick and "BC+PSF" not in quick and "IQL+PICNN (exact)+PSF" not in quick
    assert set(PRESETS["full"].controllers) == set(CONTROLLERS)


@pytest.mark.parametrize("algo", ["bc", "iql"])
def test_policy_artifacts_keep_their_keys_at_the_default_precision(algo, monkeypatch):
    """``precision`` was added to the offline configs later: at its default it stays out of the artifact's
    key (artifacts trained before keep being found), any other value gives another artifact."""
    import importlib
    from dataclasses import asdict, replace

    from safectrl.studies import artifacts, study

    module = importlib.import_module(f"safectrl.rl.{algo}")
    config_type = module.BCConfig if algo == "bc" else module.IQLConfig
    preset = study.PRESETS["full"]
    config = study.policy_artifact_config(algo, "startup", preset)
    assert config["config"] == {k: v for k, v in asdict(config_type()).items() if k != "precision"}
    mixed = replace(config_type(), precision="bfloat16")
    monkeypatch.setattr(module, config_type.__name__, lambda: mixed)
    other = study.policy_artifact_config(algo, "startup", preset)
    assert other["config"] == asdict(mixed) and other["config"]["precision"] == "bfloat16"
    assert artifacts.artifact_path(f"{algo}-policy", other) != artifacts.artifact_path(f"{algo}-policy", config)


def test_a_tiny_study_reports_filter_statistics_for_the_psf_rows_only(tmp_path, monkeypatch, minari_root):
    """Every new row on the mismatch and mismatch+noise plants, a few intervals each, in this process."""
    from safectrl.studies.study import StudyPreset, run_study

    monkeypatch.setenv("SAFECTRL_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    controllers = ("PI nominal", "IQL", "IQL+PICNN (exact)", *PSF_ROWS)
    preset = StudyPreset("tiny", eval_seeds=1, data_episodes=2, variants=("mismatch", "mismatch+noise"),
                         controllers=controllers, scenarios=("grade_up",), max_steps=6, bc_steps=30, iql_steps=30,
                         cost_model_epochs=2)
    out = run_study(preset, tmp_path / "run", serial=True, progress=False)
    with open(out / "episodes.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert {(r["variant"], r["controller"]) for r in rows} == {
        (v, c) for v in ("mismatch", "mismatch+noise") for c in controllers}
    assert set(FILTER_COLUMNS) <= set(rows[0])
    for r in rows:
        if r["controller"] in PSF_ROWS:
            values = {c: float(r[c]) for c in FILTER_COLUMNS}
            assert all(math.isfinite(v) for v in values.values()), r
            assert 0.0 <= values["interventions"] <= 1.0 and 0.0 <= values["certified"] <= 1.0
            assert values["mean_abs_du_f_I"] >= 0.0 and values["mean_abs_du_T_c"] >= 0.0
        else:  # every built-in decision-maker reports its fallbacks; the filter statistics are the PSF's
            assert all(r[c] == "" for c in FILTER_COLUMNS if c != "fallbacks"), r
            assert int(r["fallbacks"]) >= 0 and r["cost"] != "" and r["violations"] != ""
    summary = (out / "summary.md").read_text()
    filter_table = summary.split("Safety filters on mismatch:")[1].split("![trajectories]")[0]
    assert "mean |u - a| f_I kg/h" in filter_table and "fallbacks / episode" in filter_table
    assert [line.split("|")[2].strip() for line in filter_table.splitlines() if line.startswith("| grade_up")] \
        == list(PSF_ROWS)
    assert "Safety filters on mismatch+noise:" in summary
    assert (out / "psf_mismatch.png").stat().st_size > 0 and "![psf](psf_mismatch.png)" in summary


def test_the_filter_trace_and_figure_show_proposal_applied_and_predicted_T():
    import matplotlib.pyplot as plt

    from safectrl.controllers.pi import NOMINAL_TUNING, PIController
    from safectrl.rl.env import TaskEnv
    from safectrl.rl.rollout import run_episode
    from safectrl.safety.psf import predictive_safety_filter, with_config
    from safectrl.studies import plots
    from safectrl.studies.study import _filter_statistics, _filter_trace

    env_id, steps, horizon = "safectrl/PolyCSTR-v0", 4, 8
    psf = predictive_safety_filter(Constant(pc.U_HIGH), env_id, config=with_config(env_id, horizon=horizon))
    env = TaskEnv(pc.TASK, scenario="grade_up", plant=pc.TASK.actual, max_steps=steps)
    ep = run_episode(env, psf, seed=3)
    trace = _filter_trace(psf, pc.TASK)
    assert trace["filter_proposal"].shape == trace["filter_applied"].shape == (steps, 2)
    assert np.all(trace["filter_proposal"] == pc.U_HIGH)
    predicted = trace["filter_predicted"]
    assert predicted.shape == (steps, horizon + 1)
    assert np.allclose(predicted, [x[:, pc.TASK.states.index("T")] for x in psf.record.predicted])
    assert _filter_trace(PIController(NOMINAL_TUNING), pc.TASK) == {}
    stats = _filter_statistics("x", psf, {"cost": 1.0})
    assert stats == psf.episode_report() and isinstance(stats["fallbacks"], int)
    assert _filter_statistics("x", PIController(NOMINAL_TUNING), {}) == {"fallbacks": 0}
    assert _filter_statistics("x", Constant(pc.U_HIGH), {}) == {}  # no episode_report(): no entries
    fig = plots.filter_figure(ep, {k[len("filter_"):]: v for k, v in trace.items()}, task=pc.TASK)
    top, f_I, T_c = fig.axes
    assert len(top.lines) == 1 + 1 + steps  # plant, T_max, one prediction per step (4 instants, 4 steps)
    assert top.lines[1].get_ydata()[0] == pc.TASK.limits[0].high
    assert np.allclose(top.lines[2].get_ydata(), predicted[0])
    assert np.allclose(T_c.lines[1].get_ydata()[:steps], trace["filter_applied"][:, 1])
    plt.close(fig)


class _Reporting(Constant):
    def __init__(self, report) -> None:
        super().__init__(pc.U_LOW)
        self.report = report

    def episode_report(self):
        return self.report


@pytest.mark.parametrize("report, message", [
    ({"cost": 1.0}, "entry 'cost' is also an episode metric"),
    ({"mode": "safe"}, r"episode_report\(\)\['mode'\] is a str, not a number"),
    ({"ok": True}, "is a bool, not a number"),
])
def test_a_filter_report_that_cannot_be_a_column_is_refused(report, message):
    from safectrl.studies.study import StudyError, _filter_statistics

    with pytest.raises(StudyError, match=message):
        _filter_statistics("mine", _Reporting(report), {"cost": 2.0})


def test_a_new_filter_configuration_reruns_only_the_filtered_rows(monkeypatch):
    from dataclasses import replace

    from safectrl.safety import psf
    from safectrl.studies import study

    preset = study.PRESETS["quick"]
    before = {t.key for t in study.episode_tasks(preset)[0]}
    env = preset.env
    monkeypatch.setitem(psf.DEFAULTS, env, replace(psf.DEFAULTS[env], tightening=(3.0,)))
    after = {t.key for t in study.episode_tasks(preset)[0]}
    changed = before - after
    assert changed and all("+PSF@psf-" in k for k in changed)  # every +PSF episode gets a new key
    assert len(changed) == sum("+PSF" in k for k in before)
    assert {k for k in before if "+PSF" not in k} <= after  # the other rows' stored episodes still count


class _Warning(Constant):
    """Warns a FallbackWarning on every call (as a decision-maker would once) and a RuntimeWarning once."""

    def __init__(self) -> None:
        super().__init__(pc.U_LOW)
        self.calls = 0

    def act(self, obs):
        import warnings

        from safectrl.common.faults import FallbackWarning

        self.calls += 1
        warnings.warn(f"Mine: call {self.calls} fell back", FallbackWarning, stacklevel=2)
        if self.calls == 1:
            warnings.warn("numerical trouble", RuntimeWarning, stacklevel=2)
        return super().act(obs)


def test_an_episode_records_its_fallback_warnings_and_passes_the_others_on():
    import warnings

    from safectrl.common.faults import FallbackWarning
    from safectrl.rl.env import TaskEnv
    from safectrl.studies.study import _run_recording_fallbacks

    env = TaskEnv(pc.TASK, scenario="grade_up", max_steps=3)
    with warnings.catch_warnings(record=True) as outside:
        warnings.simplefilter("always")
        ep, messages = _run_recording_fallbacks(env, _Warning(), seed=5)
    assert len(ep.rewards) == 3 and messages == [f"Mine: call {k} fell back" for k in (1, 2, 3)]
    assert [(w.category, str(w.message)) for w in outside] == [(RuntimeWarning, "numerical trouble")]
    assert not any(issubclass(w.category, FallbackWarning) for w in outside)


def test_the_fallback_summary_counts_episodes_per_variant_row_and_kind():
    from safectrl.studies.study import fallback_summary

    assert fallback_summary({}) is None
    assert fallback_summary({("faults", "PI nominal"): [[], []]}) is None
    text = fallback_summary({
        ("faults", "PI nominal"): [["PIController: e_P = nan: held"], [], ["PIController: e_T = nan: held"]],
        ("faults", "NMPC oracle"): [["PolyCSTRObserver: T = nan: left out", "NMPC: T replaced", "NMPC: again"],
                                    ["NMPC: P replaced"]],
        ("nominal", "PI nominal"): [[], []],
    })
    head, *lines = text.splitlines()
    assert head.startswith("4 of 7 episodes fell back or left readings out")
    assert lines == ["  faults / PI nominal: 2 of 3 episodes; the first: PIController: e_P = nan: held",
                     "  faults / NMPC oracle: 1 of 2 episodes; the first: PolyCSTRObserver: T = nan: left out",
                     "  faults / NMPC oracle: 2 of 2 episodes; the first: NMPC: T replaced"]
    several = fallback_summary({("faults", "BC"): [["OfflinePolicy: observation [1.0  nan\n 2.0]; held"]]})
    assert several.splitlines()[1] == "  faults / BC: 1 of 1 episodes; the first: OfflinePolicy: observation " \
        "[1.0 nan 2.0]; held"


def test_a_study_gives_one_fallback_warning_for_its_episodes_and_again_on_resume(tmp_path, monkeypatch):
    import warnings

    from safectrl.common.faults import FallbackWarning
    from safectrl.studies.study import StudyPreset, run_study

    monkeypatch.setenv("SAFECTRL_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    preset = StudyPreset("tiny", eval_seeds=2, data_episodes=2, variants=("nominal", "faults"),
                         controllers=("PI nominal",), scenarios=("grade_up",), max_steps=30)
    given = []
    for _ in range(2):  # the second run reads every episode back from the run folder
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = run_study(preset, tmp_path / "run", serial=True, progress=False)
        given.append([str(w.message) for w in caught if issubclass(w.category, FallbackWarning)])
    assert given[0] == given[1] and len(given[0]) == 1
    with open(out / "episodes.csv") as fh:
        rows = list(csv.DictReader(fh))
    held = [int(r["fallbacks"]) for r in rows if r["variant"] == "faults"]
    assert [int(r["fallbacks"]) for r in rows if r["variant"] == "nominal"] == [0, 0]
    head, *lines = given[0][0].splitlines()
    warned = sum(1 for n in held if n)
    assert warned >= 1 and head.startswith(f"{warned} of 4 episodes fell back")
    assert len(lines) == 1 and lines[0].startswith(
        f"  faults / PI nominal: {warned} of 2 episodes; the first: PIController: non-finite setpoint error")
