"""Run independent tasks in parallel — a local process pool or a Dask cluster — and lose nothing.

Studies are made of independent tasks (a training run, a closed-loop episode). :func:`run_tasks` sends them
to an executor and stores each result in a :class:`ResultStore` the moment it arrives, so that

* a task already stored is never run again: an interrupted study resumes from what was saved;
* a worker that dies costs only the tasks it was running: the local pool is rebuilt and those tasks are
  resubmitted (at most ``max_attempts`` times each); Dask reschedules them by itself;
* the results do not depend on the executor: a task is a pure function of its arguments (its own seeds);
* a long task may keep its own progress in :func:`task_state_dir` (the RL-ACR study's training runs save
  their state between episodes there), so that even the task in flight resumes where it stopped; the folder
  is removed once the task's result is stored.

Executors: :class:`LocalPool` (``concurrent.futures``, spawned processes, the default), :class:`DaskExecutor`
(``--scheduler tcp://HOST:PORT`` connects to a running cluster; ``--workers N`` starts a ``LocalCluster``) and
:class:`SerialExecutor` (in-process, for debugging and tiny runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import warnings
import zipfile
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol, Sequence

import numpy as np
from tqdm.auto import tqdm


def worker_setup() -> None:
    """One thread per worker process: parallelism comes from the processes, not from BLAS or torch."""
    os.environ["SAFECTRL_THREADS"] = "1"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # torch is a dependency; guard only against partial installs
        pass


@dataclass(frozen=True)
class Task:
    """A unit of work: ``fn(*args)`` with a stable key naming its result."""

    key: str
    fn: Callable[..., Any]
    args: tuple

    def __call__(self) -> Any:
        return self.fn(*self.args)


def _call_task(task: Task) -> Any:
    worker_setup()
    return task()


#: The name of a stored result: 24 hex digits of the key's SHA-256.
TASK_FILE = r"[0-9a-f]{24}\.npz"
#: The folder under a store's root where tasks keep their progress (:func:`task_state_dir`).
PARTIAL = "partial"


def _task_name(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()[:24]


def task_state_dir(root: str | os.PathLike, key: str) -> Path:
    """Where the task ``key`` of the store at ``root`` may keep its progress until its result is stored (not
    created here). On a Dask cluster of several machines it is a path on the worker's machine."""
    return Path(root) / PARTIAL / _task_name(key)
#: Default seconds to wait for a Dask scheduler to answer (``--connect-timeout``).
CONNECT_TIMEOUT = 10.0


class CorruptTaskFile(ValueError):
    """A stored result that cannot be read back (truncated, not a zip, a pickle, another task's)."""


class SchedulerUnreachable(ConnectionError):
    """A Dask scheduler that did not answer within the connect timeout."""


