"""Every decision-maker of safectrl follows the one protocol (``safectrl.common.protocol.DecisionMaker``) the
same way: ``reset(seed)``, then ``act(obs)`` on the env's observations returns a finite input of the task's
shape inside its bounds, through the one episode loop, reproducibly for a seed."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import safectrl
from safectrl.common.protocol import DecisionMaker
from safectrl.models import polycstr as pc
from safectrl.rl.env import TaskEnv
from safectrl.rl.rollout import run_episode

REACTOR = "safectrl/PolyCSTR-v0"
CARTPOLE = "safectrl/CartPoleContinuous-v0"
TANK = "tests/HeatedTank-v0"
safectrl.register_task(TANK, "heated_tank:TASK")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A BC and an IQL policy and a cost model, each trained for a few steps on a 3-episode dataset."""
    from safectrl.safety.cost_model import CostModelTrainConfig
    from safectrl.safety.targets import CostTargetConfig
    from safectrl.studies import safety_layer as sl
    from safectrl.studies.offline import train_policy

    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("protocol")
    kw = dict(episodes=3, root=root / "minari", progress=False)
    bc = train_policy("bc", ["grade_up"], steps=20, out=root / "bc", **kw)
    iql = train_policy("iql", ["grade_up"], steps=20, out=root / "iql", **kw)
    cfg = sl.SafetyLayerConfig(target=CostTargetConfig(horizon=3),
                               train=CostModelTrainConfig(hidden=(16, 16), epochs=2, huber_delta=0.01))
    model, _ = sl.train_for_scenario("grade_up", root / "cost", episodes=3, root=root / "minari", config=cfg,
                                     progress=False)
    return {"bc": bc, "iql": iql, "cost_model": model}


def _pi(_):
    from safectrl.controllers.pi import NOMINAL_TUNING, PIController

    return REACTOR, PIController(NOMINAL_TUNING)


def _nmpc(mismatched):
    def build(_):
        from safectrl.controllers.polycstr_nmpc import polycstr_nmpc

        return REACTOR, polycstr_nmpc(pc.mismatched() if mismatched else pc.PolyCSTRParams())

    return build


def _offline(algo):
    def build(trained):
        from safectrl.rl import load_policy

        return REACTOR, load_policy(trained[algo])

    return build


def _filtered(method):
    def build(trained):
        from safectrl.rl import load_policy
        from safectrl.studies import safety_layer as sl

        return REACTOR, sl.make_filter(load_policy(trained["iql"]), trained["cost_model"], method)

    return build


def _sac(_):
    from safectrl.rl.sac import SAC

    env = TaskEnv(CARTPOLE)
    return CARTPOLE, SAC(env.observation_space, env.action_space, seed=0)


def _rlacr(_):
    from safectrl.controllers.acr_mpc import cartpole_mpc
    from safectrl.rl.acr import RLACR

    env = TaskEnv(CARTPOLE)
    return CARTPOLE, RLACR(env.observation_space, env.action_space, prior=cartpole_mpc(horizon=10), seed=0)


def _task_nmpc(_):
    from safectrl.controllers.task_nmpc import nmpc_for

    return TANK, nmpc_for(TANK)


def _psf(env_id, inner):
    def build(trained):
        from safectrl.safety.psf import predictive_safety_filter, with_config

        if inner == "iql":
            from safectrl.rl import load_policy

            policy = load_policy(trained["iql"])
        else:
            from safectrl.controllers.task_nmpc import nmpc_for

            policy = nmpc_for(env_id)
        return env_id, predictive_safety_filter(policy, env_id, config=with_config(env_id, horizon=8))

    return build


DECISION_MAKERS = {
    "PI": _pi, "NMPC oracle": _nmpc(False), "NMPC mismatched": _nmpc(True), "BC": _offline("bc"),
    "IQL": _offline("iql"), "SafetyFilter gd": _filtered("gd"), "SafetyFilter exact": _filtered("exact"),
    "SAC": _sac, "RL-ACR": _rlacr, "NMPC of a new plant": _task_nmpc,
    "IQL+PSF": _psf(REACTOR, "iql"), "PSF around a new plant's NMPC": _psf(TANK, "nmpc"),
}


@pytest.mark.parametrize("name", list(DECISION_MAKERS))
def test_every_decision_maker_follows_the_protocol(name, trained):
    env_id, decider = DECISION_MAKERS[name](trained)
    assert isinstance(decider, DecisionMaker)
    env = TaskEnv(env_id, max_steps=4)
    episodes = [run_episode(env, decider, seed=7) for _ in range(2)]
    m = env.task.model
    for ep in episodes:
        assert ep.actions.shape == (ep.length, m.nu) and ep.length >= 1
        assert np.all(np.isfinite(ep.actions))
        assert np.all(ep.actions >= m.u_low - 1e-9) and np.all(ep.actions <= m.u_high + 1e-9), ep.actions
    # reset(seed) starts afresh; the exact correction keeps its LP/QP solver hot-started across episodes, which
    # moves its optimum in the last digits only
    np.testing.assert_allclose(episodes[0].actions, episodes[1].actions, rtol=1e-10, atol=1e-10)


def test_nmpc_statistics_outlive_an_episode_with_a_view_of_each():
    from safectrl.controllers.polycstr_nmpc import polycstr_nmpc

    nmpc = polycstr_nmpc()
    env = TaskEnv(REACTOR, scenario="grade_up", max_steps=3)
    for seed in (0, 1):
        run_episode(env, nmpc, seed)
    assert nmpc.stats.solves == 6 and [e.solves for e in nmpc.stats.episodes] == [3, 3]
    assert nmpc.stats.episode().failures == 0
