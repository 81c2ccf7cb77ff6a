"""The command line, as a user runs it."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from safectrl.studies.cli import main


def test_data_command_prints_summary(tmp_path, capsys):
    assert main(["data", "--scenario", "startup", "--episodes", "3", "--seed", "0", "--root", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "safectrl/polycstr-startup-pi-n3-s0-v0" in out and "runaways" in out
    assert (tmp_path / "safectrl" / "polycstr-startup-pi-n3-s0-v0").is_dir()


def test_study_quick_writes_its_outputs_and_resumes(tmp_path, capsys, monkeypatch, minari_root):
    """The README's first command, as CI runs it: datasets, training and every controller from scratch."""
    from safectrl.common.faults import FallbackWarning
    from safectrl.studies.study import PRESETS

    monkeypatch.setenv("SAFECTRL_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    out = tmp_path / "run"
    with pytest.warns(FallbackWarning) as given:  # the workers' warnings, once, after the episodes
        assert main(["study", "--preset", "quick", "--out", str(out)]) == 0
    for name in ("config.json", "episodes.csv", "summary.md", "trajectories_nominal.png",
                 "trajectories_mismatch.png", "distributions.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "config.json").read_text())["preset"]["name"] == "quick"
    summary = (out / "summary.md").read_text()
    assert "## nominal" in summary and "## mismatch" in summary and "cost / NMPC oracle" in summary
    quick = PRESETS["quick"]
    rows = [line for line in summary.splitlines() if line.startswith("| startup")]
    assert [r.split("|")[2].strip() for r in rows[:len(quick.controllers)]] == list(quick.controllers)
    assert "nan" not in summary and (out / "psf_mismatch.png").stat().st_size > 0
    episodes = (out / "episodes.csv").read_text().splitlines()
    assert len(episodes) == 1 + len(quick.controllers) * len(quick.scenarios) * len(quick.variants) * quick.eval_seeds
    fallbacks: dict[tuple[str, str], int] = {}
    for r in csv.DictReader(episodes):
        key = (r["variant"], r["controller"])
        fallbacks[key] = fallbacks.get(key, 0) + int(r["fallbacks"])
    # every row reports its fallbacks: lost readings make the PI loops, the policies and the PICNN filters
    # fall back; the NMPC and the PSF estimate through them (no failed solve)
    assert all(fallbacks[("faults", c)] > 0 for c in quick.controllers if "NMPC" not in c and "PSF" not in c)
    assert all(fallbacks[("nominal", c)] == 0 for c in ("PI nominal", "PI dataset", "BC", "IQL")), fallbacks
    assert "| fallbacks / episode |" in summary.split("## Sensor faults")[1].split("\n## ")[0]
    assert len(given) == 1
    head, *lines = str(given[0].message).splitlines()
    faulty = len(quick.controllers) * len(quick.scenarios) * quick.eval_seeds
    assert head.startswith(f"{faulty} of {len(episodes) - 1} episodes fell back or left readings out")
    assert {line.split(":")[0].strip() for line in lines} == {f"faults / {c}" for c in quick.controllers}
    for kind in ("bc-policy", "iql-policy", "cost-model"):
        assert len(list((tmp_path / "artifacts").glob(f"{kind}-*/artifact.json"))) == 3
    capsys.readouterr()
    with pytest.warns(FallbackWarning) as again:  # from the stored episodes
        assert main(["study", "--preset", "quick", "--out", str(out), "--serial"]) == 0
    assert [str(w.message) for w in again] == [str(given[0].message)]
    assert "already done, resuming" in capsys.readouterr().out
    assert (out / "summary.md").read_text() == summary


def _one_line(capsys, command: str) -> str:
    """The single stderr line of a failed command (no traceback), without its prefix."""
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert err.startswith(f"safectrl {command}: ")
    return err.strip()


def test_study_refuses_a_folder_of_another_configuration(tmp_path, capsys):
    from safectrl.studies import runfolder, study

    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"preset": {"name": "other"}}))
    assert main(["study", "--preset", "quick", "--out", str(out)]) == 2
    assert "a run of unrecorded kind" in _one_line(capsys, "study")
    (out / "config.json").unlink()
    runfolder.commit(runfolder.check(out, study.KIND, {"preset": {"name": "other"}}))
    assert main(["study", "--preset", "quick", "--out", str(out)]) == 2
    assert "different configuration (preset.name: \"other\" -> \"quick\"" in _one_line(capsys, "study")


def _main_study_folder(out):
    """A folder as the main study leaves it: its config.json and a finished task."""
    from safectrl.studies import runfolder, study
    from safectrl.studies.executor import ResultStore

    runfolder.commit(runfolder.check(out, study.KIND, {"preset": {"name": "quick"}, "safectrl": "x"}))
    ResultStore(out / "tasks").save("episode/nominal/startup/PI nominal/0", {"cost": 1.0})
    return (out / "config.json").read_bytes(), sorted((out / "tasks").iterdir())


