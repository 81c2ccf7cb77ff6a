"""Parallel execution: same results whichever executor runs the tasks; dead workers and restarts lose nothing."""

from __future__ import annotations

import csv
import json
import os
import re
from pathlib import Path

import numpy as np
import pytest

from safectrl.studies.executor import (
    DaskExecutor,
    LocalPool,
    ResultStore,
    SerialExecutor,
    Task,
    make_executor,
    run_tasks,
)


def _pi_episode(scenario: str, seed: int) -> dict:
    """A short closed-loop episode: enough physics to make executor differences visible."""
    from safectrl.controllers.pi import NOMINAL_TUNING, PIController
    from safectrl.models import polycstr as pc
    from safectrl.rl.env import TaskEnv
    from safectrl.rl.rollout import run_episode

    ep = run_episode(TaskEnv(pc.TASK, scenario, noise=True, max_steps=15), PIController(NOMINAL_TUNING), seed)
    return {"cost": float(-ep.rewards.sum()), "states": ep.infos["state"], "pid": os.getpid()}


def _die_once(marker: str, value: int) -> dict:
    """Kill the worker process the first time it runs; return normally afterwards."""
    path = Path(marker)
    if not path.exists():
        path.write_text("died")
        os._exit(1)
    return {"value": value}


def _count_calls(log: str, value: int) -> dict:
    with open(log, "a") as fh:
        fh.write(f"{value}\n")
    return {"value": value}


def _tasks():
    return [Task(f"{s}/{k}", _pi_episode, (s, k)) for s in ("startup", "grade_up") for k in range(3)]


def _compare(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key]["cost"] == b[key]["cost"]
        np.testing.assert_array_equal(a[key]["states"], b[key]["states"])


def test_local_pool_and_dask_local_cluster_give_identical_results(tmp_path):
    serial = run_tasks(_tasks(), SerialExecutor(), ResultStore(tmp_path / "serial"), progress=False)
    pool = LocalPool(workers=2)
    try:
        local = run_tasks(_tasks(), pool, ResultStore(tmp_path / "pool"), progress=False)
    finally:
        pool.close()
    dask = DaskExecutor(workers=2)
    try:
        distributed = run_tasks(_tasks(), dask, ResultStore(tmp_path / "dask"), progress=False)
    finally:
        dask.close()
    _compare(serial, local)
    _compare(serial, distributed)
    assert {r["pid"] for r in local.values()} != {os.getpid()}  # really ran elsewhere


@pytest.mark.parametrize("kind", ["pool", "dask"])
def test_a_dying_worker_loses_no_results(kind, tmp_path):
    marker = tmp_path / "marker"
    tasks = [Task(f"t{k}", _count_calls, (str(tmp_path / "log"), k)) for k in range(4)]
    tasks.append(Task("dies", _die_once, (str(marker), 99)))
    executor = LocalPool(workers=2) if kind == "pool" else DaskExecutor(workers=2)
    try:
        results = run_tasks(tasks, executor, ResultStore(tmp_path / "store"), progress=False)
    finally:
        executor.close()
    assert marker.read_text() == "died"
    assert results["dies"] == {"value": 99}
    assert sorted(results[f"t{k}"]["value"] for k in range(4)) == [0, 1, 2, 3]


def _always_die() -> dict:
    os._exit(1)


def test_a_task_whose_worker_always_dies_fails_with_the_likely_causes(tmp_path):
    store = ResultStore(tmp_path / "store")
    tasks = [Task("doomed", _always_die, ())]
    executor = LocalPool(workers=1, max_attempts=2)
    try:
        with pytest.raises(RuntimeError, match=r"'doomed': its worker died 2 times .*__main__"):
            run_tasks(tasks, executor, store, progress=False)
    finally:
        executor.close()
    assert "doomed" not in store


def test_resume_runs_only_what_is_missing(tmp_path):
    log = tmp_path / "log"
    store = ResultStore(tmp_path / "store")
    tasks = [Task(f"t{k}", _count_calls, (str(log), k)) for k in range(5)]
    run_tasks(tasks[:3], SerialExecutor(), store, progress=False)
    results = run_tasks(tasks, SerialExecutor(), store, progress=False)
    assert log.read_text().split() == ["0", "1", "2", "3", "4"]  # 0..2 not run again
    assert [results[f"t{k}"]["value"] for k in range(5)] == [0, 1, 2, 3, 4]


