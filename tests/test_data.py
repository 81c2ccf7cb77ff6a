"""Offline datasets: Minari format, reproducibility, metadata, seed partition, the training arrays."""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys

import h5py
import minari
import numpy as np
import pytest

from safectrl.controllers.pi import TUNING_RANGES
from safectrl.rl import data
from safectrl.studies import cli, datasets


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


# -- integrity: every dataset read is verified; writes are atomic --------------------------------------------

REBUILD = "safectrl data --scenario startup --episodes 2 --seed 0 --force"


@pytest.fixture
def stored(tmp_path):
    """A small dataset: (root, id, its main HDF5 file)."""
    root = tmp_path / "minari"
    ds_id = datasets.generate_dataset("startup", episodes=2, seed=0, root=root)
    return root, ds_id, root / ds_id / "data" / "main_data.hdf5"


def _rehash(root, ds_id):
    """Recompute the recorded hashes, as someone crafting a dataset would."""
    record_path = root / ds_id / data.INTEGRITY_FILE
    record = json.loads(record_path.read_text())
    for name in record["sha256"]:
        record["sha256"][name] = hashlib.sha256((root / ds_id / name).read_bytes()).hexdigest()
    record_path.write_text(json.dumps(record))


def test_clean_dataset_loads_the_simulated_arrays_exactly(stored):
    root, ds_id, _ = stored
    eps = datasets.simulate_pi_episodes("startup", 2, 0)
    t = data.load_transitions(ds_id, root)
    np.testing.assert_array_equal(t.obs, np.concatenate([ep.observations[:-1] for ep in eps]))
    np.testing.assert_array_equal(t.next_obs, np.concatenate([ep.observations[1:] for ep in eps]))
    np.testing.assert_array_equal(t.action, np.concatenate([ep.actions for ep in eps]))
    np.testing.assert_array_equal(t.reward, np.concatenate([ep.rewards for ep in eps]))
    np.testing.assert_array_equal(t.state, np.concatenate([ep.infos["state"][1:] for ep in eps]))
    record = json.loads((root / ds_id / data.INTEGRITY_FILE).read_text())
    assert set(record["sha256"]) == {"data/main_data.hdf5", "data/metadata.json"}
    assert record["regenerate"] == REBUILD


def test_flipped_bytes_in_an_observation_array_fail_the_hash(stored):
    root, ds_id, main = stored
    with h5py.File(main, "r") as f:
        obs = f["episode_0/observations"][()]
    raw = bytearray(main.read_bytes())
    at = raw.find(obs[10:20].tobytes())
    assert at > 0
    raw[at:at + 64] = bytes(b ^ 0xFF for b in raw[at:at + 64])
    main.write_bytes(bytes(raw))
    with pytest.raises(data.DatasetError, match=re.escape(f"{main}: SHA-256 differs")) as err:
        data.load_transitions(ds_id, root)
    assert REBUILD in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("array, index, value, match", [
    ("observations", (5, 2), -0.013, r"episode 0 \(seed 1000000\): observations T = -0.013 K at step 5"),
    ("infos/state", (7, 1), -1.0, r"episode 0 \(seed 1000000\): states I = -1 kg/m³ at step 7"),
    ("observations", (3, 5), -3.4, r"observations f_I_prev = -3.4 at step 3, outside the input bounds"),
    ("rewards", (4,), np.nan, r"episode 0 \(seed 1000000\): rewards = nan at step 4"),
    ("observations", (9, 0), np.inf, r"observations A = inf at step 9"),
])
def test_edited_value_fails_the_hash_and_with_a_recomputed_hash_the_physical_check(stored, array, index,
                                                                                     value, match):
    root, ds_id, main = stored
    with h5py.File(main, "r+") as f:
        f[f"episode_0/{array}"][index] = value
    with pytest.raises(data.DatasetError, match=re.escape(f"{main}: SHA-256 differs")):
        data.load_dataset(ds_id, root)
    _rehash(root, ds_id)
    with pytest.raises(data.DatasetError, match=re.escape(str(main)) + ".*" + match):
        data.load_transitions(ds_id, root)
    with pytest.raises(data.DatasetError, match=match):
        data.load_episodes(ds_id, root)


def test_truncated_file_fails_the_hash(stored):
    root, ds_id, main = stored
    raw = main.read_bytes()
    main.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(data.DatasetError, match=re.escape(f"{main}: SHA-256 differs") + ".*" + re.escape(REBUILD)):
        data.load_transitions(ds_id, root)


def test_corrupted_header_fails_the_hash_and_with_a_recomputed_hash_is_unreadable(stored):
    root, ds_id, main = stored
    raw = bytearray(main.read_bytes())
    raw[:8] = b"\x00" * 8  # the HDF5 signature
    main.write_bytes(bytes(raw))
    with pytest.raises(data.DatasetError, match=re.escape(f"{main}: SHA-256 differs")):
        data.load_dataset(ds_id, root)
    _rehash(root, ds_id)
    with pytest.raises(data.DatasetError, match=re.escape(f"{main}: Minari cannot read it (OSError")):
        data.load_dataset(ds_id, root)