@pytest.mark.parametrize("force", [[], ["--force"]])
def test_acr_study_refuses_the_folder_of_the_main_study_even_with_force(force, tmp_path, capsys):
    out = tmp_path / "run"
    config, tasks = _main_study_folder(out)
    assert main(["study", "acr", "--serial", "--out", str(out), *force]) == 2
    assert "holds a 'comparative' run, not a 'acr' run" in _one_line(capsys, "study acr")
    assert (out / "config.json").read_bytes() == config and sorted((out / "tasks").iterdir()) == tasks
    assert main(["study", "acr", "report", "--out", str(out)]) == 2
    assert "holds a 'comparative' run" in _one_line(capsys, "study acr report")


def test_evaluate_names_a_missing_policy_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "eval"
    assert main(["evaluate", "--policy", "/nonexistent", "--out", str(out)]) == 1
    assert "--policy /nonexistent: no such checkpoint folder" in _one_line(capsys, "evaluate")
    assert not out.exists()


def test_evaluate_refuses_an_out_that_is_a_file_or_under_one(tmp_path, capsys):
    policy = tmp_path / "policy"
    policy.mkdir()
    (tmp_path / "file").write_text("keep me")
    assert main(["evaluate", "--policy", str(policy), "--out", str(tmp_path / "file")]) == 1
    assert "is a file, not a folder" in _one_line(capsys, "evaluate")
    assert main(["evaluate", "--policy", str(policy), "--out", str(tmp_path / "file" / "eval")]) == 1
    assert "cannot make" in _one_line(capsys, "evaluate")
    assert (tmp_path / "file").read_text() == "keep me"


def test_evaluate_refuses_a_read_only_out(tmp_path, capsys):
    import os

    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders (chmod does not stop it); the path-under-a-file case "
                    "is test_evaluate_refuses_an_out_that_is_a_file_or_under_one")
    policy = tmp_path / "policy"
    policy.mkdir()
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    assert main(["evaluate", "--policy", str(policy), "--out", str(locked / "eval")]) == 1
    assert "permission denied" in _one_line(capsys, "evaluate")


