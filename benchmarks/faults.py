"""What safectrl does when data, files, sensors or the user go wrong: every case, tried for real, as one table.

    python benchmarks/faults.py [--markdown docs/faults.md]

Each case builds its situation in a temporary folder (a corrupted dataset, an edited checkpoint, a NaN
measurement, a run folder of another study, a bad command line ...), runs what a user would run, and is
judged by what came out:

* **clear error**: an exception of safectrl's own type, or a command-line exit with one line on stderr, whose
  message says what is wrong (and names the file where there is one);
* **recovered**: the run went on with a safe answer, and counted what it did;
* **silent**: it went on as if nothing had happened (the defect the table exists to catch);
* **crash**: an unexpected exception or a traceback.

"nothing lost" says whether the user's earlier results and files are intact afterwards. The script exits
non-zero if any case is "silent" or "crash", so the table in ``docs/faults.md`` stays true.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass
class Outcome:
    behaviour: str  # "clear error" | "recovered" | "silent" | "crash"
    detail: str  # the message, or what was counted
    nothing_lost: bool


CASES: list[tuple[str, Callable[[Path], Outcome]]] = []


def case(name: str):
    def register(fn: Callable[[Path], Outcome]) -> Callable[[Path], Outcome]:
        CASES.append((name, fn))
        return fn

    return register


def _cli(argv: list[str]) -> tuple[int, str]:
    """Run the command line in this process; (exit code, stderr)."""
    from safectrl.studies.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exc:  # argparse usage errors
            code = int(exc.code or 0)
    return code, err.getvalue().strip()


def _cli_outcome(argv: list[str], expect: str, lost: Callable[[], bool] = lambda: False) -> Outcome:
    code, err = _cli(argv)
    lines = [line for line in err.splitlines() if line.strip() and "%|" not in line]
    if code != 0 and len(lines) == 1 and "Traceback" not in err and expect in lines[0]:
        return Outcome("clear error", lines[0], not lost())
    if code == 0:
        return Outcome("silent", f"exit 0: {err[-200:]}", not lost())
    return Outcome("crash", f"exit {code}: {err[-300:]}", not lost())


def _raises(fn: Callable[[], object], error: type | tuple[type, ...], expect: str) -> Outcome:
    try:
        fn()
    except error as exc:
        msg = str(exc).splitlines()[0]
        ok = expect in msg
        return Outcome("clear error" if ok else "crash", msg, True)
    except Exception as exc:  # noqa: BLE001 - the table reports any other exception as a crash
        return Outcome("crash", f"{type(exc).__name__}: {exc}", True)
    return Outcome("silent", "no error", True)


# -- datasets ------------------------------------------------------------------------------------------------


def _dataset(tmp: Path) -> tuple[str, Path]:
    from safectrl.studies import datasets

    root = tmp / "minari"
    ds_id = datasets.generate_dataset("grade_up", 2, 0, root=root, progress=False)
    return ds_id, root


def _data_file(root: Path, ds_id: str) -> Path:
    return next((root / ds_id).rglob("*.hdf5"))


def _flip(path: Path, offset_fraction: float, n: int) -> None:
    raw = bytearray(path.read_bytes())
    start = int(len(raw) * offset_fraction)
    for k in range(start, min(start + n, len(raw))):
        raw[k] ^= 0xFF
    path.write_bytes(bytes(raw))


def _load_dataset_outcome(ds_id: str, root: Path) -> Outcome:
    from safectrl.rl import data

    return _raises(lambda: data.load_transitions(ds_id, root), data.DatasetError, "safectrl data")


@case("64 flipped bytes inside a stored observation array")
def _flipped_dataset(tmp: Path) -> Outcome:
    ds_id, root = _dataset(tmp)
    _flip(_data_file(root, ds_id), 0.6, 64)
    return _load_dataset_outcome(ds_id, root)


@case("one edited value in a stored observation array (h5py)")
def _edited_dataset(tmp: Path) -> Outcome:
    import h5py

    ds_id, root = _dataset(tmp)
    with h5py.File(_data_file(root, ds_id), "r+") as f:
        obs = f["episode_0/observations"]
        obs[3, 2] = -0.013  # T
    return _load_dataset_outcome(ds_id, root)


@case("truncated HDF5 file")
def _truncated_dataset(tmp: Path) -> Outcome:
    ds_id, root = _dataset(tmp)
    path = _data_file(root, ds_id)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return _load_dataset_outcome(ds_id, root)


@case("header-corrupted HDF5 file")
def _header_dataset(tmp: Path) -> Outcome:
    ds_id, root = _dataset(tmp)
    _flip(_data_file(root, ds_id), 0.0, 16)
    return _load_dataset_outcome(ds_id, root)


@case("`safectrl train` on a corrupted dataset")
def _train_on_corrupt(tmp: Path) -> Outcome:
    ds_id, root = _dataset(tmp)
    _flip(_data_file(root, ds_id), 0.6, 64)
    return _cli_outcome(["train", "--algo", "bc", "--scenario", "grade_up", "--steps", "5", "--episodes", "2",
                         "--root", str(root), "--out", str(tmp / "bc")], "safectrl data")


@case("`safectrl data` killed while writing, then run again")
def _killed_data(tmp: Path) -> Outcome:
    import subprocess

    root = tmp / "minari"
    # the process dies the moment the dataset is complete but not yet hashed and moved into place
    code = ("import os, signal\n"
            "import safectrl.rl.data as d\n"
            "from safectrl.studies import datasets\n"
            "d._write_integrity_record = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)\n"
            f"datasets.generate_dataset('grade_up', 2, 0, root={str(root)!r}, progress=False)\n")
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=300)
    from safectrl.rl import data
    from safectrl.studies import datasets

    ds_id = datasets.dataset_id("grade_up", 2, 0)
    if killed.returncode != -9:
        return Outcome("crash", f"the write was not interrupted (exit {killed.returncode}): the case is broken",
                       True)
    if data.dataset_exists(ds_id, root):
        return Outcome("silent", "the killed write left a folder that counts as a dataset", False)
    try:
        datasets.generate_dataset("grade_up", 2, 0, root=root, progress=False)
        n = len(data.load_transitions(ds_id, root))
    except Exception as exc:  # noqa: BLE001
        return Outcome("crash", f"{type(exc).__name__}: {exc}", False)
    return Outcome("recovered", f"the half-written dataset did not count; regenerated ({n} transitions)", True)


# -- checkpoints ---------------------------------------------------------------------------------------------


def _policy(tmp: Path) -> Path:
    from safectrl.studies.offline import train_policy

    return train_policy("bc", ["grade_up"], steps=5, out=tmp / "bc", episodes=2, root=tmp / "minari",
                        progress=False)


def _forged_policy(folder: Path, edit: Callable[[dict], dict]) -> Path:
    from safectrl.common.checkpoint import load_checkpoint, save_checkpoint

    ckpt = load_checkpoint(folder, "offline-policy")
    return save_checkpoint(folder.parent / "forged", "offline-policy", ckpt.tensors, edit(ckpt.config),
                           ckpt.record)


@case("a policy's config.json edited (action_high [250, 3500])")
def _edited_policy(tmp: Path) -> Outcome:
    from safectrl.common.checkpoint import CheckpointError
    from safectrl.rl import load_policy

    folder = _policy(tmp)
    doc = json.loads((folder / "config.json").read_text())
    doc["config"]["normalisation"]["action_high"] = [250.0, 3500.0]
    (folder / "config.json").write_text(json.dumps(doc))
    return _raises(lambda: load_policy(folder), CheckpointError, "config.json")


@case("a forged policy checkpoint (hash recomputed) with action_high [250, 3500]")
def _forged_bounds(tmp: Path) -> Outcome:
    from safectrl.common.checkpoint import CheckpointError
    from safectrl.rl import load_policy

    def edit(cfg):
        cfg["normalisation"]["action_high"] = [250.0, 3500.0]
        return cfg

    return _raises(lambda: load_policy(_forged_policy(_policy(tmp), edit)), CheckpointError, "input bounds")


@case("a forged policy checkpoint with hidden [10**12]")
def _forged_hidden(tmp: Path) -> Outcome:
    from safectrl.common.checkpoint import CheckpointError
    from safectrl.rl import load_policy

    def edit(cfg):
        cfg["hyperparameters"]["hidden"] = [10**12]
        return cfg

    return _raises(lambda: load_policy(_forged_policy(_policy(tmp), edit)), CheckpointError, "hidden layers")


@case("a pickle in place of the policy's weights")
def _pickled_policy(tmp: Path) -> Outcome:
    import pickle

    from safectrl.common.checkpoint import CheckpointError
    from safectrl.rl import load_policy

    folder = _policy(tmp)
    (folder / "model.safetensors").write_bytes(pickle.dumps({"payload": 1}))
    return _raises(lambda: load_policy(folder), CheckpointError, "model.safetensors")


def _cost_model(tmp: Path) -> Path:
    from safectrl.safety.cost_model import CostModelTrainConfig
    from safectrl.safety.targets import CostTargetConfig
    from safectrl.studies import safety_layer as sl

    cfg = sl.SafetyLayerConfig(target=CostTargetConfig(horizon=3),
                               train=CostModelTrainConfig(hidden=(16, 16), epochs=2, huber_delta=0.01))
    sl.train_for_scenario("grade_up", tmp / "cost", episodes=2, root=tmp / "minari", config=cfg, progress=False)
    return tmp / "cost"


@case("16 flipped bytes in a safety cost model's weights")
def _flipped_cost_model(tmp: Path) -> Outcome:
    from safectrl.common.checkpoint import CheckpointError
    from safectrl.safety.cost_model import load_cost_model

    folder = _cost_model(tmp)
    _flip(folder / "model.safetensors", 0.7, 16)
    return _raises(lambda: load_cost_model(folder), CheckpointError, "model.safetensors")


@case("bad JSON in a safety cost model's config.json")
def _json_cost_model(tmp: Path) -> Outcome:
    from safectrl.common.checkpoint import CheckpointError
    from safectrl.safety.cost_model import load_cost_model

    folder = _cost_model(tmp)
    (folder / "config.json").write_text((folder / "config.json").read_text()[:-30])
    return _raises(lambda: load_cost_model(folder), CheckpointError, "config.json")


# -- bad measurements and proposals in the loop --------------------------------------------------------------


@case("one NaN measurement given to the NMPC, then clean ones")
def _nan_to_nmpc(tmp: Path) -> Outcome:
    from safectrl.controllers.polycstr_nmpc import polycstr_nmpc
    from safectrl.models import polycstr as pc
    from safectrl.rl.env import TaskEnv

    nmpc = polycstr_nmpc(pc.mismatched())
    env = TaskEnv(pc.TASK, scenario="grade_up", max_steps=6)
    obs, _ = env.reset(seed=0)
    nmpc.reset(seed=0)
    inputs = []
    for k in range(6):
        seen = obs.copy()
        if k == 2:
            seen[:5] = np.nan
        with _quiet_warnings():
            u = nmpc.act(seen)
        inputs.append(u)
        obs, *_ = env.step(u)
    estimate = nmpc.observer.ekf.x
    rejected = getattr(nmpc.observer, "rejected_measurements", None)
    if np.all(np.isfinite(inputs)) and np.all(np.isfinite(estimate)):
        return Outcome("recovered", f"prediction only on that step (rejected measurements: {rejected}); "
                       "finite inputs before and after", True)
    return Outcome("crash", f"inputs {np.asarray(inputs)[:, 0]}, estimate {estimate}", True)


@case("2 % NaN measurements for a whole NMPC episode (env faults=)")
def _faulty_sensor_episode(tmp: Path) -> Outcome:
    from safectrl.controllers.polycstr_nmpc import polycstr_nmpc
    from safectrl.models import polycstr as pc
    from safectrl.rl.env import SensorFaults, TaskEnv
    from safectrl.rl.rollout import run_episode

    env = TaskEnv(pc.TASK, scenario="grade_up", max_steps=40, faults=SensorFaults(nan_rate=0.02))
    with _quiet_warnings():
        ep = run_episode(env, polycstr_nmpc(pc.mismatched()), seed=0)
    faulty = int((np.asarray(ep.infos["faults"]) != 0).sum())
    if np.all(np.isfinite(ep.actions)) and ep.length == 40:
        return Outcome("recovered", f"{faulty} NaN readings in 40 intervals, every input finite", True)
    return Outcome("crash", f"{ep.length} intervals, finite inputs {np.all(np.isfinite(ep.actions))}", True)


@case("a NaN measurement given to the PI controller")
def _nan_to_pi(tmp: Path) -> Outcome:
    from safectrl.controllers.pi import PIController
    from safectrl.models import polycstr as pc
    from safectrl.rl.env import TaskEnv

    env = TaskEnv(pc.TASK, scenario="grade_up")
    obs, _ = env.reset(seed=0)
    pi = PIController()
    pi.reset(0)
    u0 = pi.act(obs)
    bad = obs.copy()
    bad[:5] = np.nan
    u1 = pi.act(bad)
    if np.all(np.isfinite(u1)) and np.allclose(u1, u0):
        return Outcome("recovered", "held its integral and its last output", True)
    return Outcome("silent" if np.all(np.isfinite(u1)) else "crash", f"output {u1}", True)


def _filter(tmp: Path, proposal: Callable[[np.ndarray], np.ndarray]):
    from safectrl.safety.cost_model import load_cost_model
    from safectrl.studies import safety_layer as sl

    model = load_cost_model(_cost_model(tmp))

    class Proposer:
        def reset(self, seed=None):
            pass

        def act(self, obs):
            return proposal(obs)

    return sl.make_filter(Proposer(), model, "exact")


@case("a NaN proposal given to the PICNN safety filter")
def _nan_proposal(tmp: Path) -> Outcome:
    from safectrl.models import polycstr as pc
    from safectrl.rl.env import TaskEnv

    calls = {"n": 0}

    def propose(obs):
        calls["n"] += 1
        return np.array([np.nan, 340.0]) if calls["n"] == 2 else np.array([1.0, 340.0])

    filt = _filter(tmp, propose)
    env = TaskEnv(pc.TASK, scenario="grade_up")
    obs, _ = env.reset(seed=0)
    filt.reset(0)
    out = [filt.act(obs) for _ in range(3)]
    record = filt.record.arrays()
    fallbacks = int(np.sum(record.get("fallback", [0])))
    if np.all(np.isfinite(out)) and fallbacks >= 1:
        return Outcome("recovered", f"the last safe input, counted ({fallbacks} fallback)", True)
    return Outcome("silent" if np.all(np.isfinite(out)) else "crash", f"{out}, fallbacks {fallbacks}", True)


@case("an observation far outside the data given to the PICNN safety filter")
def _far_observation(tmp: Path) -> Outcome:
    from safectrl.models import polycstr as pc
    from safectrl.rl.env import TaskEnv

    filt = _filter(tmp, lambda obs: np.array([1.0, 340.0]))
    env = TaskEnv(pc.TASK, scenario="grade_up")
    obs, _ = env.reset(seed=0)
    filt.reset(0)
    far = obs * np.array([50.0, 50.0, 1.5, 50.0, 50.0, 1.0, 1.0])
    try:
        u = filt.act(far)
    except Exception as exc:  # noqa: BLE001
        return Outcome("crash", f"{type(exc).__name__}: {exc}", True)
    box_ok = np.all(u >= pc.U_LOW) and np.all(u <= pc.U_HIGH) and np.all(np.isfinite(u))
    return Outcome("recovered" if box_ok else "crash", f"an input inside the box: {np.round(u, 3)}", True)


# -- run folders and the command line ------------------------------------------------------------------------


def _quick_main_study_folder(tmp: Path) -> Path:
    """A comparative-study folder, as `safectrl study` leaves it (a tiny run of one controller)."""
    from safectrl.studies.study import StudyPreset, run_study

    preset = StudyPreset("tiny", eval_seeds=1, data_episodes=2, variants=("nominal",),
                         controllers=("NMPC oracle",), scenarios=("grade_up",), max_steps=3)
    return run_study(preset, tmp / "run", serial=True, progress=False)


@case("`safectrl study acr --out` a folder holding a main study")
def _acr_into_main(tmp: Path) -> Outcome:
    folder = _quick_main_study_folder(tmp)
    before = (folder / "config.json").read_bytes()
    outcome = _cli_outcome(["study", "acr", "--out", str(folder)], "",
                           lost=lambda: (folder / "config.json").read_bytes() != before)
    forced = _cli_outcome(["study", "acr", "--out", str(folder), "--force"], "",
                          lost=lambda: (folder / "config.json").read_bytes() != before)
    if forced.behaviour != "clear error" or not forced.nothing_lost:
        return Outcome(forced.behaviour, "with --force: " + forced.detail, forced.nothing_lost)
    return outcome


@case("a truncated task file in a run folder, then resume")
def _truncated_task(tmp: Path) -> Outcome:
    from safectrl.studies.study import StudyPreset, run_study

    preset = StudyPreset("tiny", eval_seeds=2, data_episodes=2, variants=("nominal",),
                         controllers=("NMPC oracle",), scenarios=("grade_up",), max_steps=3)
    folder = run_study(preset, tmp / "run", serial=True, progress=False)
    clean = _without_timing(folder / "episodes.csv")
    task = sorted((folder / "tasks").glob("*.npz"))[0]
    task.write_bytes(task.read_bytes()[:40])
    try:
        with _quiet_warnings():
            run_study(preset, folder, serial=True, progress=False)
    except Exception as exc:  # noqa: BLE001
        return Outcome("crash", f"{type(exc).__name__}: {str(exc)[:200]}", False)
    same = _without_timing(folder / "episodes.csv") == clean
    aside = [p.name for p in folder.rglob("*") if "corrupt" in str(p.relative_to(folder))]
    return Outcome("recovered" if same else "silent", f"named, moved aside ({len(aside)} entries), recomputed; "
                   f"results identical: {same}", same)


#: A tiny RL-ACR study (CartPole, RL-ACR, 4 training episodes of 8 intervals, its state saved after every
#: episode), as the code of a separate Python process.
_TINY_ACR = """
import os, signal
from safectrl.rl.env import TaskEnv
from safectrl.studies import acr_study
acr_study.make_env = lambda e, p: TaskEnv(e, plant=acr_study.plant_params(e, p), max_steps=8)
acr_study.STATE_INTERVAL = 0.0
preset = acr_study.ACRPreset('tiny', seeds=1, episodes=4, pretrain_episodes=1,
                             envs=('safectrl/CartPoleContinuous-v0',), methods=('RL-ACR',))
