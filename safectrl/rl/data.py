"""Offline datasets in the Minari format: writing episodes, reading them back as training arrays.

Seeds are partitioned so that data, tuning and evaluation can never share an episode:

* evaluation episodes use env seeds ``0 .. EVAL_SEED_LIMIT - 1`` (:func:`evaluation_seeds`);
* choices made by searching (PI time constants, hyperparameters) use seeds from ``TUNING_SEED_OFFSET``;
* episode ``k`` of a dataset with seed ``s`` uses env seed ``DATA_SEED_OFFSET + 10_000 s + k``.

Minari chooses its folder from the ``MINARI_DATASETS_PATH`` environment variable; :func:`datasets_root`
sets it for the duration of a call so that each function can take an explicit ``root``.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import gymnasium as gym
import minari
import numpy as np
from minari.data_collector import EpisodeBuffer

from safectrl.rl.rollout import Episode

EVAL_SEED_LIMIT = 500_000
TUNING_SEED_OFFSET = 500_000
DATA_SEED_OFFSET = 1_000_000
MAX_EPISODES_PER_DATASET = 10_000


def evaluation_seeds(n: int, start: int = 0) -> list[int]:
    """``n`` evaluation seeds, disjoint from every dataset's and every search's seeds."""
    if start < 0 or start + n > EVAL_SEED_LIMIT:
        raise ValueError(f"evaluation seeds must lie in [0, {EVAL_SEED_LIMIT})")
    return list(range(start, start + n))


def tuning_seeds(n: int, start: int = 0) -> list[int]:
    """``n`` tuning seeds (for choices made by searching), disjoint from evaluation and data seeds."""
    if start < 0 or n < 0 or TUNING_SEED_OFFSET + start + n > DATA_SEED_OFFSET:
        raise ValueError(f"tuning seeds must lie in [{TUNING_SEED_OFFSET}, {DATA_SEED_OFFSET})")
    return list(range(TUNING_SEED_OFFSET + start, TUNING_SEED_OFFSET + start + n))


def data_seeds(seed: int, episodes: int) -> list[int]:
    """Env seeds of the ``episodes`` episodes of the dataset with seed ``seed``."""
    if not 0 < episodes <= MAX_EPISODES_PER_DATASET:
        raise ValueError(f"episodes must be in 1..{MAX_EPISODES_PER_DATASET}, got {episodes}")
    if seed < 0:
        raise ValueError(f"dataset seed must be >= 0, got {seed}")
    base = DATA_SEED_OFFSET + MAX_EPISODES_PER_DATASET * seed
    return list(range(base, base + episodes))


def default_root() -> Path:
    """Minari's own default: ``$MINARI_DATASETS_PATH`` or ``~/.minari/datasets``."""
    env = os.environ.get("MINARI_DATASETS_PATH")
    return Path(env) if env else Path.home() / ".minari" / "datasets"


@contextlib.contextmanager
def datasets_root(root: str | os.PathLike | None) -> Iterator[Path]:
    """Point Minari at ``root`` (None: its default) while the block runs."""
    old = os.environ.get("MINARI_DATASETS_PATH")
    path = Path(root) if root is not None else default_root()
    os.environ["MINARI_DATASETS_PATH"] = str(path)
    try:
        yield path
    finally:
        if old is None:
            os.environ.pop("MINARI_DATASETS_PATH", None)
        else:
            os.environ["MINARI_DATASETS_PATH"] = old


def dataset_exists(dataset_id: str, root: str | os.PathLike | None = None) -> bool:
    with datasets_root(root) as path:
        return (path / dataset_id / "data").exists()


