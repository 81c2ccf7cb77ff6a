"""Run independent tasks in parallel — a local process pool or a Dask cluster — and lose nothing.

Studies are made of independent tasks (a training run, a closed-loop episode). :func:`run_tasks` sends them
to an executor and stores each result in a :class:`ResultStore` the moment it arrives, so that

* a task already stored is never run again: an interrupted study resumes from what was saved;
* a worker that dies costs only the tasks it was running: the local pool is rebuilt and those tasks are
  resubmitted (at most ``max_attempts`` times each); Dask reschedules them by itself;
* the results do not depend on the executor: a task is a pure function of its arguments (its own seeds).

Executors: :class:`LocalPool` (``concurrent.futures``, spawned processes, the default), :class:`DaskExecutor`
(``--scheduler tcp://HOST:PORT`` connects to a running cluster; ``--workers N`` starts a ``LocalCluster``) and
:class:`SerialExecutor` (in-process, for debugging and tiny runs).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
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


class ResultStore:
    """One ``.npz`` file per finished task under ``root``, written atomically, read back on resume.

    A result is a flat dict of NumPy arrays and JSON values (numbers, strings, lists, dicts). Files are
    read with ``allow_pickle=False``: a run folder from elsewhere cannot execute code.
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root / (hashlib.sha256(key.encode()).hexdigest()[:24] + ".npz")

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
        with np.load(self._path(key), allow_pickle=False) as data:
            meta = json.loads(str(data["__meta__"]))
            if meta["key"] != key:
                raise RuntimeError(f"result file {self._path(key)} holds {meta['key']!r}, not {key!r}")
            out: dict[str, Any] = dict(meta["values"])
            out.update({k: data[k] for k in data.files if k != "__meta__"})
        return out


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

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        from distributed import Client, LocalCluster

        if (address is None) == (workers is None):
            raise ValueError("give exactly one of a scheduler address or a number of local workers")
        self._cluster = None
        if address is not None:
            self.client = Client(address)
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


def make_executor(scheduler: str | None = None, workers: int | None = None, serial: bool = False) -> Executor:
    """The executor the command line asks for: ``--scheduler``, ``--workers`` or the local pool."""
    if scheduler is not None and workers is not None:
        raise ValueError("--scheduler and --workers are exclusive: the first uses a running cluster")
    if scheduler is not None:
        return DaskExecutor(address=scheduler)
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
    """Run every task not yet in ``store``; return all results (stored and new) by key."""
    keys = [t.key for t in tasks]
    if len(set(keys)) != len(keys):
        raise ValueError("task keys must be unique")
    todo = [t for t in tasks if t.key not in store]
    if progress and len(todo) < len(tasks):
        print(f"{desc}: {len(tasks) - len(todo)} of {len(tasks)} already done, resuming")
    if todo:
        with tqdm(total=len(todo), desc=desc, disable=not progress) as bar:
            for task, result in executor.map_unordered(todo):
                store.save(task.key, result)
                bar.update()
    return {k: store.load(k) for k in keys}


def config_hash(config: dict[str, Any]) -> str:
    """A short stable hash of a JSON-serialisable configuration (artifact cache keys)."""
    return hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()[:16]
