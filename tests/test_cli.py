"""The command line, as a user runs it."""

from __future__ import annotations

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
    from safectrl.studies.study import CONTROLLERS, PRESETS

    monkeypatch.setenv("SAFECTRL_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    out = tmp_path / "run"
    assert main(["study", "--preset", "quick", "--out", str(out)]) == 0
    for name in ("config.json", "episodes.csv", "summary.md", "trajectories_nominal.png",
                 "trajectories_mismatch.png", "distributions.png"):
        assert (out / name).stat().st_size > 0
    assert json.loads((out / "config.json").read_text())["preset"]["name"] == "quick"
    summary = (out / "summary.md").read_text()
    assert "## nominal" in summary and "## mismatch" in summary and "cost / NMPC oracle" in summary
    rows = [line for line in summary.splitlines() if line.startswith("| startup")]
    assert [r.split("|")[2].strip() for r in rows[:len(CONTROLLERS)]] == list(CONTROLLERS)
    assert "nan" not in summary
    episodes = (out / "episodes.csv").read_text().splitlines()
    quick = PRESETS["quick"]
    assert len(episodes) == 1 + len(CONTROLLERS) * len(quick.scenarios) * len(quick.variants) * quick.eval_seeds
    for kind in ("bc-policy", "iql-policy", "cost-model"):
        assert len(list((tmp_path / "artifacts").glob(f"{kind}-*/artifact.json"))) == 3
    capsys.readouterr()
    assert main(["study", "--preset", "quick", "--out", str(out), "--serial"]) == 0
    assert "already done, resuming" in capsys.readouterr().out
    assert (out / "summary.md").read_text() == summary


def test_study_refuses_a_folder_of_another_configuration(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text(json.dumps({"preset": {"name": "other"}}))
    with pytest.raises(ValueError, match="different configuration"):
        main(["study", "--preset", "quick", "--out", str(out)])


@pytest.mark.parametrize("argv, message", [
    (["data", "--episodes", "0"], "must be a positive integer"),
    (["data", "--scenario", "shutdown"], "invalid choice"),
    (["study", "--preset", "huge"], "invalid choice"),
    (["study", "--workers", "2", "--scheduler", "tcp://127.0.0.1:8786"], "not allowed with"),
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
    assert main(["nmpc", "--scenario", "grade_up", "--seed", "3", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "NMPC (oracle), scenario grade_up, seed 3" in out and "solve time median / p95 ms" in out
    assert (tmp_path / "nmpc-grade_up-oracle-seed3.png").stat().st_size > 0


@pytest.mark.parametrize("argv, message", [
    (["nmpc", "--scenario", "shutdown"], "invalid choice"),
    (["nmpc", "--acceptance", "--backoff-study"], "not allowed with argument"),
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
