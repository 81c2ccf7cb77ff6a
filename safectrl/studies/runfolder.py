"""Run folders: checked before anything is written, labelled with their kind and configuration.

Every study that writes a folder records in its ``config.json`` the study's ``kind`` ("comparative", "acr",
"nmpc-episode", ...) and a ``fingerprint`` (SHA-256 of the canonical JSON of its configuration). Before a run
writes anything, :func:`check` reads that file: a folder of another kind is refused (even with ``--force``:
it is another study's work), a folder of the same kind but another configuration is refused unless the study
was asked to ``force`` (then only its own task files are removed), a file or an unwritable place is refused.
:func:`commit` then writes ``config.json`` atomically — after the executor has connected — and
:func:`cleanup_on_failure` removes a folder the run created if it fails before its first stored result, so a
failed start leaves nothing behind.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from safectrl.studies.executor import PARTIAL, TASK_FILE

CONFIG = "config.json"
KIND_KEY = "kind"
FINGERPRINT_KEY = "fingerprint"
TASKS = "tasks"


class RunFolderError(ValueError):
    """A run folder that cannot be used as asked (the message says why and what to do, in one line)."""


def canonical(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as it reads back from JSON (tuples become lists, NumPy values numbers or lists, other
    objects their ``str``)."""
    return json.loads(json.dumps(config, default=_plain))


def _plain(value: Any) -> Any:
    if isinstance(value, (np.generic, np.ndarray)):
        return value.tolist()
    return str(value)