def test_result_store_refuses_pickles_and_non_dicts(tmp_path):
    store = ResultStore(tmp_path)
    with pytest.raises(TypeError, match="must be dicts"):
        store.save("k", [1, 2])
    with pytest.raises(TypeError, match="object array"):
        store.save("obj", {"a": np.array([object()], dtype=object)})
    # a planted file carrying a pickled object is refused on load
    store.save("planted", {"a": np.zeros(2)})
    np.savez(store._path("planted"), __meta__=np.array('{"key": "planted", "values": {}}'),
             a=np.array([{"x": 1}], dtype=object))
    with pytest.raises(ValueError, match="allow_pickle"):
        store.load("planted")


def test_make_executor_validates_its_arguments():
    with pytest.raises(ValueError, match="exclusive"):
        make_executor(scheduler="tcp://127.0.0.1:8786", workers=2)
    with pytest.raises(ValueError, match=">= 1"):
        make_executor(workers=0)
    assert isinstance(make_executor(serial=True), SerialExecutor)
    assert isinstance(make_executor(), LocalPool)


def test_duplicate_keys_are_rejected(tmp_path):
    with pytest.raises(ValueError, match="unique"):
        run_tasks([Task("a", _count_calls, ("x", 1))] * 2, SerialExecutor(), ResultStore(tmp_path), progress=False)


def test_study_gives_identical_results_from_the_pool_and_a_dask_local_cluster(tmp_path, monkeypatch, minari_root):
    """Training and episodes of a small study through both executors, each with its own artifact cache."""
    import csv

    from safectrl.studies.study import StudyPreset, run_study

    preset = StudyPreset("executors", eval_seeds=2, data_episodes=4, variants=("nominal",), scenarios=("grade_up",),
                         controllers=("PI nominal", "NMPC oracle", "IQL", "BC+PICNN (GD)", "IQL+PICNN (exact)"),
                         max_steps=12, bc_steps=30, iql_steps=30, cost_model_epochs=2)

    def run(name: str, **executor) -> tuple[list[dict], bytes]:
        monkeypatch.setenv("SAFECTRL_ARTIFACTS_DIR", str(tmp_path / f"artifacts-{name}"))
        out = run_study(preset, out=tmp_path / name, progress=False, **executor)
        with open(out / "episodes.csv") as fh:
            rows = [{k: v for k, v in r.items() if k != "decision_ms"} for r in csv.DictReader(fh)]
        weights = sorted((tmp_path / f"artifacts-{name}").glob("iql-policy-*/model.safetensors"))
        assert len(weights) == 1
        return rows, weights[0].read_bytes()

    pool_rows, pool_weights = run("pool")
    dask_rows, dask_weights = run("dask", workers=2)
    assert len(pool_rows) == 5 * 2
    assert pool_rows == dask_rows
    assert pool_weights == dask_weights


def _sleep_and_report(path: str, seconds: float) -> dict:
    tmp = Path(path + ".tmp")  # written whole, then renamed: the reader never sees a half-written pid
    tmp.write_text(str(os.getpid()))
    tmp.replace(path)
    import time

    time.sleep(seconds)
    return {"value": 1}


_ORPHAN_SCRIPT = """
import sys
from safectrl.studies.executor import LocalPool, ResultStore, Task, run_tasks
sys.path.insert(0, {tests!r})
from test_executor import _sleep_and_report
run_tasks([Task("sleep", _sleep_and_report, ({pidfile!r}, 120.0))], LocalPool(workers=1),
          ResultStore({store!r}), progress=False)
"""


def test_pool_workers_end_when_the_run_is_killed(tmp_path):
    """A killed study must not leave workers computing tasks nobody will collect."""
    import signal
    import subprocess
    import sys
    import time

    pidfile = tmp_path / "worker.pid"
    script = _ORPHAN_SCRIPT.format(tests=str(Path(__file__).parent), pidfile=str(pidfile), store=str(tmp_path / "s"))
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.time() + 60
        while not pidfile.exists() and time.time() < deadline:
            time.sleep(0.1)
        worker = int(pidfile.read_text())
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.time() + 30
    while time.time() < deadline:
        if not _running(worker):
            return
        time.sleep(0.2)
    os.kill(worker, signal.SIGKILL)
    pytest.fail("the worker outlived the killed run by 30 s")


def _running(pid: int) -> bool:
    """Whether ``pid`` is alive and not a zombie (an exited orphan that PID 1 has not reaped yet)."""
    if not Path("/proc/self/stat").exists():  # no procfs: signal 0, which cannot tell zombies apart
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


