"""SAC, RL-ACR, the MPC regularisers of the RL-ACR tasks, and the RL-ACR study."""

from __future__ import annotations

import json
from dataclasses import replace

import gymnasium as gym
import numpy as np
import pytest
import torch

from safectrl.common.protocol import DecisionMaker
from safectrl.controllers.acr_mpc import REGULARISERS
from safectrl.controllers.nmpc import NMPC, NMPCStats, SolveRecord
from safectrl.rl.acr import AUTHORS_FOCUS_PRETRAINING, RLACR, FocusNetwork, RLACRConfig, pretrain_focus
from safectrl.rl.networks import BoxScaler
from safectrl.rl.rollout import run_episode
from safectrl.rl.sac import SAC, ReplayBuffer, SACConfig, normalised_return, train
from safectrl.studies.acr_study import ACRPreset, report_acr_study, run_acr_study
from safectrl.studies.cli import main

CARTPOLE = "safectrl/CartPoleContinuous-v0"


#: small networks on a shared machine: one torch thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


class _Bandit(gym.Env):
    """One-step task: reward -(a - 0.5)², every episode one interval (a test SAC must solve)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float64)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), dtype=np.float64)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(1), {}

    def step(self, action):
        return np.zeros(1), -float((action[0] - 0.5) ** 2), False, True, {}


class _ConstantPrior:
    def __init__(self, a):
        self.a = np.asarray(a, dtype=float)
        self.resets = 0

    def reset(self, seed=None):
        self.resets += 1

    def act(self, obs):
        return self.a


def test_sac_learns_a_bandit():
    env = _Bandit()
    agent = SAC(env.observation_space, env.action_space, SACConfig(batch_size=64, learning_starts=64), seed=0)
    logs = train(env, agent, 600, seed=0, progress=False)
    assert len(logs) == 600 and agent.updates > 500
    assert abs(agent.act(np.zeros(1))[0] - 0.5) < 0.1


def test_sac_checkpoint_round_trip(tmp_path):
    env = gym.make(CARTPOLE).unwrapped
    a = SAC(env.observation_space, env.action_space, seed=1)
    a.save(tmp_path / "sac")
    b = SAC(env.observation_space, env.action_space, seed=2)
    obs = np.array([0.1, 0.0, 0.05, 0.0])
    assert not np.allclose(a.act(obs), b.act(obs))
    b.load(tmp_path / "sac")
    np.testing.assert_array_equal(a.act(obs), b.act(obs))
    for name in ("actor", "critic", "critic_target"):
        for p, q in zip(getattr(a, name).parameters(), getattr(b, name).parameters()):
            assert torch.equal(p, q)
    assert json.loads((tmp_path / "sac" / "config.json").read_text())["config"]["sac"]["alpha"] == 0.2


def test_scaler_and_buffer_errors():
    with pytest.raises(ValueError, match="finite bounds"):
        BoxScaler(gym.spaces.Box(-np.inf, 1.0, (2,)))
    buf = ReplayBuffer(2, 1, capacity=10_000, extra_action=True)
    with pytest.raises(ValueError, match="prior action"):
        buf.add(np.zeros(2), np.zeros(1), 0.0, np.zeros(2), False)
    for k in range(5000):  # grows past its first allocation
        buf.add(np.full(2, k), np.zeros(1), float(k), np.zeros(2), False, prior_action=np.ones(1))
    assert buf.size == 5000
    batch = buf.sample(np.random.default_rng(0), 32)
    assert torch.all(batch["obs"][:, 0] == batch["reward"]) and torch.all(batch["prior_action"] == 1)


def test_normalised_return_drops_the_failing_interval():
    assert normalised_return(np.array([-1.0, -3.0, -1e4]), failed=True) == -2.0
    assert normalised_return(np.array([-1.0, -3.0]), failed=False) == -2.0


def test_focus_network_starts_at_the_prior_and_buffer_keeps_its_action():
    env = gym.make(CARTPOLE).unwrapped
    prior = _ConstantPrior([3.0])
    agent = RLACR(env.observation_space, env.action_space, prior, seed=0)
    assert agent.pretrain_mse < 1e-8
    obs_batch = env.observation_space.sample()
    assert abs(agent.beta(obs_batch)[0] - 0.999) < 1e-3
    obs, info = env.reset(seed=0)
    agent.begin_episode(0)
    a = agent.explore(obs)
    # before learning starts the RL action is 0: a = beta * a_prior
    assert a[0] == pytest.approx(agent.beta(obs)[0] * 3.0)
    next_obs, r, term, trunc, info = env.step(a)
    agent.observe(obs, a, r, next_obs, term)
    assert agent.sac.buffer._arrays["prior_action"][0, 0] == 3.0
    assert prior.resets == 1


class _CountingPrior(_ConstantPrior):
    """A prior with an NMPC's statistics that records a failed solve on every second call."""

    def __init__(self, a):
        super().__init__(a)
        self.calls = 0
        self.stats = NMPCStats()

    def reset(self, seed=None):
        super().reset(seed)
        self.stats.begin_episode()

    def act(self, obs):
        self.calls += 1
        ok = self.calls % 2 == 1
        self.stats.records.append(SolveRecord("x", ok, not ok, 1, 0.0))
        return self.a