def write_dataset(
    dataset_id: str,
    episodes: Sequence[Episode],
    env_id: str,
    env_kwargs: dict[str, Any],
    episode_metadata: Sequence[dict[str, Any]],
    description: str,
    root: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> minari.MinariDataset:
    """Write episodes as a Minari dataset, with one metadata dict per episode.

    Args:
        dataset_id: Minari id, ``namespace/name-vN``.
        episodes: closed-loop episodes (:func:`safectrl.rl.rollout.run_episode`).
        env_id: registered Gymnasium id of the env that produced them.
        env_kwargs: its keyword arguments (recorded in the dataset's env spec).
        episode_metadata: per episode, flat dict of numbers/strings (e.g. controller gains).
        description: human-readable description stored in the dataset metadata.
        root: datasets folder (default: Minari's).
        overwrite: replace an existing dataset of the same id.
    """
    if len(episode_metadata) != len(episodes):
        raise ValueError("one metadata dict per episode is required")
    with datasets_root(root):
        if dataset_exists(dataset_id, root):
            if not overwrite:
                raise FileExistsError(f"dataset {dataset_id!r} exists; pass overwrite=True to replace it")
            minari.delete_dataset(dataset_id)
        buffers = [
            EpisodeBuffer(
                id=k,
                seed=ep.seed,
                observations=ep.observations,
                actions=ep.actions,
                rewards=ep.rewards,
                terminations=ep.terminations,
                truncations=ep.truncations,
                infos=ep.infos,
            )
            for k, ep in enumerate(episodes)
        ]
        env = gym.make(env_id, **env_kwargs)
        with warnings.catch_warnings():
            # Minari asks for a permalink and an e-mail for published datasets; these are local artefacts.
            warnings.filterwarnings("ignore", message="`code_permalink` is set to None")
            warnings.filterwarnings("ignore", message="`author_email` is set to None")
            ds = minari.create_dataset_from_buffers(
                dataset_id=dataset_id,
                buffer=buffers,
                env=env,
                eval_env=env_id,
                algorithm_name="PI with random tunings",
                author="safectrl",
                description=description,
            )
        env.close()
        ds.storage.update_episode_metadata(list(episode_metadata), range(len(episodes)))
        return ds


def load_dataset(dataset_id: str, root: str | os.PathLike | None = None) -> minari.MinariDataset:
    """Open a dataset by id (a FileNotFoundError names the folder searched)."""
    with datasets_root(root) as path:
        if not (path / dataset_id / "data").exists():
            raise FileNotFoundError(f"no Minari dataset {dataset_id!r} under {path}")
        return minari.load_dataset(dataset_id)


def episode_metadata(dataset: minari.MinariDataset) -> list[dict[str, Any]]:
    """Per-episode metadata (seed, controller gains ...) in episode order."""
    return list(dataset.storage.get_episode_metadata(dataset.episode_indices))


@dataclass(frozen=True)
class Transitions:
    """Flat training arrays, one row per transition (the batch names used everywhere)."""

    obs: np.ndarray  # (n, n_obs)
    action: np.ndarray  # (n, n_act)
    reward: np.ndarray  # (n,)
    next_obs: np.ndarray  # (n, n_obs)
    done: np.ndarray  # (n,) True where the episode terminated (failure), not on time-limit truncation
    episode: np.ndarray  # (n,) index of the episode in the concatenated datasets
    step: np.ndarray  # (n,) interval index within the episode
    state: np.ndarray  # (n, n_state) true state after the transition (info["state"])

    def __len__(self) -> int:
        return len(self.reward)


def load_transitions(dataset_ids: str | Sequence[str], root: str | os.PathLike | None = None) -> Transitions:
    """Concatenate one or more datasets into flat transition arrays."""
    ids = [dataset_ids] if isinstance(dataset_ids, str) else list(dataset_ids)
    if not ids:
        raise ValueError("no dataset ids given")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in Transitions.__dataclass_fields__}
    ep_index = 0
    for dataset_id in ids:
        for ep in load_dataset(dataset_id, root).iterate_episodes():
            n = len(ep.rewards)
            obs = np.asarray(ep.observations, dtype=float)
            parts["obs"].append(obs[:-1])
            parts["next_obs"].append(obs[1:])
            parts["action"].append(np.asarray(ep.actions, dtype=float))
            parts["reward"].append(np.asarray(ep.rewards, dtype=float))
            parts["done"].append(np.asarray(ep.terminations, dtype=bool))
            parts["episode"].append(np.full(n, ep_index))
            parts["step"].append(np.arange(n))
            parts["state"].append(np.asarray(ep.infos["state"], dtype=float)[1:])
            ep_index += 1
    return Transitions(**{k: np.concatenate(v) for k, v in parts.items()})


def load_episodes(dataset_id: str, root: str | os.PathLike | None = None) -> list[Episode]:
    """A dataset's episodes as :class:`~safectrl.rl.rollout.Episode` objects (seeds from Minari)."""
    ds = load_dataset(dataset_id, root)
    seeds = [m.get("seed") for m in episode_metadata(ds)]
    return [
        Episode(
            seed=-1 if s is None else int(s),
            observations=np.asarray(ep.observations, dtype=float),
            actions=np.asarray(ep.actions, dtype=float),
            rewards=np.asarray(ep.rewards, dtype=float),
            terminations=np.asarray(ep.terminations, dtype=bool),
            truncations=np.asarray(ep.truncations, dtype=bool),
            infos={k: np.asarray(v) for k, v in ep.infos.items()},
        )
        for ep, s in zip(ds.iterate_episodes(), seeds)
    ]