@pytest.mark.parametrize("serial", [True, False], ids=["serial", "local-pool"])
def test_study_runs_your_controller_as_a_row_beside_the_built_in_ones(serial, tmp_path, minari_root, monkeypatch):
    """``--controller`` through the Python API: a controller of the test tree, imported in the workers by name."""
    from safectrl.studies.study import StudyPreset, run_study

    monkeypatch.setenv("SAFECTRL_ARTIFACTS_DIR", str(tmp_path / "artifacts"))
    preset = StudyPreset("tiny", eval_seeds=2, data_episodes=2, variants=("nominal", "mismatch"),
                         controllers=("PI nominal",), scenarios=("grade_up",), max_steps=6,
                         custom_controllers={"PI half": "custom_controller:detuned_pi"})
    out = run_study(preset, tmp_path / "run", serial=serial, progress=False,
                    controllers={"checked": "custom_controller:ContextChecked"})
    rows = list(csv.DictReader(open(out / "episodes.csv")))
    assert {(r["variant"], r["controller"]) for r in rows} == {
        (v, c) for v in ("nominal", "mismatch") for c in ("PI nominal", "PI half", "checked")}
    assert len(rows) == 2 * 3 * 2
    config = json.loads((out / "config.json").read_text())
    assert config["preset"]["custom_controllers"] == [["PI half", "custom_controller:detuned_pi"],
                                                      ["checked", "custom_controller:ContextChecked"]]
    cost = {(r["variant"], r["controller"], r["seed"]): float(r["cost"]) for r in rows}
    assert all(cost[(v, "PI half", s)] == cost[(v, "checked", s)] != cost[(v, "PI nominal", s)]
               for v, _, s in cost)
    assert "| grade_up | PI half" in (out / "summary.md").read_text()
    with pytest.raises(ValueError, match="different configuration"):  # resume refuses another set of rows
        run_study(preset, tmp_path / "run", serial=True, progress=False)


# -- damaged task files and run folders --------------------------------------------------------------------


def _damage(path: Path, how: str) -> None:
    if how == "truncated":
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    elif how == "not a zip":
        path.write_bytes(b"garbage" * 10)
    else:  # a valid file holding another task's result
        np.savez(path, __meta__=np.array(json.dumps({"key": "other", "values": {"value": 9}})))


@pytest.mark.parametrize("how", ["truncated", "not a zip", "another task's"])
def test_a_corrupt_task_file_is_named_moved_aside_and_recomputed(how, tmp_path):
    log = tmp_path / "log"
    tasks = [Task(f"{s}/{k}", _pi_episode, (s, k)) for s in ("startup",) for k in range(3)]
    clean = run_tasks(tasks, SerialExecutor(), ResultStore(tmp_path / "clean"), progress=False)
    store = ResultStore(tmp_path / "store")
    run_tasks(tasks, SerialExecutor(), store, progress=False)
    bad = store._path("startup/1")
    _damage(bad, how)
    counted = [Task(t.key, _count_calls_then, (str(log), t)) for t in tasks]
    resumed_store = ResultStore(tmp_path / "store")
    with pytest.warns(UserWarning, match=rf"task file {re.escape(str(bad))} \('startup/1'\) cannot be read: "
                                         r".*moved to .*corrupt"):
        resumed = run_tasks(counted, SerialExecutor(), resumed_store, progress=False)
    assert log.read_text().split() == ["startup/1"]  # only the damaged task ran again
    assert resumed_store.set_aside == [tmp_path / "store" / "corrupt" / bad.name]
    assert (tmp_path / "store" / "corrupt" / bad.name).exists() and bad.exists()
    _compare(resumed, clean)  # bit-identical to a clean run


def _count_calls_then(log: str, task: Task) -> dict:
    with open(log, "a") as fh:
        fh.write(f"{task.key}\n")
    return task()


def test_load_names_the_corrupt_file(tmp_path):
    from safectrl.studies.executor import CorruptTaskFile

    store = ResultStore(tmp_path)
    store.save("k", {"a": np.zeros(3)})
    _damage(store._path("k"), "truncated")
    with pytest.raises(CorruptTaskFile, match=rf"task file {re.escape(str(store._path('k')))} \('k'\) cannot be read"):
        store.load("k")


