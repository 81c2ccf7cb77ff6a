"""Checkpoints of the offline agents: weights as safetensors plus a JSON record, never a pickle.

A checkpoint is a folder::

    model.safetensors   every network of the agent, tensors named "<network>.<parameter>" (e.g. actor.net.0.weight)
    config.json         format, algorithm and its config, normalisation, SHA-256 of the weights, training record

Loading never unpickles anything: the weights file's header is checked to be safetensors before it is
parsed (a pickle or a ``torch.save`` zip is refused by name), its digest must match the record, and the
tensors must have exactly the names and shapes the recorded config implies.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import asdict
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from safectrl.rl.networks import Actor
from safectrl.rl.offline_data import Normalisation
from safectrl.rl.policy import OfflinePolicy

FORMAT = "safectrl-offline-policy"
FORMAT_VERSION = 1
WEIGHTS = "model.safetensors"
RECORD = "config.json"
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar")
_MAX_HEADER = 100_000_000  # bytes; safetensors itself refuses larger headers


class CheckpointError(ValueError):
    """A checkpoint that is missing parts, corrupted, unsafe or inconsistent with its record."""


class Agent(Protocol):
    algo: str
    config: Any

    def networks(self) -> dict[str, torch.nn.Module]: ...


def save_checkpoint(path: str | os.PathLike, agent: Agent, normalisation: Normalisation,
                    record: dict[str, Any] | None = None) -> Path:
    """Write ``agent``'s networks and a JSON record to the folder ``path`` (created if needed).

    Args:
        path: checkpoint folder.
        agent: a trained :class:`~safectrl.rl.bc.BC` or :class:`~safectrl.rl.iql.IQL`.
        normalisation: the normalisation the agent was trained with.
        record: what else to remember (datasets, scenarios, seed, steps, reward scale ...); JSON-serialisable.
    """
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {f"{name}.{key}": value.detach().clone().contiguous()
               for name, net in agent.networks().items() for key, value in net.state_dict().items()}
    save_file(tensors, folder / WEIGHTS, metadata={"format": FORMAT})
    content = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "algo": agent.algo,
        "config": asdict(agent.config),
        "normalisation": normalisation.as_dict(),
        "weights_sha256": _sha256(folder / WEIGHTS),
        **(record or {}),
    }
    (folder / RECORD).write_text(json.dumps(content, indent=2))
    return folder


def read_record(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON record of the checkpoint folder ``path`` (validated format, not yet the weights)."""
    folder = _folder(path)
    try:
        record = json.loads((folder / RECORD).read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{folder} has no {RECORD}; not a safectrl checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{folder / RECORD} is corrupted (not valid JSON: {err})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{folder / RECORD} is not a {FORMAT} record")
    if record.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{folder} has checkpoint format version {record.get('format_version')}, this safectrl reads "
            f"version {FORMAT_VERSION}")
    return record


def load_policy(path: str | os.PathLike) -> OfflinePolicy:
    """The policy stored in a checkpoint folder (or its ``model.safetensors``), ready to ``act``.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        CheckpointError: a pickle-based file, a corrupted or altered file, or weights that do not match
            the recorded config.
    """
    folder = _folder(path)
    record = read_record(folder)
    try:
        normalisation = Normalisation.from_dict(record["normalisation"])
        hidden = tuple(int(h) for h in record["config"]["hidden"])
    except (KeyError, TypeError, ValueError) as err:
        raise CheckpointError(f"{folder / RECORD} is incomplete or malformed: {err!r}") from None
    tensors = _load_tensors(folder / WEIGHTS, record.get("weights_sha256"))
    actor = Actor(normalisation.net_obs_dim, normalisation.act_dim, hidden)
    prefix = "actor."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    try:
        actor.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise CheckpointError(
            f"actor weights in {folder / WEIGHTS} do not match the recorded config (hidden {list(hidden)}, "
            f"{normalisation.net_obs_dim} network inputs, {normalisation.act_dim} actions): {err}") from None
    return OfflinePolicy(actor, normalisation, record)


def _folder(path: str | os.PathLike) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {p}")
    if p.is_file():
        if p.suffix.lower() in _PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{p} looks like a pickle-based checkpoint ({p.suffix}); refused, because loading a pickle can "
                f"execute arbitrary code. safectrl checkpoints are folders with {WEIGHTS} and {RECORD}")
        if p.name != WEIGHTS:
            raise CheckpointError(f"{p} is not a checkpoint: expected a folder holding {WEIGHTS} and {RECORD}")
        p = p.parent
    return p


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _check_safetensors_header(path: Path) -> None:
    """Refuse anything but a safetensors file, naming pickles and torch zips, before any parser sees it."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(9)
    if head[:1] == b"\x80" or head[:2] == b"PK":
        kind = "a pickle payload" if head[:1] == b"\x80" else "a torch.save zip archive (pickle inside)"
        raise CheckpointError(f"{path} contains {kind}; refused, because loading it could execute code")
    if len(head) < 9:
        raise CheckpointError(f"{path} is truncated ({size} bytes); not a safetensors file")
    (header_len,) = struct.unpack("<Q", head[:8])
    if header_len > min(size - 8, _MAX_HEADER) or head[8:9] != b"{":
        raise CheckpointError(f"{path} is not a safetensors file (bad header); corrupted or not a checkpoint")


def _load_tensors(path: Path, expected_sha256: str | None) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {WEIGHTS}")
    _check_safetensors_header(path)
    if expected_sha256 is None:
        raise CheckpointError(f"{path.parent / RECORD} records no weights_sha256; cannot verify {WEIGHTS}")
    if _sha256(path) != expected_sha256:
        raise CheckpointError(f"{path} does not match the SHA-256 in {RECORD}: corrupted or altered")
    try:
        return load_file(path)
    except SafetensorError as err:
        raise CheckpointError(f"{path} is corrupted: {err}") from None