def fingerprint(config: dict[str, Any]) -> str:
    """SHA-256 of the canonical JSON of ``config`` (sorted keys, no whitespace)."""
    text = json.dumps(canonical(config), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def psf_fingerprint(env_id: str) -> str:
    """The first 12 hex digits of the fingerprint of ``env_id``'s predictive safety filter configuration: part
    of the task keys of the filtered rows of the studies, so that a run resumed after that configuration
    changed (a new back-off, say) reruns them instead of reading stale results."""
    from safectrl.safety.psf import DEFAULTS, PSFConfig

    config = dataclasses.asdict(DEFAULTS.get(env_id, PSFConfig()))
    for name, default in ADDED_PSF_FIELDS.items():  # absent from earlier filters' fingerprints
        if config.get(name) == default:
            del config[name]
    return fingerprint(config)[:12]


#: PSFConfig fields added after results were stored under their filters' fingerprints: left out of the
#: fingerprint while at these values, so a filter that does not use them keeps its fingerprint.
#: ``screen`` only skips probes whose plans the filter would refuse: the same decisions, fewer solves (the
#: correction then starts from the last plan shifted instead of the refused probe's).
ADDED_PSF_FIELDS: dict[str, Any] = {"estimated_params": (), "screen": True, "sqp": False}


@dataclass(frozen=True)
class RunFolder:
    """A checked, not yet written run folder (see :func:`check`)."""

    path: Path
    kind: str
    config: dict[str, Any]
    created: bool  # the folder did not exist when it was checked: a failed start removes it
    clear_tasks: bool  # --force on a folder of this kind: its task files are removed on commit


def _differences(old: Any, new: Any, prefix: str = "") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for key in sorted(set(old) | set(new)):
            name = f"{prefix}.{key}" if prefix else str(key)
            if key not in old:
                out.append(f"{name} is new")
            elif key not in new:
                out.append(f"{name} is gone")
            else:
                out += _differences(old[key], new[key], name)
        return out
    return [] if old == new else [f"{prefix or 'the configuration'}: {_short(old)} -> {_short(new)}"]


def _short(value: Any, limit: int = 40) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def read_kind(path: str | os.PathLike) -> str | None:
    """The kind recorded in ``path/config.json``, or None when the folder has no such file."""
    stored = _read(Path(path))
    return None if stored is None else stored.get(KIND_KEY) or "unlabelled"


def _read(path: Path) -> dict[str, Any] | None:
    cfg_file = path / CONFIG
    if not cfg_file.exists():
        return None
    try:
        stored = json.loads(cfg_file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise RunFolderError(f"{cfg_file} cannot be read ({exc}); choose another --out") from None
    if not isinstance(stored, dict):
        raise RunFolderError(f"{cfg_file} is not a run's configuration; choose another --out")
    return stored


def check(path: str | os.PathLike, kind: str, config: dict[str, Any], force: bool = False,
          resumable: bool = False) -> RunFolder:
    """Refuse a folder this run must not write into; write nothing.

    Args:
        path: the run folder (it may not exist yet).
        kind: the study's kind, recorded in the folder.
        config: the run's configuration (JSON-serialisable); its fingerprint is recorded.
        force: discard this kind's earlier tasks in a folder of another configuration.
        resumable: the study stores tasks and resumes them (its message offers --force).
    Raises:
        NotADirectoryError: ``path`` or a parent of it is a file.
        PermissionError: the folder (or the parent it would be made in) is not writable.
        RunFolderError: a folder of another kind, of another configuration, or not a run folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a folder; choose another --out")
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise NotADirectoryError(f"cannot make {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write into {existing}: permission denied; choose another --out")
    config = canonical(config)
    if KIND_KEY in config or FINGERPRINT_KEY in config:
        raise ValueError(f"a run configuration may not have {KIND_KEY!r} or {FINGERPRINT_KEY!r} keys")
    stored = _read(path)
    clear = False
    if stored is not None:
        other = stored.get(KIND_KEY)
        if other != kind:
            what = f"a {other!r} run" if other else "a run of unrecorded kind (an older safectrl)"
            raise RunFolderError(f"{path} holds {what}, not a {kind!r} run; choose another --out "
                                 "(--force never removes another study's folder)")
        if stored.get(FINGERPRINT_KEY) != fingerprint(config):
            if not force:
                old = {k: v for k, v in stored.items() if k not in (KIND_KEY, FINGERPRINT_KEY)}
                diff = _differences(old, config) or ["its fingerprint"]
                diff.sort(key=lambda d: d.endswith((" is new", " is gone")))  # changed values first
                more = f" and {len(diff) - 3} more" if len(diff) > 3 else ""
                fix = ", or --force to discard its tasks and start afresh" if resumable else ""
                raise RunFolderError(f"{path} holds a {kind!r} run with a different configuration "
                                     f"({'; '.join(diff[:3])}{more}); choose another --out{fix}")
            clear = True
        elif force:
            clear = True
    elif path.is_dir() and any(path.iterdir()):
        raise RunFolderError(f"{path} is not empty and has no {CONFIG}, so it is not a run folder; "
                             "choose another --out")
    return RunFolder(path, kind, config, created=not path.exists(), clear_tasks=clear and resumable)


def commit(folder: RunFolder) -> Path:
    """Create the folder, remove this kind's task files if ``--force`` asked, write ``config.json`` atomically."""
    folder.path.mkdir(parents=True, exist_ok=True)
    if folder.clear_tasks:
        remove_task_files(folder.path / TASKS)
    record = {KIND_KEY: folder.kind, FINGERPRINT_KEY: fingerprint(folder.config), **folder.config}
    fd, tmp = tempfile.mkstemp(dir=folder.path, prefix=".config-", suffix=".json")
    with os.fdopen(fd, "w") as fh:
        json.dump(record, fh, indent=2)
    os.replace(tmp, folder.path / CONFIG)
    return folder.path


def remove_task_files(tasks: Path) -> int:
    """Remove the result files (and their set-aside corrupt copies) in ``tasks`` and the progress of
    unfinished tasks (``tasks/partial``); nothing else. The count of result files."""
    if not tasks.is_dir():
        return 0
    shutil.rmtree(tasks / PARTIAL, ignore_errors=True)
    removed = 0
    for f in [*tasks.iterdir(), *((tasks / "corrupt").iterdir() if (tasks / "corrupt").is_dir() else ())]:
        if f.is_file() and (re.fullmatch(TASK_FILE, f.name) or f.name.endswith(".tmp.npz")):
            f.unlink()
            removed += 1
    return removed


@contextmanager
def cleanup_on_failure(folder: RunFolder) -> Iterator[None]:
    """Remove the folder if this run created it and fails (or is interrupted) before its first stored result
    or any task's saved progress."""
    try:
        yield
    except BaseException:
        tasks = folder.path / TASKS
        def kept(f: Path) -> bool:  # a stored result, or a task's saved progress
            return bool(re.fullmatch(TASK_FILE, f.name)) or (f.name == PARTIAL and any(f.iterdir()))

        stored = tasks.is_dir() and any(kept(f) for f in tasks.iterdir())
        if folder.created and not stored:
            shutil.rmtree(folder.path, ignore_errors=True)
        raise


def record(config: Any, **extra: Any) -> dict[str, Any]:
    """A config dataclass's fields and ``extra``: what a one-shot study's ``config.json`` holds."""
    return canonical({**dataclasses.asdict(config), **extra})


@contextmanager
def single_run(path: str | os.PathLike, kind: str, config: dict[str, Any]) -> Iterator[Path]:
    """A one-shot study's folder (no tasks to resume): checked, written, removed again if the run fails and
    created it. Yields the folder."""
    folder = check(path, kind, config)
    with cleanup_on_failure(folder):
        yield commit(folder)