def test_an_unreachable_scheduler_fails_within_the_connect_timeout():
    import time

    from safectrl.studies.executor import SchedulerUnreachable

    t0 = time.perf_counter()
    with pytest.raises(SchedulerUnreachable, match=r"no Dask scheduler answered at tcp://127.0.0.1:9 within 1 s"):
        make_executor(scheduler="tcp://127.0.0.1:9", connect_timeout=1.0)
    assert time.perf_counter() - t0 < 8
    with pytest.raises(ValueError, match="--connect-timeout must be positive"):
        make_executor(scheduler="tcp://127.0.0.1:9", connect_timeout=0)


def test_run_folder_refuses_another_kind_even_with_force(tmp_path):
    from safectrl.studies import runfolder

    out = tmp_path / "run"
    runfolder.commit(runfolder.check(out, "comparative", {"preset": {"name": "quick"}}))
    store = ResultStore(out / "tasks")
    store.save("episode/1", {"a": np.zeros(2)})
    before = (out / "config.json").read_bytes()
    for force in (False, True):
        with pytest.raises(runfolder.RunFolderError,
                           match=r"holds a 'comparative' run, not a 'acr' run; .*--force never removes"):
            runfolder.check(out, "acr", {"preset": {"name": "quick"}}, force=force, resumable=True)
    assert (out / "config.json").read_bytes() == before and "episode/1" in store


def test_run_folder_says_what_differs_and_force_removes_only_its_task_files(tmp_path):
    from safectrl.studies import runfolder

    out = tmp_path / "run"
    config = {"preset": {"name": "quick", "eval_seeds": 2}, "safectrl": "1"}
    runfolder.commit(runfolder.check(out, "comparative", config))
    stored = json.loads((out / "config.json").read_text())
    assert stored["kind"] == "comparative" and stored["fingerprint"] == runfolder.fingerprint(config)
    store = ResultStore(out / "tasks")
    store.save("episode/1", {"a": np.zeros(2)})
    (out / "tasks" / "notes.txt").write_text("mine")
    (out / "summary.md").write_text("old")
    other = {"preset": {"name": "quick", "eval_seeds": 5}, "safectrl": "1"}
    with pytest.raises(runfolder.RunFolderError,
                       match=r"different configuration \(preset.eval_seeds: 2 -> 5\); .* or --force"):
        runfolder.check(out, "comparative", other, resumable=True)
    runfolder.check(out, "comparative", config)  # the same configuration resumes
    folder = runfolder.check(out, "comparative", other, force=True, resumable=True)
    assert "episode/1" in store  # checking writes nothing
    runfolder.commit(folder)
    assert "episode/1" not in store
    assert (out / "tasks" / "notes.txt").exists() and (out / "summary.md").exists()
    assert json.loads((out / "config.json").read_text())["fingerprint"] == runfolder.fingerprint(other)


def test_run_folder_refuses_files_unwritable_places_and_foreign_folders(tmp_path):
    from safectrl.studies import runfolder

    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file, not a folder"):
        runfolder.check(tmp_path / "file", "acr", {})
    with pytest.raises(NotADirectoryError, match=r"cannot make .*file/sub: .*file is a file"):
        runfolder.check(tmp_path / "file" / "sub", "acr", {})
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "a.jpg").write_text("x")
    with pytest.raises(runfolder.RunFolderError, match="not empty and has no config.json"):
        runfolder.check(tmp_path / "photos", "acr", {})
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "config.json").write_text("{not json")
    with pytest.raises(runfolder.RunFolderError, match=r"config.json cannot be read"):
        runfolder.check(tmp_path / "broken", "acr", {})
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders: the permission case cannot fail as root")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    with pytest.raises(PermissionError, match="permission denied"):
        runfolder.check(locked / "run", "acr", {})


def test_a_run_that_fails_before_its_first_result_leaves_no_folder(tmp_path):
    from safectrl.studies import runfolder

    for name, stored in (("new", False), ("started", True)):
        folder = runfolder.check(tmp_path / name, "acr", {})
        with pytest.raises(KeyboardInterrupt), runfolder.cleanup_on_failure(folder):
            runfolder.commit(folder)
            if stored:
                ResultStore(folder.path / "tasks").save("k", {"a": np.zeros(1)})
            raise KeyboardInterrupt
        assert (tmp_path / name).exists() == stored
    existing = tmp_path / "existing"
    existing.mkdir()
    folder = runfolder.check(existing, "acr", {})
    with pytest.raises(RuntimeError), runfolder.cleanup_on_failure(folder):
        runfolder.commit(folder)
        raise RuntimeError
    assert existing.exists()  # not this run's to remove