"""


@case("an RL-ACR study killed while saving a training task's state, then run again")
def _killed_training(tmp: Path) -> Outcome:
    import subprocess

    from safectrl.studies import acr_study
    from safectrl.studies.executor import ResultStore

    def run(folder: Path, extra: str = "") -> subprocess.CompletedProcess:
        code = (_TINY_ACR + extra
                + f"acr_study.run_acr_study(preset, {str(folder)!r}, serial=True, progress=False)\n")
        return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900)

    # dies in the third save (after episode 3), between the slot's weights and its config.json
    kill = ("import safectrl.common.checkpoint as ck\n"
            "_write, _n = ck._atomic_write, []\n"
            "def _dying(path, data):\n"
            "    _n.append(path.name)\n"
            "    if _n.count('config.json') == 3: os.kill(os.getpid(), signal.SIGKILL)\n"
            "    _write(path, data)\n"
            "ck._atomic_write = _dying\n")
    clean = run(tmp / "clean")
    killed = run(tmp / "run", kill)
    if clean.returncode != 0 or killed.returncode != -9:
        return Outcome("crash", f"the case is broken (exits {clean.returncode}, {killed.returncode}): "
                                f"{(clean.stderr or killed.stderr)[-200:]}", True)
    again = run(tmp / "run")
    if again.returncode != 0:
        return Outcome("crash", f"rerun: exit {again.returncode}: {again.stderr[-300:]}", False)
    preset = acr_study.ACRPreset("tiny", seeds=1, episodes=4, pretrain_episodes=1,
                                 envs=("safectrl/CartPoleContinuous-v0",), methods=("RL-ACR",))
    key = acr_study._key("safectrl/CartPoleContinuous-v0", "RL-ACR", 0, preset)
    want = ResultStore(tmp / "clean" / "tasks").stored([key])[key]
    got = ResultStore(tmp / "run" / "tasks").stored([key])[key]
    times = {"step_time", "prior_time", "wall_time", "resumed_at_episode", "discarded_training_states"}
    same = all(np.array_equal(np.asarray(got[k]), np.asarray(v), equal_nan=np.asarray(v).dtype.kind == "f")
               for k, v in want.items() if k not in times)
    warned = "not used" in again.stderr
    ok = same and got["resumed_at_episode"] == 2 and got["discarded_training_states"] == 1 and warned
    n_bad, start = got["discarded_training_states"], got["resumed_at_episode"]
    return Outcome("recovered" if ok else "silent", f"the half-written state named and not used ({n_bad}), "
                   f"resumed at episode {start} of 4 from the other; results identical: {same}", same)


def _without_timing(path: Path) -> list[dict[str, str]]:
    import csv

    return [{k: v for k, v in row.items() if k != "decision_ms"} for row in csv.DictReader(open(path))]


@case("`safectrl evaluate --policy /nonexistent`")
def _missing_policy(tmp: Path) -> Outcome:
    return _cli_outcome(["evaluate", "--policy", str(tmp / "nonexistent"), "--seeds", "1"], "nonexistent")


@case("`safectrl evaluate --out` a file")
def _out_is_file(tmp: Path) -> Outcome:
    folder = _policy(tmp)
    target = tmp / "a-file"
    target.write_text("mine")
    return _cli_outcome(["evaluate", "--policy", str(folder), "--seeds", "1", "--out", str(target),
                         "--root", str(tmp / "minari"), "--episodes", "2"], "a-file",
                        lost=lambda: target.read_text() != "mine")


@case("`safectrl study --scheduler` an unreachable address")
def _unreachable_scheduler(tmp: Path) -> Outcome:
    out = tmp / "never"
    outcome = _cli_outcome(["study", "--scheduler", "tcp://127.0.0.1:9", "--connect-timeout", "1",
                            "--out", str(out)], "127.0.0.1:9")
    if out.exists():
        return Outcome("silent", "the run folder was written before the scheduler was checked", True)
    return outcome


@case("`NMPCConfig(horizon=2.5)`")
def _bad_horizon(tmp: Path) -> Outcome:
    from safectrl.controllers.nmpc import NMPCConfig

    return _raises(lambda: NMPCConfig(horizon=2.5), (ValueError, TypeError), "horizon must be a positive integer")


@case("an action with NaN given to the env")
def _nan_action(tmp: Path) -> Outcome:
    from safectrl.models import polycstr as pc
    from safectrl.rl.env import TaskEnv

    env = TaskEnv(pc.TASK)
    env.reset(seed=0)
    return _raises(lambda: env.step([np.nan, 340.0]), ValueError, "non-finite f_I")


@contextlib.contextmanager
def _quiet_warnings():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def run_cases(selected: list[str] | None = None) -> list[tuple[str, Outcome]]:
    rows = []
    for name, fn in CASES:
        if selected and not any(s in name for s in selected):
            continue
        tmp = Path(tempfile.mkdtemp(prefix="safectrl-fault-"))
        old_env = {k: os.environ.get(k) for k in ("MINARI_DATASETS_PATH", "SAFECTRL_ARTIFACTS_DIR")}
        os.environ["MINARI_DATASETS_PATH"] = str(tmp / "minari")
        os.environ["SAFECTRL_ARTIFACTS_DIR"] = str(tmp / "artifacts")
        try:
            outcome = fn(tmp)
        except Exception as exc:  # noqa: BLE001 - reported as a crash of that case
            outcome = Outcome("crash", f"{type(exc).__name__}: {exc} | {traceback.format_exc(limit=2)[-300:]}",
                              False)
        finally:
            for k, v in old_env.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
            shutil.rmtree(tmp, ignore_errors=True)
        rows.append((name, outcome))
        print(f"{outcome.behaviour:12s} | {'yes' if outcome.nothing_lost else 'NO ':3s} | {name}", flush=True)
    return rows


def markdown(rows: list[tuple[str, Outcome]]) -> str:
    lines = ["| case | behaviour | nothing lost | what it said or did |", "|---|---|---|---|"]
    for name, o in rows:
        detail = o.detail.replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {name} | {o.behaviour} | {'yes' if o.nothing_lost else 'no'} | {detail[:220]} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--markdown", type=Path, default=None, help="also write the table to this file")
    parser.add_argument("cases", nargs="*", help="run only the cases whose name contains one of these")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    rows = run_cases(args.cases)
    table = markdown(rows)
    print("\n" + table)
    if args.markdown is not None:
        args.markdown.write_text(
            "# Faults: what safectrl does when things go wrong\n\nMade by `python benchmarks/faults.py --markdown "
            "docs/faults.md` (every case tried for real, in a temporary folder). *clear error*: safectrl's own "
            "error or a one-line command-line message saying what is wrong; *recovered*: a safe answer, "
            "counted; *silent* or *crash*: a defect.\n\n" + table + "\n")
    bad = [name for name, o in rows if o.behaviour in ("silent", "crash") or not o.nothing_lost]
    if bad:
        print(f"\n{len(bad)} case(s) silent, crashed or lost something: {bad}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
