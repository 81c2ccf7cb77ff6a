"""Offline datasets of the polymerisation CSTR: episodes under PI control with randomly drawn tunings."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from safectrl.controllers.pi import PIController, sample_tuning, tuning_rng
from safectrl.models import polycstr as pc
from safectrl.rl import data
from safectrl.rl.env import TaskEnv
from safectrl.rl.rollout import Episode, run_episode

ENV_ID = "safectrl/PolyCSTR-v0"


def dataset_id(scenario: str, episodes: int, seed: int) -> str:
    """Minari id of a PI dataset, e.g. ``safectrl/polycstr-startup-pi-n100-s0-v0``."""
    pc.get_scenario(scenario)
    return f"safectrl/polycstr-{scenario.replace('_', '-')}-pi-n{episodes}-s{seed}-v0"


def simulate_pi_episodes(scenario: str, episodes: int, seed: int, progress: bool = False) -> list[Episode]:
    """Run ``episodes`` closed-loop episodes, each with its own random PI tuning and env seed."""
    env = TaskEnv(pc.TASK, scenario=scenario)
    out = []
    for episode_seed in tqdm(data.data_seeds(seed, episodes), desc=f"PI data {scenario}", disable=not progress):
        tuning = sample_tuning(tuning_rng(episode_seed))
        out.append(run_episode(env, PIController(tuning), episode_seed))
    return out


def generate_dataset(
    scenario: str,
    episodes: int = 100,
    seed: int = 0,
    root: str | os.PathLike | None = None,
    force: bool = False,
    progress: bool = False,
) -> str:
    """Create (or reuse) the PI dataset of a scenario and return its Minari id.

    Each episode's metadata holds its env seed and its four PI gains. Same arguments, same arrays. A complete
    dataset is reused as it is (loading verifies it); a folder without the integrity record (from before
    datasets were hashed) is regenerated, since the arguments rebuild it exactly; leftovers of interrupted
    writes are removed.
    """
    ds_id = dataset_id(scenario, episodes, seed)
    data.clean_partial_writes(ds_id, root)
    if data.dataset_exists(ds_id, root) and not force:
        return ds_id
    eps = simulate_pi_episodes(scenario, episodes, seed, progress)
    meta = [{"env_seed": ep.seed, **sample_tuning(tuning_rng(ep.seed)).as_dict()} for ep in eps]
    data.write_dataset(
        ds_id,
        eps,
        ENV_ID,
        {"scenario": scenario},
        meta,
        description=(
            f"{episodes} episodes of the polymerisation CSTR, scenario {scenario!r}, each under "
            f"decentralised PI control, gains drawn uniformly from pi.TUNING_RANGES (dataset seed {seed})."
        ),
        root=root,
        overwrite=True,
        regenerate=regenerate_command(scenario, episodes, seed),
    )
    return ds_id


def regenerate_command(scenario: str, episodes: int, seed: int) -> str:
    """The command line that rebuilds the PI dataset of these arguments (quoted by dataset errors)."""
    return f"safectrl data --scenario {scenario} --episodes {episodes} --seed {seed} --force"


@dataclass(frozen=True)
class EpisodeSetSummary:
    """What a set of episodes looks like, the numbers a control engineer asks for first."""

    episodes: int
    with_violations: int  # episodes with at least one interval ending above T_max
    runaways: int  # episodes ending in failure
    final_abs_eP_median: float  # kg/m³, |P_sp - P| at the end of the episode
    final_abs_eP_p90: float
    peak_T_p90: float  # K
    cost_median: float  # -sum of rewards
    cost_best: float


def summarise(episodes: list[Episode]) -> EpisodeSetSummary:
    final_eP = np.array([abs(ep.infos["setpoint"][-1, 0] - ep.infos["state"][-1, 3]) for ep in episodes])
    peak_T = np.array([np.nanmax(ep.infos["state"][:, 4]) for ep in episodes])
    cost = np.array([-ep.rewards.sum() for ep in episodes])
    return EpisodeSetSummary(
        episodes=len(episodes),
        with_violations=int(sum(bool(ep.infos["violation"].any()) for ep in episodes)),
        runaways=int(sum(ep.failed for ep in episodes)),
        final_abs_eP_median=float(np.nanmedian(final_eP)),
        final_abs_eP_p90=float(np.nanpercentile(final_eP, 90)),
        peak_T_p90=float(np.nanpercentile(peak_T, 90)),
        cost_median=float(np.median(cost)),
        cost_best=float(np.min(cost)),
    )


@dataclass(frozen=True)
class DataConfig:
    """``safectrl data``: the PI datasets of one or every scenario (written where Minari keeps datasets)."""

    scenario: str = field(default="all", metadata={"choices": (*pc.SCENARIOS, "all")})  # the dataset's scenario
    episodes: int = field(default=100, metadata={"min": 1})  # episodes per scenario
    seed: int = field(default=0, metadata={"min": 0})  # dataset seed
    root: str | None = None  # datasets folder (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)
    force: bool = False  # regenerate even if the dataset exists
    progress: bool = True  # progress bars


def run(config: DataConfig = DataConfig()) -> dict[str, EpisodeSetSummary]:
    """Generate (or reuse) the datasets of ``config``; dataset id -> its summary.

    The configuration is the dataset's id and metadata (Minari's folder), so no ``config.json`` is written.
    """
    scenarios = list(pc.SCENARIOS) if config.scenario == "all" else [config.scenario]
    out = {}
    for scenario in scenarios:
        ds_id = generate_dataset(scenario, config.episodes, config.seed, root=config.root, force=config.force,
                                 progress=config.progress)
        out[ds_id] = summarise(data.load_episodes(ds_id, config.root))
    return out