def test_training_log_counts_the_priors_failed_solves_per_episode():
    env = gym.make(CARTPOLE).unwrapped
    prior = _CountingPrior([0.0])
    agent = RLACR(env.observation_space, env.action_space, prior, seed=0)
    logs = train(env, agent, 2, seed=0, progress=False)
    counted = [lg.extras["prior_failed_solves"] for lg in logs]
    assert sum(counted) == prior.stats.failures > 0
    assert counted == [ep.failures for ep in prior.stats.episodes]
    assert counted[0] == logs[0].length // 2  # calls 2, 4, ... of the first episode
    plain = RLACR(env.observation_space, env.action_space, _ConstantPrior([0.0]), seed=0)
    assert "prior_failed_solves" not in train(env, plain, 1, seed=0, progress=False)[0].extras


class _RecordingLearner:
    """A learner that explores with a constant action and records what train hands it."""

    def __init__(self):
        self.seeds, self.transitions = [], []

    def begin_episode(self, seed):
        self.seeds.append(seed)

    def explore(self, obs):
        return np.array([1.0])

    def observe(self, *transition):
        self.transitions.append(transition)

    def end_episode(self):
        return {"extra": 1.0}


class _ResetLog(gym.Wrapper):
    """Records the seed of every reset."""

    def __init__(self, env):
        super().__init__(env)
        self.seeds = []

    def reset(self, *, seed=None, options=None):
        self.seeds.append(seed)
        return self.env.reset(seed=seed, options=options)


def test_training_runs_the_common_episode_loop_with_one_env_stream():
    env = _ResetLog(gym.make(CARTPOLE).unwrapped)
    learner = _RecordingLearner()
    logs = train(env, learner, 2, seed=3, progress=False)
    assert env.seeds == [3, None]  # the env is seeded once, then continues its stream
    assert learner.seeds == [3, 4] and [lg.extras["extra"] for lg in logs] == [1.0] * 2
    # every task reports its operating limits, so the log counts the intervals that ended outside them
    assert [lg.extras["violations"] for lg in logs] == [float(lg.failed) for lg in logs]
    assert len(learner.transitions) == sum(lg.length for lg in logs)
    first = run_episode(env, _ConstantPrior([1.0]), seed=3)
    np.testing.assert_array_equal([t[0] for t in learner.transitions[:first.length]], first.observations[:-1])
    np.testing.assert_array_equal([t[3] for t in learner.transitions[:first.length]], first.observations[1:])
    assert logs[0].length == first.length and logs[0].return_ == first.rewards.sum()
    assert logs[0].failed == first.terminations[-1]


