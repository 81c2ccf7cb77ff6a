"""Offline datasets: Minari format, reproducibility, metadata, seed partition, the training arrays."""

from __future__ import annotations

import minari
import numpy as np
import pytest

from safectrl.controllers.pi import TUNING_RANGES
from safectrl.rl import data
from safectrl.studies import datasets


def test_same_seed_gives_identical_arrays(tmp_path):
    a = datasets.generate_dataset("grade_down", episodes=4, seed=2, root=tmp_path / "a")
    b = datasets.generate_dataset("grade_down", episodes=4, seed=2, root=tmp_path / "b")
    ta, tb = data.load_transitions(a, tmp_path / "a"), data.load_transitions(b, tmp_path / "b")
    for name in ("obs", "action", "reward", "next_obs", "done", "state"):
        np.testing.assert_array_equal(getattr(ta, name), getattr(tb, name))
    c = datasets.generate_dataset("grade_down", episodes=4, seed=3, root=tmp_path / "c")
    assert not np.array_equal(ta.action, data.load_transitions(c, tmp_path / "c").action)


def test_minari_reads_the_dataset_back_with_metadata(minari_root):
    ds_id = datasets.generate_dataset("startup", episodes=3, seed=0)
    ds = minari.load_dataset(ds_id)  # Minari's own loader, default folder from MINARI_DATASETS_PATH
    assert ds.total_episodes == 3
    meta = data.episode_metadata(ds)
    assert [m["seed"] for m in meta] == data.data_seeds(0, 3)
    for m in meta:
        for name, (lo, hi) in TUNING_RANGES.items():
            assert lo <= m[name] <= hi
    ep = next(ds.iterate_episodes())
    assert ep.observations.shape == (len(ep.rewards) + 1, 7)
    assert ep.infos["state"].shape == (len(ep.rewards) + 1, 5)
    env = ds.recover_environment()
    assert env.unwrapped.scenario.name == "startup"


def test_existing_dataset_is_reused_not_rewritten(minari_root):
    ds_id = datasets.generate_dataset("grade_up", episodes=2, seed=0)
    stamp = (minari_root / ds_id / "data" / "main_data.hdf5").stat().st_mtime_ns
    assert datasets.generate_dataset("grade_up", episodes=2, seed=0) == ds_id
    assert (minari_root / ds_id / "data" / "main_data.hdf5").stat().st_mtime_ns == stamp


def test_transitions_are_consistent(minari_root):
    ds_id = datasets.generate_dataset("startup", episodes=3, seed=1)
    t = data.load_transitions(ds_id)
    assert len(t) == t.obs.shape[0] == t.next_obs.shape[0] == t.action.shape[0]
    same_episode = t.episode[1:] == t.episode[:-1]
    np.testing.assert_array_equal(t.next_obs[:-1][same_episode], t.obs[1:][same_episode])
    np.testing.assert_array_equal(t.next_obs[:, 5:7], t.action)  # PI outputs are inside the bounds
    assert not t.done[:-1][same_episode].any()  # only an episode's last transition can be terminal


def test_seed_sets_are_disjoint():
    evals = set(data.evaluation_seeds(1000))
    for s in range(5):
        assert evals.isdisjoint(data.data_seeds(s, data.MAX_EPISODES_PER_DATASET))
    assert max(data.data_seeds(0, 10_000)) < min(data.data_seeds(1, 1))
    assert max(evals) < data.TUNING_SEED_OFFSET < data.DATA_SEED_OFFSET
    tuning = data.tuning_seeds(1000)
    assert min(tuning) == data.TUNING_SEED_OFFSET and max(tuning) < data.DATA_SEED_OFFSET
    assert evals.isdisjoint(tuning) and set(tuning).isdisjoint(data.data_seeds(0, data.MAX_EPISODES_PER_DATASET))
    with pytest.raises(ValueError, match="evaluation seeds"):
        data.evaluation_seeds(10, start=data.EVAL_SEED_LIMIT - 5)
    with pytest.raises(ValueError, match="tuning seeds"):
        data.tuning_seeds(10, start=data.DATA_SEED_OFFSET - data.TUNING_SEED_OFFSET - 5)


def test_missing_dataset_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        data.load_transitions("safectrl/nothing-here-v0", tmp_path)


def test_summary_counts(minari_root):
    eps = data.load_episodes(datasets.generate_dataset("startup", episodes=5, seed=0))
    s = datasets.summarise(eps)
    assert s.episodes == 5
    assert s.runaways == sum(ep.failed for ep in eps)
    assert s.final_abs_eP_median <= s.final_abs_eP_p90
