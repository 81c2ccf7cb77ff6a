"""The one checkpoint format, for each of its three users: offline policies, SAC and the PICNN cost models."""

from __future__ import annotations

import hashlib
import json
import pickle
from dataclasses import asdict

import gymnasium as gym
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from safectrl.common import checkpoint as ck
from safectrl.common.checkpoint import CheckpointError, load_checkpoint, module_tensors, save_checkpoint
from safectrl.rl.bc import BCConfig
from safectrl.rl.iql import IQLConfig
from safectrl.rl.checkpoint import load_policy, save_policy
from safectrl.rl.offline_data import Normalisation
from safectrl.rl.sac import SAC, SACConfig
from safectrl.rl.training import make_agent
from safectrl.safety.cost_model import (
    ConvexCostModel,
    load_cost_model,
    load_cost_model_metadata,
    save_cost_model,
)
from safectrl.safety.picnn import PICNN, PICNNConfig

OBS = gym.spaces.Box(-1.0, 1.0, (3,))
ACT = gym.spaces.Box(-2.0, 2.0, (2,))


def _sac(seed=0):
    return SAC(OBS, ACT, SACConfig(hidden=(8, 8), buffer_size=100), seed=seed)


def _offline(folder):
    norm = Normalisation(np.zeros(3), np.ones(3), -np.ones(2), np.ones(2))
    return save_policy(folder, make_agent("bc", 3, 2, BCConfig((8,)), seed=0), norm, {"seed": 0})


def _cost_model(folder):
    torch.manual_seed(0)
    net = PICNN(PICNNConfig(3, 2, (8,)))
    model = ConvexCostModel(net, np.zeros(3), np.ones(3), np.zeros(2), np.ones(2), 0.0, 1.0)
    return save_cost_model(model, folder, {"note": "test"})


def _sac_save(folder):
    return _sac().save(folder)


# kind -> (writer, loader, an entry of config.json to edit: a path of keys)
KINDS = {
    "offline-policy": (_offline, load_policy, ("config", "normalisation", "action_high")),
    "sac": (_sac_save, lambda folder: _sac(seed=1).load(folder), ("config", "action_high")),
    "cost-model": (_cost_model, load_cost_model, ("config", "picnn", "negative_slope")),
}


@pytest.fixture(params=list(KINDS))
def kind(request, tmp_path):
    write, load, edit = KINDS[request.param]
    folder = write(tmp_path / request.param)
    return folder, load, edit


def _edited(doc, keys):
    node = doc
    for k in keys[:-1]:
        node = node[k]
    value = node[keys[-1]]
    node[keys[-1]] = [v + 0.5 for v in value] if isinstance(value, list) else value + 0.5
    return doc


def test_every_kind_loads_what_it_wrote(kind):
    folder, load, _ = kind
    load(folder)
    assert sorted(p.name for p in folder.iterdir() if not p.suffix == ".png") == [ck.CONFIG, ck.WEIGHTS]


