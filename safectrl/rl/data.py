"""Offline datasets in the Minari format: writing episodes, reading them back as training arrays.

Seeds are partitioned so that data, tuning and evaluation can never share an episode:

* evaluation episodes use env seeds ``0 .. EVAL_SEED_LIMIT - 1`` (:func:`evaluation_seeds`);
* choices made by searching (PI time constants, hyperparameters) use seeds from ``TUNING_SEED_OFFSET``;
* episode ``k`` of a dataset with seed ``s`` uses env seed ``DATA_SEED_OFFSET + 10_000 s + k``.

Minari chooses its folder from the ``MINARI_DATASETS_PATH`` environment variable; :func:`datasets_root`
sets it for the duration of a call so that each function can take an explicit ``root``.

Nothing read is used unverified: :func:`write_dataset` builds a dataset in a hidden temporary folder beside
its final one, records the SHA-256 of each of Minari's files in ``safectrl-integrity.json`` and renames the
folder into place, so a folder holding that record is complete. Every load checks the hashes, that Minari can
read the files, and that the values are finite and physically possible; any failure is a
:class:`DatasetError` naming the file and how to rebuild the dataset.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import gymnasium as gym
import minari
import numpy as np
from minari.data_collector import EpisodeBuffer

from safectrl.models import registry
from safectrl.models.task import Task
from safectrl.rl.rollout import Episode

EVAL_SEED_LIMIT = 500_000
TUNING_SEED_OFFSET = 500_000
DATA_SEED_OFFSET = 1_000_000
MAX_EPISODES_PER_DATASET = 10_000
#: Written last into a dataset's folder: the SHA-256 of each of Minari's files and how to rebuild them.
INTEGRITY_FILE = "safectrl-integrity.json"
#: Hidden siblings of a dataset folder: a write in progress, or the dataset a write is replacing.
_PARTIAL, _REPLACED = ".partial-", ".replaced-"


class DatasetError(ValueError):
    """A dataset on disk that must not be used: changed, truncated, unreadable, incomplete or unphysical.

    The message is one line naming the file and saying how to rebuild the dataset.
    """


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
    """Whether a complete dataset (one holding its integrity record) is stored; its files are not verified."""
    with datasets_root(root) as path:
        return (path / dataset_id / INTEGRITY_FILE).is_file()


def dataset_folder(dataset_id: str, root: str | os.PathLike | None = None) -> Path:
    """The folder a dataset is (or would be) stored in."""
    with datasets_root(root) as path:
        return path / dataset_id


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True
    return True


def clean_partial_writes(dataset_id: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Remove what interrupted writes of ``dataset_id`` left beside its folder; returns the removed paths.

    A leftover is ``.<name>.partial-<pid>-<tag>`` or ``.<name>.replaced-<pid>-<tag>``; those of a process still
    running (a write in progress) are kept.
    """
    folder = dataset_folder(dataset_id, root)
    removed = []
    if not folder.parent.is_dir():
        return removed
    for kind in (_PARTIAL, _REPLACED):
        for leftover in folder.parent.glob(f".{folder.name}{kind}*"):
            pid = leftover.name[len(f".{folder.name}{kind}"):].split("-")[0]
            if pid.isdigit() and _pid_alive(int(pid)) and int(pid) != os.getpid():
                continue
            shutil.rmtree(leftover, ignore_errors=True)
            removed.append(leftover)
    return removed


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_integrity_record(folder: Path, dataset_id: str, regenerate: str) -> None:
    """Hash every file Minari wrote under ``folder`` (data and configuration) into :data:`INTEGRITY_FILE`."""
    files = {p.relative_to(folder).as_posix(): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}
    record = {"dataset_id": dataset_id, "sha256": files, "regenerate": regenerate}
    with open(folder / INTEGRITY_FILE, "w") as f:
        json.dump(record, f, indent=1)
        f.flush()
        os.fsync(f.fileno())


def write_dataset(
    dataset_id: str,
    episodes: Sequence[Episode],
    env_id: str,
    env_kwargs: dict[str, Any],
    episode_metadata: Sequence[dict[str, Any]],
    description: str,
    root: str | os.PathLike | None = None,
    overwrite: bool = False,
    regenerate: str = "",
) -> minari.MinariDataset:
    """Write episodes as a Minari dataset, with one metadata dict per episode, atomically.

    The dataset is built in a hidden ``.<name>.partial-<pid>-<tag>`` folder beside its final one, its files
    hashed into :data:`INTEGRITY_FILE`, and the folder renamed into place: an interrupted write leaves no
    folder that counts as a dataset, and its leftovers are removed by the next write
    (:func:`clean_partial_writes`).

    Args:
        dataset_id: Minari id, ``namespace/name-vN``.
        episodes: closed-loop episodes (:func:`safectrl.rl.rollout.run_episode`).
        env_id: registered Gymnasium id of the env that produced them.
        env_kwargs: its keyword arguments (recorded in the dataset's env spec).
        episode_metadata: per episode, flat dict of numbers/strings (e.g. controller gains).
        description: human-readable description stored in the dataset metadata.
        root: datasets folder (default: Minari's).
        overwrite: replace an existing folder of the same id (complete or not).
        regenerate: the command that rebuilds this dataset, quoted by every :class:`DatasetError` about it.
    """
    if len(episode_metadata) != len(episodes):
        raise ValueError("one metadata dict per episode is required")
    final = dataset_folder(dataset_id, root)
    if final.exists() and not overwrite:
        raise FileExistsError(f"dataset {dataset_id!r} exists; pass overwrite=True to replace it")
    clean_partial_writes(dataset_id, root)
    final.parent.mkdir(parents=True, exist_ok=True)
    tag = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging = final.parent / f".{final.name}{_PARTIAL}{tag}"  # a Minari root of its own, on the same disk
    try:
        _create(staging, dataset_id, episodes, env_id, env_kwargs, episode_metadata, description)
        built = staging / dataset_id
        _write_integrity_record(built, dataset_id, regenerate)
        with datasets_root(root) as path:
            _publish(built, final, staging, path, tag)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return load_dataset(dataset_id, root)