def test_rlacr_is_a_decision_maker_with_a_deterministic_act():
    env = gym.make(CARTPOLE).unwrapped
    prior = _ConstantPrior([2.0])
    agent = RLACR(env.observation_space, env.action_space, prior, seed=0)
    assert isinstance(agent, DecisionMaker) and isinstance(agent.sac, DecisionMaker)
    a = run_episode(env, agent, seed=1).actions
    b = run_episode(env, agent, seed=1).actions
    np.testing.assert_array_equal(a, b)
    obs, _ = env.reset(seed=1)
    beta = agent.beta(obs)
    expected = beta * 2.0 + (1 - beta) * agent.sac.policy_action(obs, deterministic=True)
    np.testing.assert_allclose(a[0], np.clip(expected, env.action_space.low, env.action_space.high))
    assert prior.resets == 2


def test_authors_focus_pretraining_fits_the_whole_network_from_a_zero_bias():
    space = gym.spaces.Box(-1.0, 1.0, (3,))
    cfg = RLACRConfig(**{**AUTHORS_FOCUS_PRETRAINING, "focus_pretrain_max_steps": 300})
    torch.manual_seed(0)
    focus = FocusNetwork(3, 1, cfg.focus_hidden)
    assert float(focus.net[-1].bias.detach().abs().max()) == 0.0  # starts at beta = 0.5, as the authors' code
    with pytest.raises(RuntimeError, match="focus pretraining reached MSE"):
        pretrain_focus(focus, BoxScaler(space), cfg, torch.Generator().manual_seed(0))  # 300 << ~7e4 steps
    assert abs(float(focus.net[-1].bias.detach().max())) < 0.01  # Adam at 1e-5 moved it, the bias was not set
    torch.manual_seed(0)
    ours = FocusNetwork(3, 1, cfg.focus_hidden)
    steps, mse = pretrain_focus(ours, BoxScaler(space), RLACRConfig(), torch.Generator().manual_seed(0))
    assert steps == 1 and mse < 1e-8


def test_focus_update_ascends_min_q_of_the_combined_action():
    env = gym.make(CARTPOLE).unwrapped
    cfg = RLACRConfig(focus_lr=1e-3)
    agent = RLACR(env.observation_space, env.action_space, _ConstantPrior([-8.0]), cfg, seed=0)
    rng = np.random.default_rng(0)
    for _ in range(300):
        obs = env.observation_space.sample()
        agent.sac.buffer.add(obs, rng.uniform(-10, 10, 1), 0.0, obs, False, prior_action=np.array([-8.0]))
    batch = agent.sac.buffer.sample(rng, 256)
    first = agent.update_focus(batch)
    for _ in range(30):
        last = agent.update_focus(batch)
    assert last > first


def test_focus_moves_towards_the_action_the_critics_prefer_and_logs_their_gap():
    env = gym.make(CARTPOLE).unwrapped
    agent = RLACR(env.observation_space, env.action_space, _ConstantPrior([-8.0]), RLACRConfig(focus_lr=1e-3),
                  seed=0)
    rng = np.random.default_rng(0)
    for _ in range(300):
        obs = env.observation_space.sample()
        agent.sac.buffer.add(obs, rng.uniform(-10, 10, 1), 0.0, obs, False, prior_action=np.array([-8.0]))
    batch = agent.sac.buffer.sample(rng, 256)
    obs_n = agent.sac.obs_scaler.normalise(batch["obs"])
    with torch.no_grad():
        before = agent.focus(obs_n).mean().item()
    agent.begin_episode(0)
    for _ in range(30):
        agent.update_focus(batch)
    with torch.no_grad():
        after = agent.focus(obs_n).mean().item()
    gap = agent.end_episode()["q_gap"]
    assert np.isfinite(gap) and gap != 0.0 and after != before
    assert np.sign(after - before) == -np.sign(gap)  # the critics prefer RL (gap > 0): beta falls
    agent.begin_episode(1)
    assert np.isnan(agent.end_episode()["q_gap"])  # no focus update in that episode


@pytest.mark.parametrize("env_id", ["safectrl/Glucose-v0", "safectrl/KlattEngellCSTR-v0", CARTPOLE])
def test_regulariser_keeps_the_actual_plant_safe(env_id):
    """The MPC on the estimated model runs a whole episode on the actual plant without failure, every solve
    converging and every input inside the bounds (the premise of RL-ACR)."""
    env = gym.make(env_id).unwrapped
    mpc = REGULARISERS[env_id]()
    assert isinstance(mpc, NMPC) and isinstance(mpc, DecisionMaker)
    ep = run_episode(env, mpc, seed=0)
    assert np.all(ep.actions >= env.action_space.low) and np.all(ep.actions <= env.action_space.high)
    assert not ep.failed and ep.length == env.max_steps
    assert mpc.stats.solves == ep.length and mpc.stats.failures == 0