def test_missing_or_unrecorded_file_is_named(stored):
    root, ds_id, main = stored
    extra = root / ds_id / "data" / "extra.bin"
    extra.write_bytes(b"x")
    with pytest.raises(data.DatasetError, match=re.escape(f"{extra}: not in the integrity record")):
        data.load_dataset(ds_id, root)
    extra.unlink()
    (root / ds_id / "data" / "metadata.json").unlink()
    with pytest.raises(data.DatasetError, match=re.escape(f"{root / ds_id / 'data' / 'metadata.json'}: missing")):
        data.load_dataset(ds_id, root)


def test_folder_without_integrity_record_is_refused_and_regenerated(stored):
    root, ds_id, main = stored
    before = data.load_transitions(ds_id, root)
    (root / ds_id / data.INTEGRITY_FILE).unlink()  # as a folder written before datasets were hashed
    assert not data.dataset_exists(ds_id, root)
    with pytest.raises(data.DatasetError, match=re.escape(f"{root / ds_id}: no {data.INTEGRITY_FILE}")):
        data.load_transitions(ds_id, root)
    assert datasets.generate_dataset("startup", episodes=2, seed=0, root=root) == ds_id
    np.testing.assert_array_equal(data.load_transitions(ds_id, root).obs, before.obs)


def test_killed_write_leaves_no_dataset_and_the_next_run_cleans_up(tmp_path):
    root = tmp_path / "minari"
    # The process dies (no cleanup runs) after Minari wrote its files, before the dataset was complete.
    code = ("import os\nfrom safectrl.rl import data\nfrom safectrl.studies import datasets\n"
            "data._write_integrity_record = lambda *a: os._exit(9)\n"
            f"datasets.generate_dataset('startup', episodes=2, seed=0, root={str(root)!r})\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 9, proc.stderr
    ds_id = datasets.dataset_id("startup", 2, 0)
    leftovers = list((root / ds_id).parent.glob(".*partial-*"))
    assert len(leftovers) == 1 and (leftovers[0] / ds_id / "data" / "main_data.hdf5").is_file()
    assert not (root / ds_id).exists() and not data.dataset_exists(ds_id, root)
    with pytest.raises(FileNotFoundError, match="no Minari dataset"):
        data.load_transitions(ds_id, root)
    assert datasets.generate_dataset("startup", episodes=2, seed=0, root=root) == ds_id
    assert len(data.load_transitions(ds_id, root)) == 400
    assert not leftovers[0].exists()


def test_failed_rewrite_keeps_the_old_dataset_and_leaves_nothing(stored, monkeypatch):
    root, ds_id, main = stored
    before = data.load_transitions(ds_id, root)

    def interrupted(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(data, "_write_integrity_record", interrupted)
    with pytest.raises(KeyboardInterrupt):
        datasets.generate_dataset("startup", episodes=2, seed=0, root=root, force=True)
    assert sorted(p.name for p in (root / ds_id).parent.iterdir()) == ["namespace_metadata.json",
                                                                        main.parents[1].name]
    np.testing.assert_array_equal(data.load_transitions(ds_id, root).obs, before.obs)


def test_train_on_a_corrupted_dataset_exits_with_one_line(stored, tmp_path, capsys):
    root, ds_id, main = stored
    with h5py.File(main, "r+") as f:
        f["episode_1/observations"][0, 2] = -0.013
    rc = cli.main(["train", "--algo", "bc", "--scenario", "startup", "--episodes", "2", "--steps", "1",
                   "--root", str(root), "--out", str(tmp_path / "policy")])
    err = capsys.readouterr().err
    assert rc == 2
    assert err.count("\n") == 1 and err.startswith(f"safectrl train: dataset file {main}: SHA-256 differs")
    assert REBUILD in err
    assert not (tmp_path / "policy").exists()


def test_data_command_on_a_corrupted_dataset_exits_with_one_line_and_force_rebuilds_it(stored, capsys):
    root, ds_id, main = stored
    main.write_bytes(main.read_bytes()[:1000])
    args = ["data", "--scenario", "startup", "--episodes", "2", "--seed", "0", "--root", str(root), "--no-progress"]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"safectrl data: dataset file {main}: SHA-256 differs")
    assert cli.main([*args, "--force"]) == 0
    assert len(data.load_transitions(ds_id, root)) == 400


def test_record_of_another_dataset_is_refused(stored):
    root, ds_id, _ = stored
    record_path = root / ds_id / data.INTEGRITY_FILE
    record = json.loads(record_path.read_text())
    record_path.write_text(json.dumps({**record, "dataset_id": "safectrl/other-v0"}))
    with pytest.raises(data.DatasetError, match=re.escape(f"{record_path}: records dataset 'safectrl/other-v0'")):
        data.load_dataset(ds_id, root)
    record_path.write_text("{not json")
    with pytest.raises(data.DatasetError, match=re.escape(f"{record_path}: unreadable integrity record")):
        data.load_dataset(ds_id, root)
