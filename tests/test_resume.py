"""Online training resumed from its saved state: a run stopped anywhere ends as if it had not stopped."""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import asdict

import numpy as np
import pytest
import torch

from safectrl.common.checkpoint import CheckpointError
from safectrl.rl.acr import RLACR, RLACRConfig
from safectrl.rl.env import TaskEnv
from safectrl.rl.resume import TrainingCheckpoint
from safectrl.rl.sac import SAC, SACConfig, train
from safectrl.studies import acr_study

CARTPOLE = "safectrl/CartPoleContinuous-v0"
#: log entries that are wall-clock times, not results
TIMES = {"step_time", "prior_time", "shield_decision_time", "wall_time"}


#: small networks on a shared machine: one torch thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Stop(Exception):
    """Stands for the process being killed."""


class _StopAfter:
    """A shield that forwards to an inner one (or the explorer) and raises after ``n`` decisions."""

    def __init__(self, inner, n=None):
        self.inner, self.n, self.calls = inner, n, 0

    def reset(self, seed=None):
        self.inner.reset(seed=seed)

    def act(self, obs):
        self.calls += 1
        if self.n is not None and self.calls > self.n:
            raise _Stop
        return self.inner.act(obs)

    def episode_report(self):
        report = getattr(self.inner, "episode_report", None)
        return report() if report is not None else {}


def _learner(kind, env):
    cfg = SACConfig(hidden=(32, 32), learning_starts=12, batch_size=8)
    if kind == "sac+psf":
        return SAC(env.observation_space, env.action_space, cfg, seed=3)
    return RLACR(env.observation_space, env.action_space, acr_study.make_prior(CARTPOLE),
                 RLACRConfig(sac=cfg, focus_pretrain_max_steps=200), seed=3)


def _run(kind, folder=None, stop_after=None):
    """Train 4 short CartPole episodes on the actual plant: SAC behind the real filter, or RL-ACR with its
    real MPC; with a state folder, and stopped after ``stop_after`` decisions."""
    env = TaskEnv(CARTPOLE, plant=acr_study.plant_params(CARTPOLE, "actual"), max_steps=10)
    learner = _learner(kind, env)
    inner = acr_study.make_shield(CARTPOLE) if kind == "sac+psf" else (lambda p: p)
    ckpt = None if folder is None else TrainingCheckpoint(folder, f"test|{kind}", interval=0.0)
    logs = train(env, learner, 4, seed=7, progress=False, shield=lambda p: _StopAfter(inner(p), stop_after),
                 checkpoint=ckpt)
    return logs, learner, env, ckpt


def _results(logs):
    """The logs without their times, as JSON (NaN, e.g. q_gap before the first update, equals NaN)."""
    rows = [{**asdict(lg), **lg.extras} for lg in logs]
    return json.dumps([{k: v for k, v in row.items() if k not in TIMES and k != "extras"} for row in rows])


@pytest.mark.parametrize("kind", ["sac+psf", "rl-acr"])
def test_a_stopped_training_run_resumes_to_the_same_result(kind, tmp_path):
    ref_logs, ref, ref_env, _ = _run(kind)
    with pytest.raises(_Stop):  # killed in the middle of the third episode (10 decisions per episode)
        _run(kind, tmp_path, stop_after=25)
    logs, resumed, env, ckpt = _run(kind, tmp_path)
    assert ckpt.resumed_at == 2 and [lg.episode for lg in logs] == [0, 1, 2, 3]
    assert _results(logs) == _results(ref_logs)
    if kind == "sac+psf":  # the filter solved (not only reused plans): its solves are in the comparison
        assert any(lg.extras["shield_reused_plans"] < 1 for lg in logs)
    sac = resumed if kind == "sac+psf" else resumed.sac
    assert sac.updates > 0 and sac.buffer.size == sum(lg.length for lg in logs)
    # every tensor of the learner (networks, Adam moments, buffer) and every generator, bit for bit
    tensors, record = resumed.training_state()
    ref_tensors, ref_record = ref.training_state()
    assert tensors.keys() == ref_tensors.keys()
    for name, value in tensors.items():
        assert torch.equal(value, ref_tensors[name]), name
    assert json.dumps(record, sort_keys=True) == json.dumps(ref_record, sort_keys=True)
    assert env.rng_state() == ref_env.rng_state()


def test_a_finished_run_is_read_back_without_training(tmp_path):
    logs, _, _, _ = _run("rl-acr", tmp_path)
    again, learner, _, ckpt = _run("rl-acr", tmp_path, stop_after=0)  # a single decision would raise
    assert ckpt.resumed_at == 4 and _results(again) == _results(logs)
    assert learner.sac.buffer.size == sum(lg.length for lg in logs)