def _publish(built: Path, final: Path, staging: Path, root: Path, tag: str) -> None:
    """Rename the complete dataset folder ``built`` to ``final`` (replacing it), with the namespace files."""
    replaced = final.parent / f".{final.name}{_REPLACED}{tag}"
    if final.exists():
        os.rename(final, replaced)
    os.rename(built, final)
    shutil.rmtree(replaced, ignore_errors=True)
    # Minari's namespace metadata (one file per namespace level), written once per root.
    for src in staging.rglob("namespace_metadata.json"):
        dst = root / src.relative_to(staging)
        if not dst.exists():
            shutil.copyfile(src, dst)


def _create(staging: Path, dataset_id: str, episodes: Sequence[Episode], env_id: str,
            env_kwargs: dict[str, Any], episode_metadata: Sequence[dict[str, Any]], description: str) -> None:
    """Minari's dataset files of ``episodes`` under the Minari root ``staging``."""
    with datasets_root(staging):
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


def _error(file: Path, problem: str, folder: Path, regenerate: str) -> DatasetError:
    how = f"regenerate it with `{regenerate}`" if regenerate else "regenerate it"
    return DatasetError(f"dataset file {file}: {problem}; {how}, or delete {folder}")


def verify_files(dataset_id: str, root: str | os.PathLike | None = None) -> str:
    """Check a dataset's files against its integrity record; returns the record's rebuild command.

    Raises:
        FileNotFoundError: no folder of that id (the message names the folder searched).
        DatasetError: no or an unreadable record, a file missing, unrecorded or with another SHA-256.
    """
    folder = dataset_folder(dataset_id, root)
    if not folder.is_dir():
        raise FileNotFoundError(f"no Minari dataset {dataset_id!r} under {dataset_folder('', root)}")
    record_path = folder / INTEGRITY_FILE
    if not record_path.is_file():
        raise DatasetError(f"dataset folder {folder}: no {INTEGRITY_FILE} (written before datasets were hashed, "
                           "or not written completely); delete the folder and generate the dataset again "
                           "(`safectrl data --scenario S --episodes N --seed K --force`)")
    try:
        record = json.loads(record_path.read_text())
        hashes, regenerate = dict(record["sha256"]), str(record.get("regenerate", ""))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise _error(record_path, f"unreadable integrity record ({type(exc).__name__})", folder, "") from exc
    if record.get("dataset_id") != dataset_id:
        raise _error(record_path, f"records dataset {record.get('dataset_id')!r}, not {dataset_id!r}", folder,
                     regenerate)
    stored = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file()} - {INTEGRITY_FILE}
    extra = sorted(stored - set(hashes))
    if extra:
        raise _error(folder / extra[0], "not in the integrity record (added after the dataset was written)",
                     folder, regenerate)
    for name, expected in sorted(hashes.items()):
        path = folder / name
        if not path.is_file():
            raise _error(path, "missing", folder, regenerate)
        try:
            actual = _sha256(path)
        except OSError as exc:
            raise _error(path, f"unreadable ({exc.strerror or exc})", folder, regenerate) from exc
        if actual != expected:
            raise _error(path, "SHA-256 differs from the one recorded when it was written (changed or truncated)",
                         folder, regenerate)
    return regenerate


def _physical_floor(unit: str) -> tuple[float, bool] | None:
    """(bound, strict) no value in ``unit`` can cross: absolute temperature > 0, amount per volume or mass >= 0."""
    if unit == "K":
        return 0.0, True
    if unit == "°C":
        return -273.15, True
    if unit.count("/") == 1 and unit.split("/")[1] in ("m³", "L", "dL", "mL", "kg"):
        return 0.0, False
    return None


def _first_bad(values: np.ndarray, bad: np.ndarray) -> tuple[int, int, float]:
    row, col = np.argwhere(bad.reshape(len(values), -1))[0]
    return int(row), int(col), float(values.reshape(len(values), -1)[row, col])