@pytest.mark.slow
def test_biglucose_regulariser_keeps_the_actual_plant_safe():
    test_regulariser_keeps_the_actual_plant_safe("safectrl/BiGlucose-v0")


def test_tiny_acr_study_writes_its_outputs(tmp_path):
    preset = ACRPreset("tiny", seeds=1, episodes=1, pretrain_episodes=1, envs=(CARTPOLE,),
                       methods=("RL-ACR", "SAC", "SAC-pt", "MPC"))
    out = run_acr_study(preset, tmp_path / "run", serial=True, progress=False)
    for name in ("config.json", "episodes.csv", "summary.md", "returns.png"):
        assert (out / name).stat().st_size > 0
    summary = (out / "summary.md").read_text()
    assert "| RL-ACR" in summary and "93.6 (7.3)" in summary  # ours beside the paper's Table 1
    rows = (out / "episodes.csv").read_text().splitlines()
    acr = [r for r in rows if ",RL-ACR," in r]
    assert len(acr) == 1 and acr[0].split(",")[4] == "0"  # RL-ACR did not fail
    assert {"beta_0", "q_gap"} <= set(rows[0].split(","))  # the learner's extras are columns too

    # the same tasks under a preset with two seeds: a partial run, summarised from what has finished
    two = replace(preset, seeds=2)
    report_acr_study(two, out, progress=False)
    summary = (out / "summary.md").read_text()
    assert "Partial: 4 of 8 tasks finished" in summary
    assert "0 ± 0 (n=1)" in summary  # RL-ACR's failures over the one finished seed
    per_seed = next(line for line in summary.splitlines() if line.startswith("| RL-ACR") and ", -" in line)
    assert per_seed.split("|")[2].strip() == "0, -"
    assert len((out / "episodes.csv").read_text().splitlines()) == len(rows)


def test_study_report_needs_a_run_and_is_only_for_acr(tmp_path, capsys):
    assert main(["study", "acr", "report", "--out", str(tmp_path / "none")]) == 1
    assert "no RL-ACR run" in capsys.readouterr().err
    (tmp_path / "empty" / "tasks").mkdir(parents=True)
    assert main(["study", "acr", "report", "--out", str(tmp_path / "empty")]) == 1
    assert "no finished task" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        main(["study", "report"])
    assert exc.value.code == 2 and "invalid choice: 'report'" in capsys.readouterr().err


