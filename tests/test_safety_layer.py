"""Cost-to-go targets and the episode split (safectrl.safety.targets), and the safety layer study on the reactor:
training, filtered closed loop, command line."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from safectrl.models import polycstr as pc
from safectrl.rl.data import Transitions
from safectrl.safety import targets
from safectrl.studies import safety_layer as sl
from safectrl.studies.cli import main


#: small networks on a shared machine: one torch thread (tests/conftest.py)
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def transitions(P: list[list[float]], T: list[list[float]], failed: list[bool]) -> Transitions:
    """Episodes with the given end-of-interval P and T at setpoint (100, 350); other entries arbitrary."""
    rows = []
    for ep, (p_ep, t_ep, fail) in enumerate(zip(P, T, failed)):
        for k, (p, t) in enumerate(zip(p_ep, t_ep)):
            obs = np.array([400.0, p, t, 100.0 - p, 350.0 - t, 1.0, 340.0])
            state = np.array([400.0, 5.0, 1e-6, p, t])
            rows.append((obs, ep, k, fail and k == len(p_ep) - 1, state))
    obs = np.array([r[0] for r in rows])
    n = len(rows)
    return Transitions(obs=obs, action=np.ones((n, 2)), reward=np.zeros(n), next_obs=obs,
                       done=np.array([r[3] for r in rows]), episode=np.array([r[1] for r in rows]),
                       step=np.array([r[2] for r in rows]), state=np.array([r[4] for r in rows]))


def test_cost_targets_by_hand():
    cfg = targets.CostTargetConfig(horizon=2, discount=0.5, weights=(1.0, 2.0), penalty=10.0)
    layout = replace(sl.REACTOR_STAGE_COST, limit=365.0)
    assert sl.REACTOR_STAGE_COST.cap == pc.T_RUNAWAY == 400.0
    # episode 0 runs into the time limit; episode 1 fails (T = 410 K: capped at 400 K for the stage cost)
    tr = transitions([[98.0, 101.0, 100.0], [90.0, 95.0]], [[350.0, 351.0, 366.0], [360.0, 410.0]], [False, True])
    c0 = [2.0, 1.0 + 2.0, 0.0 + 2 * 16.0 + 10.0 * 1.0]
    c1 = [10.0 + 2 * 10.0, 5.0 + 2 * 50.0 + 10.0 * 35.0]
    target, valid = targets.cost_targets(tr.state, tr.next_obs, tr.episode, tr.step, tr.done, layout, cfg)
    expected = [0.5 * c0[0] + 0.25 * c0[1], 0.5 * c0[1] + 0.25 * c0[2], np.nan,
                0.5 * c1[0] + 0.25 * c1[1], 0.5 * c1[1] + 0.25 * c1[1]]
    np.testing.assert_allclose(target, expected)
    np.testing.assert_array_equal(valid, [True, True, False, True, True])


def test_cost_targets_reject_broken_episodes():
    tr = transitions([[98.0, 99.0]], [[350.0, 350.0]], [False])
    gap = Transitions(**{**tr.__dict__, "step": np.array([0, 2])})
    with pytest.raises(ValueError, match="not a contiguous run"):
        sl.cost_targets(gap, sl.SafetyLayerConfig(target=targets.CostTargetConfig(horizon=1)))
    with pytest.raises(ValueError, match="horizon must be >= 1"):
        targets.CostTargetConfig(horizon=0)
    with pytest.raises(ValueError, match="one entry each per tracked column"):
        replace(sl.REACTOR_STAGE_COST, setpoint_error=(3,))
    with pytest.raises(ValueError, match="2 weights for 1 tracked columns"):
        targets.stage_cost(tr.state, np.zeros((2, 1)), replace(sl.REACTOR_STAGE_COST, tracked=(3,),
                           setpoint_error=(3,), setpoint_value=(1,)), targets.CostTargetConfig())


def test_stage_cost_reads_only_the_columns_it_is_given():
    """The targets know arrays, not the reactor: one tracked column and a limit on another."""
    layout = targets.StageCostLayout(tracked=(0,), setpoint_error=(0,), setpoint_value=(1,), limited=1,
                                     limit=1.0, cap=2.0)
    state = np.array([[3.0, 0.5], [4.0, 5.0]])
    cost = targets.stage_cost(state, np.array([[1.0], [1.0]]), layout, targets.CostTargetConfig(weights=(2.0,),
                              penalty=10.0))
    np.testing.assert_allclose(cost, [2 * 2.0, 2 * 3.0 + 10 * (2.0 - 1.0)])


def test_split_is_by_whole_episodes():
    episode = np.repeat(np.arange(10), 7)
    val = targets.split_episodes(episode, 0.2, seed=3)
    assert val.sum() == 14
    for ep in range(10):
        assert len(set(val[episode == ep])) == 1
    assert not np.array_equal(val, targets.split_episodes(episode, 0.2, seed=4))
    with pytest.raises(ValueError, match="at least two episodes"):
        targets.split_episodes(np.zeros(5, int), 0.2, 0)


@pytest.fixture(scope="module")
def small_models(tmp_path_factory):
    """Cost models of grade_up trained briefly on a 4-episode dataset (enough to exercise the plumbing)."""
    root = tmp_path_factory.mktemp("safety")
    cfg = sl.SafetyLayerConfig(target=targets.CostTargetConfig(horizon=3),
                               train=sl.CostModelTrainConfig(hidden=(16, 16), epochs=3, huber_delta=0.01))
    _, rep = sl.train_for_scenario("grade_up", sl.checkpoint_dir(root / "models", "grade_up"), episodes=4,
                                   root=root / "minari", config=cfg, progress=False)
    return root, rep


def test_training_on_a_dataset_reports_validation_error(small_models):
    root, rep = small_models
    assert rep.extra["val_episodes"] == 1 and rep.extra["train_episodes"] == 3
    assert np.isfinite(rep.val_rmse_best) and len(rep.val_rmse) == 3
    meta = sl.load_cost_model_metadata(sl.checkpoint_dir(root / "models", "grade_up"))
    assert meta["config"]["target"]["horizon"] == 3 and meta["scenario"] == "grade_up"
    with pytest.raises(ValueError, match="is for scenario 'grade_up'"):
        sl.load_cost_model(sl.checkpoint_dir(root / "models", "grade_up"))  # loads fine directly ...
        sl.load_scenario_model(root, "models/grade_up")  # ... but not as another scenario's model


def test_cost_model_does_not_see_the_previous_inputs(small_models):
    """The default cost model reads A, P, T, e_P, e_T (SafetyLayerConfig.observed): its prediction cannot
    depend on f_I_prev, T_c_prev, and a checkpoint keeps which columns it reads."""
    root, _ = small_models
    model = sl.load_scenario_model(root / "models", "grade_up")
    assert model.obs_index == sl.SafetyLayerConfig().obs_index == (0, 1, 2, 3, 4)
    assert model.net_obs_dim == 5 and model.obs_dim == len(pc.OBSERVATIONS)
    obs = np.tile([480.0, 90.0, 351.0, 10.0, -1.0, 1.2, 341.0], (3, 1))
    obs[1, 5:] = (0.4, 330.0)
    obs[2, 5:] = (2.4, 349.0)
    cost = model.predict(obs, np.tile([1.5, 340.0], (3, 1)))
    assert cost[0] == cost[1] == cost[2]
    with pytest.raises(ValueError, match="reads columns"):
        model.state_features(obs[:, :4])
    with pytest.raises(ValueError, match="observed must name"):
        sl.SafetyLayerConfig(observed=("A", "f_I"))


@pytest.mark.parametrize("method", ["gd", "exact"])
def test_filtered_pi_runs_a_full_episode_inside_the_input_box(small_models, method):
    root, _ = small_models
    model = sl.load_scenario_model(root / "models", "grade_up")
    filt = sl.make_filter(sl.BASE_POLICIES["PI nominal"]("grade_up"), model, method,
                          sl.FilterSettings(trust=1.0, rate=(0.2, 2.0)))
    run = sl.run_controller("grade_up", filt, [0])
    ep, rec = run.episodes[0], run.records[0]
    assert ep.length == pc.EPISODE_STEPS and rec["action"].shape == (pc.EPISODE_STEPS, 2)
    np.testing.assert_array_equal(ep.actions, rec["action"])
    assert np.all(ep.actions >= pc.U_LOW) and np.all(ep.actions <= pc.U_HIGH)
    steps = np.abs(np.diff(np.vstack([ep.observations[0, 5:7], ep.actions]), axis=0))
    assert np.all(steps <= np.array([0.2, 2.0]) + 1e-9)
    assert not np.any(ep.infos["clipped"])


def test_safety_commands(small_models, tmp_path, capsys):
    root, _ = small_models
    models = str(root / "models")
    assert main(["safety", "eval", "--models", models, "--scenario", "grade_up", "--policy", "pi-nominal",
                 "--methods", "gd", "--episodes", "1", "--out", str(tmp_path / "eval")]) == 0
    out = capsys.readouterr().out
    assert "PI nominal + PICNN (gd)" in out
    for name in ("summary.md", "episodes.csv", "config.json"):
        assert (tmp_path / "eval" / name).stat().st_size > 0
    assert main(["safety", "figure", "--models", models, "--scenario", "grade_up", "--policy", "pi-nominal",
                 "--step", "50", "--root", str(root / "minari"), "--out", str(tmp_path / "f.png")]) == 0
    assert (tmp_path / "f.png").stat().st_size > 10_000
    with pytest.raises(SystemExit):
        main(["safety", "eval", "--policy", "sac"])
    assert "invalid choice" in capsys.readouterr().err


def test_safety_train_command(tmp_path, capsys):
    assert main(["safety", "train", "--scenario", "grade_down", "--episodes", "3", "--epochs", "1",
                 "--horizon", "2", "--root", str(tmp_path / "minari"), "--out", str(tmp_path / "m")]) == 0
    assert "val RMSE" in capsys.readouterr().out
    assert (tmp_path / "m" / "grade_down" / "model.safetensors").exists()