class ResultStore:
    """One ``.npz`` file per finished task under ``root``, written atomically, read back on resume.

    A result is a flat dict of NumPy arrays and JSON values (numbers, strings, lists, dicts). Files are
    read with ``allow_pickle=False``: a run folder from elsewhere cannot execute code. A file that cannot be
    read back is moved to ``root/corrupt/`` with a warning naming it, counted in :attr:`set_aside`, and its
    task runs again (:meth:`stored`), so one damaged file costs one task, not the run.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.set_aside: list[Path] = []  # corrupt files moved to root/corrupt/ by this store

    def _path(self, key: str) -> Path:
        return self.root / (_task_name(key) + ".npz")

    def __contains__(self, key: str) -> bool:
        return self._path(key).exists()

    def save(self, key: str, result: dict[str, Any]) -> None:
        if not isinstance(result, dict):
            raise TypeError(f"task {key!r} returned {type(result).__name__}; results must be dicts")
        arrays = {k: v for k, v in result.items() if isinstance(v, np.ndarray)}
        meta = {k: v for k, v in result.items() if not isinstance(v, np.ndarray)}
        if "__meta__" in arrays:
            raise ValueError("'__meta__' is reserved")
        if any(v.dtype.hasobject for v in arrays.values()):
            raise TypeError(f"task {key!r} returned an object array; results must be numeric or text")
        fd, tmp = tempfile.mkstemp(dir=self.root, suffix=".tmp.npz")
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, __meta__=np.array(json.dumps({"key": key, "values": meta})), **arrays)
        os.replace(tmp, self._path(key))

    def load(self, key: str) -> dict[str, Any]:
        """The stored result of ``key``; :class:`CorruptTaskFile` names the file if it cannot be read."""
        path = self._path(key)
        try:
            with np.load(path, allow_pickle=False) as data:
                meta = json.loads(str(data["__meta__"]))
                if meta["key"] != key:
                    raise ValueError(f"it holds the result of {meta['key']!r}, not of {key!r}")
                out: dict[str, Any] = dict(meta["values"])
                out.update({k: data[k] for k in data.files if k != "__meta__"})
        except FileNotFoundError:
            raise
        except (OSError, EOFError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
            raise CorruptTaskFile(f"task file {path} ({key!r}) cannot be read: {exc}") from None
        return out

    def stored(self, keys: Sequence[str]) -> dict[str, dict[str, Any]]:
        """The readable stored results among ``keys``; a corrupt file is set aside (warned, counted)."""
        out = {}
        for key in keys:
            if key not in self:
                continue
            try:
                out[key] = self.load(key)
            except CorruptTaskFile as exc:
                self._set_aside(key, exc)
        return out

    def _set_aside(self, key: str, exc: CorruptTaskFile) -> None:
        corrupt = self.root / "corrupt"
        corrupt.mkdir(exist_ok=True)
        src = self._path(key)
        dest = corrupt / src.name
        shutil.move(src, dest)
        self.set_aside.append(dest)
        warnings.warn(f"{exc}; moved to {dest}, the task runs again", stacklevel=3)


class Executor(Protocol):
    """Runs tasks and yields ``(task, result)`` as each finishes, in any order."""

    name: str

    def map_unordered(self, tasks: Sequence[Task]) -> Iterator[tuple[Task, Any]]: ...

    def close(self) -> None: ...


class SerialExecutor:
    """In this process, one after the other."""

    name = "serial"

    def map_unordered(self, tasks: Sequence[Task]) -> Iterator[tuple[Task, Any]]:
        for task in tasks:
            yield task, task()

    def close(self) -> None:
        pass


def _exit_with_parent(parent: int, interval: float = 1.0) -> None:
    """Worker initialiser: end this process when the study that started it is gone (killed, crashed).

    Without it a killed run leaves its workers finishing (and computing) tasks nobody will collect.
    """
    import threading
    import time

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                os._exit(1)

    threading.Thread(target=watch, daemon=True, name="exit-with-parent").start()


class LocalPool:
    """A ``ProcessPoolExecutor`` of spawned processes that survives the death of a worker.

    Args:
        workers: processes (default: all cores).
        max_attempts: times a task may be started before its failure is final.
    """

    name = "local process pool"

    def __init__(self, workers: int | None = None, max_attempts: int = 3) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.max_attempts = max_attempts
        self._pool: ProcessPoolExecutor | None = None

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=self.workers, mp_context=get_context("spawn"),
                                   initializer=_exit_with_parent, initargs=(os.getpid(),))

    def map_unordered(self, tasks: Sequence[Task]) -> Iterator[tuple[Task, Any]]:
        attempts = {t.key: 0 for t in tasks}
        pending = list(tasks)
        while pending:
            self._pool = self._pool or self._new_pool()
            futures = {}
            for t in pending:
                attempts[t.key] += 1
                futures[self._pool.submit(_call_task, t)] = t
            pending = []
            broken = False
            waiting = set(futures)
            while waiting:
                done, waiting = wait(waiting, return_when=FIRST_COMPLETED)
                for fut in done:
                    task = futures[fut]
                    try:
                        result = fut.result()
                    except BrokenProcessPool:
                        broken = True
                        if attempts[task.key] >= self.max_attempts:
                            raise RuntimeError(
                                f"task {task.key!r}: its worker died {attempts[task.key]} times (out of memory, "
                                "killed, or a crash in native code; if the run was started from a script, the "
                                "call must sit under `if __name__ == \"__main__\":`, since the spawned workers "
                                "import that script)"
                            ) from None
                        pending.append(task)
                        continue
                    yield task, result
            if broken:
                self._pool.shutdown(wait=False, cancel_futures=True)
                self._pool = None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)  # after Ctrl-C: finish what runs, start nothing new
            self._pool = None


class DaskExecutor:
    """Tasks on a Dask distributed cluster: an existing one (``address``) or a new ``LocalCluster``.

    A task whose worker dies is rescheduled by the scheduler (up to its ``allowed-failures`` setting).
    """

    def __init__(self, address: str | None = None, workers: int | None = None,
                 connect_timeout: float = CONNECT_TIMEOUT) -> None:
        from distributed import Client, LocalCluster

        if (address is None) == (workers is None):
            raise ValueError("give exactly one of a scheduler address or a number of local workers")
        self._cluster = None
        if address is not None:
            try:
                self.client = Client(address, timeout=connect_timeout)
            except (OSError, TimeoutError) as exc:
                raise SchedulerUnreachable(
                    f"no Dask scheduler answered at {address} within {connect_timeout:g} s ({exc}); is it "
                    "running (`dask scheduler`), or raise --connect-timeout") from None
            self.name = f"Dask cluster at {address}"
        else:
            self._cluster = LocalCluster(
                n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=None
            )
            self.client = Client(self._cluster)
            self.name = f"Dask LocalCluster with {workers} workers"

    def map_unordered(self, tasks: Sequence[Task]) -> Iterator[tuple[Task, Any]]:
        from distributed import as_completed

        futures = {self.client.submit(_call_task, t, key=_dask_key(t.key), pure=False): t for t in tasks}
        for fut in as_completed(futures):
            yield futures[fut], fut.result()

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()


def _dask_key(key: str) -> str:
    return "safectrl-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def make_executor(scheduler: str | None = None, workers: int | None = None, serial: bool = False,
                  connect_timeout: float = CONNECT_TIMEOUT) -> Executor:
    """The executor the command line asks for: ``--scheduler``, ``--workers`` or the local pool.

    A scheduler is connected to here (:class:`SchedulerUnreachable` after ``connect_timeout`` s), so that a
    study can make its executor before it writes anything.
    """
    if scheduler is not None and workers is not None:
        raise ValueError("--scheduler and --workers are exclusive: the first uses a running cluster")
    if not connect_timeout > 0:
        raise ValueError(f"--connect-timeout must be positive, got {connect_timeout}")
    if scheduler is not None:
        return DaskExecutor(address=scheduler, connect_timeout=connect_timeout)
    if workers is not None:
        if workers < 1:
            raise ValueError(f"--workers must be >= 1, got {workers}")
        return DaskExecutor(workers=workers)
    return SerialExecutor() if serial else LocalPool()


def run_tasks(
    tasks: Sequence[Task],
    executor: Executor,
    store: ResultStore,
    desc: str = "tasks",
    progress: bool = True,
) -> dict[str, Any]:
    """Run every task not yet in ``store`` (or whose file is corrupt); return all results by key.

    New results are read back from their files, so a resumed run returns exactly what a clean one does.
    """
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError("task keys must be unique")
    results = store.stored(keys)
    for key in results:  # progress left behind by a run stopped between storing a result and this cleanup
        shutil.rmtree(task_state_dir(store.root, key), ignore_errors=True)
    todo = [t for t in tasks if t.key not in results]
    if progress and len(todo) < len(tasks):
        print(f"{desc}: {len(tasks) - len(todo)} of {len(tasks)} already done, resuming")
    if todo:
        with tqdm(total=len(todo), desc=desc, disable=not progress) as bar:
            for task, result in executor.map_unordered(todo):
                store.save(task.key, result)
                results[task.key] = store.load(task.key)
                shutil.rmtree(task_state_dir(store.root, task.key), ignore_errors=True)
                bar.update()
    return {k: results[k] for k in keys}


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable configuration (artifact cache keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