def test_study_command_takes_acr_and_checks_the_preset(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["study", "acr", "--preset", "huge"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


@pytest.mark.slow
def test_acr_quick_preset_runs_from_the_command_line(tmp_path):
    assert main(["study", "acr", "--preset", "quick", "--out", str(tmp_path / "q")]) == 0
    text = (tmp_path / "q" / "summary.md").read_text()
    assert "CartPole (ours)" in text and "CSTR (ours)" in text


class _HotLearner:
    """Full initiator and the hottest coolant: drives the reactor over T_max (and to a runaway)."""

    def begin_episode(self, seed):
        pass

    def explore(self, obs):
        from safectrl.models import polycstr as pc

        return np.array(pc.U_HIGH, dtype=float)

    def observe(self, *transition):
        pass

    def end_episode(self):
        return {}


def test_training_logs_count_the_reactors_violations():
    from safectrl.models import polycstr as pc
    from safectrl.rl.env import TaskEnv
    from safectrl.rl.sac import train

    logs = train(TaskEnv(pc.TASK, "grade_up", max_steps=60), _HotLearner(), episodes=1, progress=False)
    assert logs[0].extras["violations"] >= 1
    assert logs[0].failed  # a runaway ends the episode; its intervals above T_max are still counted


class _ActionLog(gym.Wrapper):
    """Records every action the env's step receives, as given."""

    def __init__(self, env):
        super().__init__(env)
        self.received = []

    def step(self, action):
        self.received.append(np.array(action, copy=True))
        return self.env.step(action)


class _Halving:
    """A shield that applies half of each proposal and keeps what it did (proposals and applied actions)."""

    def __init__(self, policy):
        self.policy = policy
        self.proposals, self.applied, self.resets = [], [], 0

    def reset(self, seed=None):
        self.resets += 1
        self.policy.reset(seed=seed)

    def act(self, obs):
        a = np.asarray(self.policy.act(obs), dtype=float)
        self.proposals.append(a.copy())
        u = 0.5 * a
        self.applied.append(u)
        return u

    def episode_report(self):
        return {"interventions": 1.0, "fallbacks": 0}


def _stored_actions(buffer):
    return buffer._arrays["action"][: buffer.size]


def _short_cartpole(max_steps=40):
    from safectrl.rl.env import TaskEnv

    return TaskEnv(CARTPOLE, max_steps=max_steps)


@pytest.mark.parametrize("kind", ["sac", "rlacr"])
def test_a_shielded_learner_stores_the_action_the_env_received(kind):
    env = _ActionLog(_short_cartpole())
    cfg = SACConfig(learning_starts=16, batch_size=8)
    if kind == "sac":
        agent = SAC(env.observation_space, env.action_space, cfg, seed=0)
        buffer = agent.buffer
    else:
        agent = RLACR(env.observation_space, env.action_space, _ConstantPrior([6.0]), RLACRConfig(sac=cfg),
                      seed=0)
        buffer = agent.sac.buffer
    shields = []

    def shield(policy):
        shields.append(_Halving(policy))
        return shields[-1]

    logs = train(env, agent, 3, seed=0, progress=False, shield=shield)
    (halving,) = shields  # built once, before the first episode
    assert halving.resets == 3 and buffer.size == len(env.received) == sum(lg.length for lg in logs) > 16
    np.testing.assert_array_equal(np.asarray(halving.applied), np.asarray(env.received))
    # the buffer holds what the env got (in its float32), not the learner's proposal
    np.testing.assert_array_equal(_stored_actions(buffer), np.asarray(env.received, dtype=np.float32))
    assert not np.allclose(_stored_actions(buffer), np.asarray(halving.proposals, dtype=np.float32))
    if kind == "rlacr":  # the shield wrapped the combined action: before learning, beta * a_prior, halved
        assert halving.proposals[0][0] == pytest.approx(0.999 * 6.0, rel=1e-3)
        assert np.all(buffer._arrays["prior_action"][: buffer.size] == 6.0)
    assert [lg.extras["shield_interventions"] for lg in logs] == [1.0] * 3
    assert all(lg.extras["shield_decision_time"] > 0 for lg in logs)


def test_training_without_a_shield_is_unchanged_by_the_shield_argument():
    env = _short_cartpole()
    cfg = SACConfig(learning_starts=16, batch_size=8)
    runs = []
    for shield in (None, lambda policy: policy):  # the identity shield: the same actions, the same learning
        agent = SAC(env.observation_space, env.action_space, cfg, seed=4)
        logs = train(env, agent, 3, seed=4, progress=False, shield=shield)
        runs.append(([lg.return_ for lg in logs], _stored_actions(agent.buffer).copy(), logs[0].extras))
    assert runs[0][0] == runs[1][0]
    np.testing.assert_array_equal(runs[0][1], runs[1][1])
    assert "shield_decision_time" not in runs[0][2] and "shield_decision_time" in runs[1][2]
    with pytest.raises(TypeError, match="shield must return a decision-maker"):
        train(env, SAC(env.observation_space, env.action_space, cfg, seed=4), 1, progress=False,
              shield=lambda policy: object())


def test_sac_trains_behind_the_predictive_safety_filter():
    """SAC+PSF on an RL-ACR plant, a few steps: the env gets the filter's input, the buffer keeps it, and the
    log has the filter's statistics per episode."""
    from safectrl.rl.env import TaskEnv
    from safectrl.studies.acr_study import make_shield, plant_params

    env = _ActionLog(TaskEnv(CARTPOLE, plant=plant_params(CARTPOLE, "actual"), max_steps=12))
    agent = SAC(env.observation_space, env.action_space, SACConfig(learning_starts=8, batch_size=4), seed=0)
    filters = []

    def shield(policy):
        filters.append(make_shield(CARTPOLE)(policy))
        return filters[-1]

    logs = train(env, agent, 2, seed=1000, progress=False, shield=shield)
    record = filters[0].record.arrays()  # the last episode's
    n = logs[-1].length
    np.testing.assert_array_equal(record["applied"], np.asarray(env.received[-n:]))
    np.testing.assert_array_equal(_stored_actions(agent.buffer), np.asarray(env.received, dtype=np.float32))
    assert agent.updates > 0
    for lg in logs:
        assert {"shield_interventions", "shield_certified", "shield_fallbacks", "shield_rejected_plans",
                "shield_soft", "shield_mean_abs_du_F"} <= set(lg.extras)
        assert 0.0 <= lg.extras["shield_interventions"] <= 1.0
    threshold = filters[0].config.intervention_threshold * 20.0  # CartPole's force range: 20 N
    assert logs[-1].extras["shield_interventions"] == pytest.approx(
        np.mean(np.abs(record["applied"] - np.clip(record["proposal"], -10, 10))[:, 0] > threshold))


def test_tiny_acr_study_with_the_filtered_methods(tmp_path, monkeypatch):
    """SAC+PSF and RL-ACR+PSF through the study (episodes cut to a few intervals): failures and the filter's
    statistics per seed in the results and the summary; a run resumes with methods added (they are not part
    of its fingerprint), its finished task read back."""
    from safectrl.rl.env import TaskEnv
    from safectrl.studies import acr_study
    from safectrl.studies.executor import ResultStore

    monkeypatch.setattr(acr_study, "make_env", lambda env_id, plant: TaskEnv(
        env_id, plant=acr_study.plant_params(env_id, plant), max_steps=8))
    sac_only = ACRPreset("tiny", seeds=1, episodes=2, pretrain_episodes=1, envs=(CARTPOLE,), methods=("SAC",))
    out = run_acr_study(sac_only, tmp_path / "run", serial=True, progress=False)
    store = ResultStore(out / "tasks")
    sac_key = acr_study._key(CARTPOLE, "SAC", 0, sac_only)
    first = store.stored([sac_key])[sac_key]["wall_time"]
    preset = replace(sac_only, methods=("RL-ACR+PSF", "SAC+PSF", "SAC"))
    assert preset.methods == ("SAC", "SAC+PSF", "RL-ACR+PSF")  # METHODS' order
    run_acr_study(preset, out, serial=True, progress=False)
    assert store.stored([sac_key])[sac_key]["wall_time"] == first  # resumed, not recomputed
    for method in ("SAC+PSF", "RL-ACR+PSF"):
        key = acr_study._key(CARTPOLE, method, 0, preset)
        r = store.stored([key])[key]
        assert r["failed"].shape == (2,) and np.all(r["length"] <= 8)
        for stat in ("interventions", "certified", "fallbacks", "rejected_plans", "soft", "decision_time"):
            assert r[f"shield_{stat}"].shape == (2,) and np.all(np.isfinite(r[f"shield_{stat}"]))
        assert {"eval_shield_interventions", "eval_unfiltered_return", "eval_unfiltered_failed"} <= set(r)
    summary = (out / "summary.md").read_text()
    assert "| SAC+PSF" in summary and "| RL-ACR+PSF" in summary and "predictive safety filter" in summary
    filter_rows = [line for line in summary.splitlines() if line.startswith("| CartPole | ")]
    assert [row.split("|")[2].strip() for row in filter_rows] == ["SAC+PSF", "RL-ACR+PSF"]
    assert "Time per RL-ACR training step" not in summary  # RL-ACR itself did not run
    header = (out / "episodes.csv").read_text().splitlines()[0].split(",")
    assert {"shield_interventions", "shield_fallbacks", "shield_rejected_plans"} <= set(header)


def test_acr_preset_checks_its_methods():
    with pytest.raises(ValueError, match="unknown methods \\['PPO'\\]"):
        ACRPreset("x", seeds=1, episodes=1, pretrain_episodes=0, envs=(CARTPOLE,), methods=("SAC", "PPO"))
    with pytest.raises(ValueError, match="at least one method"):
        ACRPreset("x", seeds=1, episodes=1, pretrain_episodes=0, envs=(CARTPOLE,), methods=())


def test_an_acr_preset_runs_a_part_at_a_time_into_one_folder(tmp_path, monkeypatch):
    """``envs``/``methods`` run a part of a preset (episodes cut to a few intervals): the summary covers the
    preset's envs, the part not run yet counted missing; the next part resumes the folder and completes it."""
    from safectrl.rl.env import TaskEnv
    from safectrl.studies import acr_study

    monkeypatch.setattr(acr_study, "make_env", lambda env_id, plant: TaskEnv(
        env_id, plant=acr_study.plant_params(env_id, plant), max_steps=6))
    glucose = "safectrl/Glucose-v0"
    preset = ACRPreset("tiny", seeds=1, episodes=1, pretrain_episodes=0, envs=(CARTPOLE, glucose),
                       methods=("RL-ACR", "SAC"))
    out = run_acr_study(preset, tmp_path / "run", serial=True, progress=False, methods=("SAC",),
                        envs=("Glucose",))
    summary = (out / "summary.md").read_text()
    assert "Partial: 1 of 2 tasks finished" in summary  # SAC on both envs; only Glucose's ran
    sac = next(line for line in summary.splitlines() if line.startswith("| SAC ") and ", seeds" not in line)
    assert "| RL-ACR " not in summary  # the methods run, not the preset's
    run_acr_study(preset, out, serial=True, progress=False, methods=("SAC",), envs=(CARTPOLE,))
    summary = (out / "summary.md").read_text()
    assert "Partial" not in summary and sac != next(
        line for line in summary.splitlines() if line.startswith("| SAC ") and ", seeds" not in line)
    assert {row.split(",")[0] for row in (out / "episodes.csv").read_text().splitlines()[1:]} == {
        "CartPole", "Glucose"}
    with pytest.raises(ValueError, match="envs \\['PolyCSTR'\\] are not in the 'tiny' preset"):
        run_acr_study(preset, out, serial=True, progress=False, envs=("PolyCSTR",))
    with pytest.raises(ValueError, match="unknown methods \\['PPO'\\]"):
        run_acr_study(preset, out, serial=True, progress=False, methods=("PPO",))


def test_an_acr_preset_runs_some_of_its_seeds(tmp_path, monkeypatch):
    """``seeds`` runs only those of the preset's seeds; the summary counts the others missing, the next part
    completes the folder, and a seed outside the preset is refused before anything runs."""
    from safectrl.rl.env import TaskEnv
    from safectrl.studies import acr_study

    monkeypatch.setattr(acr_study, "make_env", lambda env_id, plant: TaskEnv(
        env_id, plant=acr_study.plant_params(env_id, plant), max_steps=6))
    preset = ACRPreset("tiny", seeds=2, episodes=1, pretrain_episodes=0, envs=(CARTPOLE,), methods=("SAC",))
    out = run_acr_study(preset, tmp_path / "run", serial=True, progress=False, seeds=(1,))
    assert "Partial: 1 of 2 tasks finished" in (out / "summary.md").read_text()
    assert {row.split(",")[2] for row in (out / "episodes.csv").read_text().splitlines()[1:]} == {"1"}
    run_acr_study(preset, out, serial=True, progress=False, seeds=(0, 1))  # seed 1 read back, seed 0 run
    assert "Partial" not in (out / "summary.md").read_text()
    assert {row.split(",")[2] for row in (out / "episodes.csv").read_text().splitlines()[1:]} == {"0", "1"}
    with pytest.raises(ValueError, match="seeds \\[2\\] are not in the 'tiny' preset; valid seeds: 0 to 1"):
        run_acr_study(preset, out, serial=True, progress=False, seeds=(2,))
