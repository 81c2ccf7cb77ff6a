"""The extension path, proven on a plant of the test tree (``tests/heated_tank.py``, one file): one registry line
gives it an env, an NMPC and rows in the comparative study, beside a controller of the test tree."""

from __future__ import annotations

import csv
import json

import pytest

import safectrl
from safectrl.common.faults import FallbackWarning
from safectrl.controllers.task_nmpc import nmpc_for, task_nmpc
from safectrl.models.registry import get_task
from safectrl.rl.env import TaskEnv
from safectrl.rl.rollout import run_episode

TANK = "tests/HeatedTank-v0"
safectrl.register_task(TANK, "heated_tank:TASK")  # the one line


def test_the_new_plant_gets_an_nmpc_that_tracks_and_keeps_its_limit():
    task = get_task(TANK)
    for plant in ("nominal", "actual"):
        ep = run_episode(TaskEnv(TANK, plant=plant), nmpc_for(TANK), seed=0)
        T = ep.infos["state"][:, 0]
        assert not ep.failed and ep.infos["violation"].sum() == 0
        assert abs(T[-1] - task.scenario().setpoint[0]) < 0.5, (plant, T[-1])


def test_the_generic_nmpc_refuses_a_task_whose_observation_lacks_a_state():
    with pytest.raises(ValueError, match="lacks the states .*estimator"):
        task_nmpc(get_task("safectrl/PolyCSTR-v0"))


@pytest.mark.parametrize("serial", [True, False], ids=["serial", "local-pool"])
def test_the_new_plant_has_rows_in_the_comparative_study(serial, tmp_path, monkeypatch):
    """NMPC oracle and mismatched are built for any task; the reactor's PI/BC/IQL rows are not offered; a
    controller of the test tree joins as a row; spawned workers find the plant through the registry entry."""
    from safectrl.studies.study import StudyPreset, run_study

    monkeypatch.setenv("SAFECTRL_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    preset = StudyPreset("tiny", eval_seeds=2, data_episodes=2, variants=("nominal", "mismatch", "noise", "faults"),
                         env=TANK, max_steps=12, custom_controllers={"P": "custom_controller:tank_p"})
    assert preset.controllers == ("NMPC oracle", "NMPC mismatched")
    out = run_study(preset, tmp_path / "run", serial=serial, progress=False)
    rows = list(csv.DictReader(open(out / "episodes.csv")))
    assert {(r["variant"], r["controller"]) for r in rows} == {
        (v, c) for v in ("nominal", "mismatch", "noise", "faults") for c in ("NMPC oracle", "NMPC mismatched", "P")}
    assert set(rows[0]) >= {"final_abs_eT", "iae_T", "peak_T", "violations", "worst_exceedance"}
    cost = {(r["variant"], r["controller"], r["seed"]): float(r["cost"]) for r in rows}
    assert all(cost[(v, "NMPC oracle", s)] <= cost[(v, "P", s)] for v, _, s in cost)
    config = json.loads((out / "config.json").read_text())
    assert config["preset"]["env"] == TANK and config["preset"]["env_target"] == "heated_tank:TASK"
    summary = (out / "summary.md").read_text()
    assert "HeatedTank" in summary and "| heat_up  | P " in summary
    assert (out / "trajectories_noise.png").stat().st_size > 0


def test_reactor_only_rows_are_refused_on_another_plant():
    from safectrl.studies.study import StudyPreset

    with pytest.raises(ValueError, match=r"\['BC'\] cannot run on tests/HeatedTank-v0"):
        StudyPreset("x", eval_seeds=1, data_episodes=1, variants=("nominal",), env=TANK,
                    controllers=("NMPC oracle", "BC"))
    with pytest.raises(ValueError, match="variants \\['wet'\\] are not defined for HeatedTank"):
        StudyPreset("x", eval_seeds=1, data_episodes=1, variants=("wet",), env=TANK)


def test_the_command_line_runs_the_study_on_a_plant_of_another_package(tmp_path, monkeypatch, capsys):
    from safectrl.studies.cli import main

    monkeypatch.setenv("SAFECTRL_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    out = tmp_path / "cli"
    with pytest.warns(FallbackWarning, match=r"episodes fell back or left readings out"):  # faults variant
        assert main(["study", "--env", f"{TANK}=heated_tank:TASK", "--controller", "P=custom_controller:tank_p",
                     "--serial", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "episodes.csv")))
    assert {r["controller"] for r in rows} == {"NMPC oracle", "NMPC mismatched", "P"}
    assert {r["variant"] for r in rows} == {"nominal", "mismatch", "faults"}  # the quick preset's variants
    capsys.readouterr()  # the run's progress bars
    for bad, message in [("nope/X-v0", "unknown task 'nope/X-v0'"),
                         ("a/B-v0=nomodule:TASK", "No module named 'nomodule'"),
                         ("a/B-v0=b", "registered as 'module:attribute'")]:
        assert main(["study", "--env", bad, "--serial", "--out", str(tmp_path / "x")]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("safectrl study: --env") and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()