@pytest.mark.parametrize("command", [["study"], ["study", "acr"]])
def test_an_unreachable_scheduler_is_one_line_and_nothing_is_written(command, tmp_path, capsys):
    out = tmp_path / "run"
    argv = [*command, "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "1", "--out", str(out)]
    assert main(argv) == 1
    assert "no Dask scheduler answered at tcp://127.0.0.1:9 within 1 s" in _one_line(capsys, " ".join(command))
    assert not out.exists()


def test_safectrl_debug_shows_the_traceback(tmp_path, monkeypatch):
    monkeypatch.setenv("SAFECTRL_DEBUG", "1")
    with pytest.raises(FileNotFoundError, match="no such checkpoint folder"):
        main(["evaluate", "--policy", "/nonexistent"])


def test_a_bad_config_value_is_a_usage_error(capsys):
    assert main(["study", "--connect-timeout", "0"]) == 2
    assert "connect_timeout must be > 0, got 0" in _one_line(capsys, "study")


def test_an_env_outside_the_acr_preset_is_a_usage_error(capsys):
    assert main(["study", "acr", "--envs", "PolyCSTR"]) == 2  # the quick preset has CartPole and CSTR
    assert "are not in the 'quick' preset; valid envs: CartPole, CSTR" in _one_line(capsys, "study acr")


def test_a_seed_outside_the_acr_preset_is_a_usage_error(capsys):
    assert main(["study", "acr", "--seeds", "1", "3"]) == 2  # the quick preset has seeds 0, 1, 2
    assert "seeds [3] are not in the 'quick' preset; valid seeds: 0 to 2" in _one_line(capsys, "study acr")


@pytest.mark.parametrize("argv, message", [
    (["data", "--episodes", "0"], "must be a positive integer"),
    (["data", "--scenario", "shutdown"], "invalid choice"),
    (["study", "--preset", "huge"], "invalid choice"),
    (["study", "--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"], "not allowed with"),
    (["study", "acr", "--serial", "--workers", "2"], "not allowed with"),
    (["study", "acr", "--report"], "unrecognized arguments"),  # a subcommand now: `study acr report`
    (["study", "acr", "--envs", "Mars"], "invalid choice: 'Mars'"),
    (["study", "acr", "--methods", "SAC", "PPO"], "invalid choice: 'PPO'"),
    (["study", "acr", "--seeds", "-1"], "must be >= 0, got -1"),
])
def test_bad_arguments_exit_with_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_console_script_is_installed():
    proc = subprocess.run([sys.executable, "-m", "safectrl.studies.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "study" in proc.stdout


def test_nmpc_command_prints_summary_and_saves_the_prediction_figure(tmp_path, capsys):
    assert main(["nmpc", "episode", "--scenario", "grade_up", "--seed", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "NMPC (oracle), scenario grade_up, seed 3" in out and "solve time median / p95 ms" in out
    assert (tmp_path / "nmpc-grade_up-oracle-seed3.png").stat().st_size > 0
    config = {"scenario": "grade_up", "mismatch": False, "seed": 3, "noise": False, "out": str(tmp_path)}
    from safectrl.studies.runfolder import fingerprint

    assert json.loads((tmp_path / "config.json").read_text()) == {
        "kind": "nmpc-episode", "fingerprint": fingerprint(config), **config}
    capsys.readouterr()
    assert main(["nmpc", "episode", "--scenario", "startup", "--seed", "3", "--out", str(tmp_path)]) == 2
    assert "different configuration (scenario: \"grade_up\" -> \"startup\")" in _one_line(capsys, "nmpc episode")


@pytest.mark.parametrize("argv, message", [
    (["nmpc", "episode", "--scenario", "shutdown"], "invalid choice"),
    (["nmpc", "--scenario", "grade_up"], "invalid choice"),  # a subcommand first
    (["nmpc", "acceptance", "--episodes", "0"], "must be a positive integer"),
    (["nmpc", "backoff-study", "--seed", "1"], "unrecognized arguments"),
])
def test_nmpc_command_rejects_bad_arguments(argv, message, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("spec, message", [
    ("detuned", "expected NAME=package.module:factory"),
    ("mine=custom_controller", "expected package.module:factory"),
    ("mine=no_such_module_here:make", "cannot import 'no_such_module_here'"),
    ("mine=custom_controller:missing", "has no attribute 'missing'"),
    ("mine=custom_controller:NOT_CALLABLE", "is a int, not callable"),
    ("PI nominal=custom_controller:detuned_pi", "the name of a built-in row"),
    ("mine=custom_controller:no_act", "lacks reset(seed=None) or act(obs)"),
])
def test_study_rejects_a_bad_controller_in_one_line_before_writing(spec, message, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["study", "--out", str(out), "--controller", spec]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_study_rejects_a_controller_name_given_twice(tmp_path, capsys):
    argv = ["study", "--out", str(tmp_path / "run"), "--controller", "a=custom_controller:detuned_pi",
            "--controller", "a=custom_controller:ContextChecked"]
    assert main(argv) == 2
    assert "a name given twice" in capsys.readouterr().err


def test_study_acr_report_says_when_there_is_no_run(tmp_path, capsys):
    assert main(["study", "acr", "report", "--out", str(tmp_path / "none")]) == 1
    assert "no RL-ACR run in" in _one_line(capsys, "study acr report")


def test_options_are_the_config_fields_with_their_defaults_and_comments():
    """Each default is written once, in the config; the command line reads it from there."""
    import argparse

    from safectrl.studies import options
    from safectrl.studies.nmpc_study import AcceptanceConfig
    from safectrl.studies.study import StudyConfig

    p = argparse.ArgumentParser()
    options.add_options(p, AcceptanceConfig)
    assert options.from_args(AcceptanceConfig, p.parse_args([])) == AcceptanceConfig()
    cfg = options.from_args(AcceptanceConfig, p.parse_args(["--episodes", "3", "--noise", "--root", "r"]))
    assert (cfg.episodes, cfg.noise, cfg.root, cfg.data_episodes) == (3, True, "r", 100)
    assert "evaluation seeds per scenario and variant (default 10)" in p.format_help()
    p = argparse.ArgumentParser()
    options.add_options(p, StudyConfig)
    assert options.from_args(StudyConfig, p.parse_args([])) == StudyConfig()
    cfg = options.from_args(StudyConfig, p.parse_args(["--controller", "a=m:f", "--controller", "b=m:g",
                                                       "--no-progress"]))
    assert cfg.controller == ("a=m:f", "b=m:g") and cfg.progress is False


def test_cli_restates_no_default():
    """Options come from the studies' config dataclasses (studies/options.py): cli.py adds none of its own."""
    import ast
    from pathlib import Path

    import safectrl.studies.cli as cli

    calls = [n for n in ast.walk(ast.parse(Path(cli.__file__).read_text()))
             if isinstance(n, ast.Call) and getattr(n.func, "attr", "") == "add_argument"]
    assert [ast.unparse(c) for c in calls] == ["parser.add_argument('--version', action='version', "
                                               "version=f'%(prog)s {_version()}')"]