def test_altered_weights_and_edited_config_are_detected(kind):
    folder, load, edit = kind
    weights, text = (folder / ck.WEIGHTS).read_bytes(), (folder / ck.CONFIG).read_text()

    flipped = bytearray(weights)
    flipped[-5] ^= 0xFF
    (folder / ck.WEIGHTS).write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match the weights_sha256"):
        load(folder)
    (folder / ck.WEIGHTS).write_bytes(weights[: len(weights) // 2])
    with pytest.raises(CheckpointError, match=r"model\.safetensors (does not match|is not a safetensors)"):
        load(folder)
    (folder / ck.WEIGHTS).write_bytes(weights[:6])
    with pytest.raises(CheckpointError, match=r"model\.safetensors is truncated"):
        load(folder)
    (folder / ck.WEIGHTS).write_bytes(weights)

    (folder / ck.CONFIG).write_text(json.dumps(_edited(json.loads(text), edit)))
    with pytest.raises(CheckpointError, match=r"config\.json does not match its sha256"):
        load(folder)
    doc = json.loads(text)
    doc["record"]["forged"] = True
    (folder / ck.CONFIG).write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"config\.json does not match its sha256"):
        load(folder)
    (folder / ck.CONFIG).write_text(text)
    load(folder)  # restored: verifies again


class _Payload:
    """Unpickling this object would create a file: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickles_are_refused_and_never_executed(kind, tmp_path):
    folder, load, _ = kind
    marker = tmp_path / "code-ran"
    (folder / ck.WEIGHTS).write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(CheckpointError, match=r"model\.safetensors contains a pickle payload"):
        load(folder)
    torch.save({"w": torch.zeros(2)}, folder / ck.WEIGHTS)
    with pytest.raises(CheckpointError, match=r"model\.safetensors contains a torch\.save zip"):
        load(folder)
    assert not marker.exists()


def test_bad_json_and_missing_files_are_named(kind, tmp_path):
    folder, load, _ = kind
    text = (folder / ck.CONFIG).read_text()
    (folder / ck.CONFIG).write_text(text[:-20])
    with pytest.raises(CheckpointError, match=r"config\.json is corrupted \(not valid JSON"):
        load(folder)
    (folder / ck.CONFIG).unlink()
    with pytest.raises(CheckpointError, match=r"has no config\.json"):
        load(folder)
    (folder / ck.CONFIG).write_text(text)
    (folder / ck.WEIGHTS).unlink()
    with pytest.raises(CheckpointError, match=r"has no model\.safetensors"):
        load(folder)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load(tmp_path / "nowhere")


def test_a_checkpoint_of_another_kind_or_version_is_refused(tmp_path):
    folder = _sac_save(tmp_path / "sac")
    with pytest.raises(CheckpointError, match=r"config\.json holds a 'sac' checkpoint, not a 'cost-model'"):
        load_cost_model(folder)
    doc = json.loads((folder / ck.CONFIG).read_text())
    (folder / ck.CONFIG).write_text(json.dumps({**doc, "format_version": 99}))
    with pytest.raises(CheckpointError, match=r"config\.json has checkpoint format version 99"):
        _sac().load(folder)


def test_weights_that_do_not_fit_the_config_are_named(tmp_path):
    folder = save_checkpoint(tmp_path / "c", "test", {"net.weight": torch.zeros(2, 3)}, {"hidden": [2]})
    ckpt = load_checkpoint(folder, "test")
    ckpt.check_tensors({"net.weight": torch.zeros(2, 3)})
    with pytest.raises(CheckpointError, match=r"safetensors do not match the recorded config.*wrong shape"):
        ckpt.check_tensors({"net.weight": torch.zeros(3, 3)})
    with pytest.raises(CheckpointError, match=r"missing \['net\.bias'\]"):
        ckpt.check_tensors({"net.weight": torch.zeros(2, 3), "net.bias": torch.zeros(2)})
    folder = _sac_save(tmp_path / "s")
    SAC(OBS, ACT, SACConfig(hidden=(8, 8), alpha=0.1)).load(folder)  # other learning settings load
    with pytest.raises(CheckpointError, match="another SAC network: log_std_max 2.0, this agent's is 1.0"):
        SAC(OBS, ACT, SACConfig(hidden=(8, 8), log_std_max=1.0)).load(folder)
    with pytest.raises(CheckpointError, match=r"another SAC network: hidden \[8, 8\], this agent's is \[16"):
        SAC(OBS, ACT, SACConfig(hidden=(16,))).load(folder)
    with pytest.raises(CheckpointError, match=r"records action_high \[2.0, 2.0\], this agent's is \[2.0, 3"):
        wider = gym.spaces.Box(-2.0, np.array([2.0, 3.0], dtype=np.float32))
        SAC(OBS, wider, SACConfig(hidden=(8, 8))).load(folder)


def test_a_sac_checkpoint_with_separate_critics_is_converted(tmp_path, separate_q_mlps):
    """Before the twin Q ensemble, SAC checkpoints held each critic as two MLPs (``critic.q1.net.*``)."""
    writer = _sac(seed=3)
    torch.manual_seed(4)
    critic, target = separate_q_mlps(3, 2, (8, 8)), separate_q_mlps(3, 2, (8, 8))
    config = load_checkpoint(writer.save(tmp_path / "new"), "sac").config
    tensors = module_tensors({"actor": writer.actor, "critic": critic, "critic_target": target})
    folder = save_checkpoint(tmp_path / "old", "sac", tensors, config)
    reader = _sac(seed=1)
    reader.load(folder)
    obs, action = torch.randn(9, 3), torch.rand(9, 2)
    x = torch.cat([obs, action], dim=-1)
    for old, new in ((critic, reader.critic), (target, reader.critic_target)):
        q = torch.stack([old[f"q{j}"]["net"](x).squeeze(-1) for j in (1, 2)])
        torch.testing.assert_close(new(obs, action), q, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(reader.act(np.ones(3)), writer.act(np.ones(3)))

    broken = {k: v for k, v in tensors.items() if k != "critic_target.q2.net.4.bias"}
    folder = save_checkpoint(tmp_path / "broken", "sac", broken, config)
    with pytest.raises(CheckpointError, match=r"safetensors: critic_target: not the state of two separate Q"):
        _sac().load(folder)


def test_an_iql_checkpoint_with_separate_critics_still_gives_its_policy(tmp_path, separate_q_mlps):
    """An offline policy is its actor: checkpoints written before the twin Q ensemble load unchanged."""
    agent = make_agent("iql", 3, 2, IQLConfig((8, 8)), seed=0)
    norm = Normalisation(np.zeros(3), np.ones(3), -np.ones(2), np.ones(2))
    networks = {**agent.networks(), "critic": separate_q_mlps(3, 2, (8, 8)),
                "critic_target": separate_q_mlps(3, 2, (8, 8))}
    config = {"algo": "iql", "hyperparameters": asdict(agent.config), "normalisation": norm.as_dict()}
    old = save_checkpoint(tmp_path / "old", "offline-policy", module_tensors(networks), config)
    assert "critic.q1.net.0.weight" in ck.parse_weights((old / ck.WEIGHTS).read_bytes(), old / ck.WEIGHTS)
    new = save_policy(tmp_path / "new", agent, norm)
    obs = np.array([0.3, -1.0, 2.0])
    np.testing.assert_array_equal(load_policy(old).act(obs), load_policy(new).act(obs))


def test_an_interrupted_write_leaves_no_checkpoint_that_verifies(tmp_path, monkeypatch):
    folder = _sac_save(tmp_path / "sac")
    real = ck._atomic_write

    def killed_before_the_json(path, data):
        if path.name == ck.CONFIG:
            raise KeyboardInterrupt
        real(path, data)

    monkeypatch.setattr(ck, "_atomic_write", killed_before_the_json)
    other = _sac(seed=5)
    with pytest.raises(KeyboardInterrupt):
        other.save(folder)
    monkeypatch.undo()
    with pytest.raises(CheckpointError, match=r"has no config\.json"):
        _sac().load(folder)
    assert sorted(p.name for p in folder.iterdir()) == [ck.WEIGHTS]  # no temporary file left behind


def test_older_formats(tmp_path):
    # the first offline-policy format hashed its weights: still read
    agent = make_agent("bc", 3, 2, BCConfig((8,)), seed=0)
    norm = Normalisation(np.zeros(3), np.ones(3), -np.ones(2), np.ones(2))
    v1 = tmp_path / "v1"
    v1.mkdir()
    save_file({f"actor.{k}": v.contiguous() for k, v in agent.actor.state_dict().items()}, v1 / ck.WEIGHTS)
    sha = hashlib.sha256((v1 / ck.WEIGHTS).read_bytes()).hexdigest()
    record = {"format": "safectrl-offline-policy", "format_version": 1, "algo": "bc",
              "config": {"hidden": [8]}, "normalisation": norm.as_dict(), "weights_sha256": sha, "seed": 3}
    (v1 / ck.CONFIG).write_text(json.dumps(record))
    policy = load_policy(v1)
    assert policy.algo == "bc" and policy.info["seed"] == 3
    fresh = load_policy(save_policy(tmp_path / "v2", agent, norm))
    np.testing.assert_array_equal(policy.act(np.ones(3)), fresh.act(np.ones(3)))
    (v1 / ck.WEIGHTS).write_bytes((v1 / ck.WEIGHTS).read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(CheckpointError, match=r"model\.safetensors does not match the weights_sha256"):
        load_policy(v1)

    # the SAC and cost-model files of before had no hash: refused, with what to do
    save_file({"w": torch.zeros(1)}, tmp_path / "sac.safetensors")
    (tmp_path / "sac.json").write_text("{}")
    with pytest.raises(CheckpointError, match=r"sac\.safetensors .*older safectrl.*retrain"):
        _sac().load(tmp_path / "sac")
    old = tmp_path / "cm"
    old.mkdir()
    (old / "cost_model.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, old / "cost_model.safetensors")
    for load in (load_cost_model, load_cost_model_metadata):
        with pytest.raises(CheckpointError, match=r"cost_model\.json .*older safectrl.*retrain"):
            load(old)


def test_records_round_trip(tmp_path):
    assert load_cost_model_metadata(_cost_model(tmp_path / "cm")) == {"note": "test"}
    with pytest.raises(TypeError, match="JSON-serialisable"):
        save_checkpoint(tmp_path / "bad", "test", {"w": torch.zeros(1)}, {"x": object()})


def test_a_header_length_that_starts_like_a_pickle_is_still_safetensors(tmp_path):
    """The first byte of the 8-byte header length can be 0x80 (a pickle's first byte): still a checkpoint."""
    for n in range(1, 400):
        folder = save_checkpoint(tmp_path / "c", "test", {"x" * n: torch.zeros(1)}, {})
        if (folder / ck.WEIGHTS).read_bytes()[:1] == b"\x80":
            break
    else:
        pytest.fail("no tensor name gave a header length starting with 0x80")
    assert list(load_checkpoint(folder, "test").tensors) == ["x" * n]