def test_training_states_are_verified_and_belong_to_one_run(tmp_path):
    _run("rl-acr", tmp_path)  # slots a and b: episodes 3 and 4 (every episode saved, alternating)
    slots = {s: json.loads((tmp_path / s / "config.json").read_text())["record"]["episodes_done"]
             for s in "ab"}
    assert sorted(slots.values()) == [3, 4]
    newest = max(slots, key=slots.get)
    weights = tmp_path / newest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF  # a flipped byte in the newest state: the older one is used, and the damage said
    weights.write_bytes(bytes(data))
    ckpt = TrainingCheckpoint(tmp_path, "test|rl-acr")
    with pytest.warns(UserWarning, match="not used: .*does not match the weights_sha256"):
        _, record = ckpt.load()
    assert record["episodes_done"] == 3 and ckpt.resumed_at == 3 and ckpt.discarded == [tmp_path / newest]
    warnings.simplefilter("ignore", UserWarning)  # the damaged slot again, below
    with pytest.raises(CheckpointError, match="holds the training state of 'test\\|rl-acr', not of 'other'"):
        TrainingCheckpoint(tmp_path, "other").load()
    env = TaskEnv(CARTPOLE, max_steps=10)
    with pytest.raises(CheckpointError, match="seed 7, not 8"):
        train(env, _learner("rl-acr", env), 4, seed=8, progress=False,
              checkpoint=TrainingCheckpoint(tmp_path, "test|rl-acr"))
    with pytest.raises(CheckpointError, match="holds 3 episodes, more than the 2 asked for"):
        train(env, _learner("rl-acr", env), 2, seed=7, progress=False,
              checkpoint=TrainingCheckpoint(tmp_path, "test|rl-acr"))


def test_a_learner_without_a_training_state_cannot_take_a_checkpoint(tmp_path):
    class Blind:
        def begin_episode(self, seed): ...
        def explore(self, obs): return np.zeros(1)
        def observe(self, *args): ...
        def end_episode(self): return {}

    with pytest.raises(TypeError, match="Blind has no training state"):
        train(TaskEnv(CARTPOLE, max_steps=3), Blind(), 1, progress=False,
              checkpoint=TrainingCheckpoint(tmp_path, "x"))
    with pytest.raises(ValueError, match="identity must be a non-empty string"):
        TrainingCheckpoint(tmp_path, "")
    with pytest.raises(ValueError, match="interval must be a number of seconds >= 0"):
        TrainingCheckpoint(tmp_path, "x", interval=-1)


def test_an_acr_study_task_stopped_midway_resumes_from_its_saved_episodes(tmp_path, monkeypatch):
    """The study end to end: a task killed in its third episode restarts there on the rerun, its result equals
    a clean run's, and its saved state is removed once the result is stored."""
    from safectrl.rl import sac as sac_module
    from safectrl.studies.executor import ResultStore, task_state_dir

    monkeypatch.setattr(acr_study, "make_env", lambda env_id, plant: TaskEnv(
        env_id, plant=acr_study.plant_params(env_id, plant), max_steps=8))
    monkeypatch.setattr(acr_study, "STATE_INTERVAL", 0.0)
    preset = acr_study.ACRPreset("tiny", seeds=1, episodes=4, pretrain_episodes=1, envs=(CARTPOLE,),
                                 methods=("RL-ACR",))
    key = acr_study._key(CARTPOLE, "RL-ACR", 0, preset)
    clean = acr_study.run_acr_study(preset, tmp_path / "clean", serial=True, progress=False)
    expected = ResultStore(clean / "tasks").stored([key])[key]
    assert expected["resumed_at_episode"] == 0 and not task_state_dir(clean / "tasks", key).exists()

    run_episode, calls = sac_module.run_episode, []

    def stopping(*args, **kwargs):  # the process dies as the third training episode starts
        calls.append(1)
        if len(calls) == 3:
            raise _Stop
        return run_episode(*args, **kwargs)

    monkeypatch.setattr(sac_module, "run_episode", stopping)
    with pytest.raises(_Stop):
        acr_study.run_acr_study(preset, tmp_path / "run", serial=True, progress=False)
    state = task_state_dir(tmp_path / "run" / "tasks", key)
    assert (state / "training").is_dir()  # kept: the folder is not removed with its saved progress
    table = acr_study._in_progress(preset, {}, [0], tmp_path / "run")  # what the summary shows meanwhile
    assert table.splitlines()[2].replace(" ", "") == "|CartPole|RL-ACR|0|2of4|0|"
    monkeypatch.setattr(sac_module, "run_episode", run_episode)
    out = acr_study.run_acr_study(preset, tmp_path / "run", serial=True, progress=False)
    got = ResultStore(out / "tasks").stored([key])[key]
    assert got["resumed_at_episode"] == 2 and got["discarded_training_states"] == 0
    assert not state.exists()
    for name, value in expected.items():
        if name not in TIMES | {"resumed_at_episode"}:
            np.testing.assert_array_equal(got[name], value, err_msg=name)
    shutil.rmtree(tmp_path / "clean")


def test_force_discards_the_saved_progress_with_the_results(tmp_path):
    from safectrl.studies import runfolder
    from safectrl.studies.executor import ResultStore, task_state_dir

    store = ResultStore(tmp_path / "tasks")
    store.save("done", {"x": np.arange(3)})
    state = task_state_dir(store.root, "running")
    (state / "training" / "a").mkdir(parents=True)
    (state / "training" / "a" / "config.json").write_text("{}")
    (tmp_path / "tasks" / "notes.txt").write_text("mine")
    assert runfolder.remove_task_files(tmp_path / "tasks") == 1
    assert not state.exists() and "done" not in store and (tmp_path / "tasks" / "notes.txt").exists()