def _check_episode(ep: Any, task: Task | None, noisy: bool) -> str | None:
    """What is impossible in one episode (None: nothing): a non-finite value, or a value beyond its floor.

    Only the true state after a failing last interval may be non-finite (the env ends the episode there).
    Observation entries named as states get the states' floors unless measured with noise; entries named
    ``<input>_prev`` hold the applied input, so they lie within the input bounds.
    """
    arrays = {"observations": np.asarray(ep.observations, dtype=float),
              "actions": np.asarray(ep.actions, dtype=float),
              "rewards": np.asarray(ep.rewards, dtype=float)}
    if "state" in ep.infos:
        state = np.asarray(ep.infos["state"], dtype=float)
        arrays["states"] = state[:-1] if len(ep.terminations) and ep.terminations[-1] else state
    names = {} if task is None else {"observations": task.observations, "actions": task.inputs,
                                     "states": task.states}
    for where, a in arrays.items():
        if not np.all(np.isfinite(a)):
            step, col, v = _first_bad(a, ~np.isfinite(a))
            label = "" if a.ndim == 1 else f" {names[where][col]}" if col < len(names.get(where, ())) \
                else f" column {col}"
            return f"{where}{label} = {v} at step {step}"
    if task is None:
        return None
    checks: list[tuple[str, np.ndarray, Sequence[str]]] = [("observations", arrays["observations"],
                                                              task.observations)]
    if "states" in arrays:
        checks.append(("states", arrays["states"], task.states))
    for where, a, columns in checks:
        if a.ndim != 2 or a.shape[1] != len(columns):
            return f"{where} have shape {a.shape}, the task {task.name} has {len(columns)} ({', '.join(columns)})"
        for col, name in enumerate(columns):
            floor = _physical_floor(task.units.get(name, ""))
            if floor is not None and name in task.states and not (noisy and where == "observations"):
                bound, strict = floor
                bad = a[:, col] <= bound if strict else a[:, col] < bound
                if bad.any():
                    step = int(np.argmax(bad))
                    return (f"{where} {name} = {a[step, col]:.6g} {task.units[name]} at step {step}, physically "
                            f"impossible (must be {'>' if strict else '>='} {bound:g})")
            if name.endswith("_prev") and name[:-5] in task.inputs:
                i = task.inputs.index(name[:-5])
                lo, hi = task.model.u_low[i], task.model.u_high[i]
                bad = (a[:, col] < lo) | (a[:, col] > hi)
                if bad.any():
                    step = int(np.argmax(bad))
                    return (f"{where} {name} = {a[step, col]:.6g} at step {step}, outside the input bounds "
                            f"[{lo:g}, {hi:g}] the applied input lies in")
    return None


def _verified(dataset_id: str, root: str | os.PathLike | None) -> tuple[minari.MinariDataset, list[Any]]:
    """The dataset and its episodes, after :func:`verify_files`, Minari's read and :func:`_check_episode`."""
    regenerate = verify_files(dataset_id, root)
    folder = dataset_folder(dataset_id, root)
    main = folder / "data" / "main_data.hdf5"
    with datasets_root(root):
        try:
            ds = minari.load_dataset(dataset_id)
            episodes = list(ds.iterate_episodes())
        except Exception as exc:  # h5py and Minari raise OSError, KeyError, ValueError, AssertionError, ...
            first = str(exc).splitlines()[0] if str(exc) else ""
            raise _error(main, f"Minari cannot read it ({type(exc).__name__}: {first})", folder,
                         regenerate) from exc
    spec = ds.spec.env_spec
    task = registry.get_task(spec.id) if spec is not None and spec.id in registry.TASKS else None
    noisy = bool(spec.kwargs.get("noise")) if spec is not None else False
    for k, ep in enumerate(episodes):
        problem = _check_episode(ep, task, noisy)
        if problem is not None:
            seed = next(iter(ds.storage.get_episode_metadata([ep.id]))).get("seed")
            raise _error(main, f"episode {k} (seed {seed}): {problem}", folder, regenerate)
    return ds, episodes


def load_dataset(dataset_id: str, root: str | os.PathLike | None = None) -> minari.MinariDataset:
    """Open a dataset by id after verifying it (hashes, readability, finite and physical values).

    Raises:
        FileNotFoundError: no dataset of that id (the message names the folder searched).
        DatasetError: the dataset must not be used; the message names the file and how to rebuild it.
    """
    return _verified(dataset_id, root)[0]


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
    """Concatenate one or more verified datasets (:func:`load_dataset`) into flat transition arrays."""
    ids = [dataset_ids] if isinstance(dataset_ids, str) else list(dataset_ids)
    if not ids:
        raise ValueError("no dataset ids given")
    parts: dict[str, list[np.ndarray]] = {k: [] for k in Transitions.__dataclass_fields__}
    ep_index = 0
    for dataset_id in ids:
        for ep in _verified(dataset_id, root)[1]:
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
    ds, episodes = _verified(dataset_id, root)
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
        for ep, s in zip(episodes, seeds)
    ]
