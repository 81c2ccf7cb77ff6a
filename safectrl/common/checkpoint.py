"""The one checkpoint format of safectrl: weights as safetensors, everything else as verified JSON.

A checkpoint is a folder::

    model.safetensors   every tensor, named "<network>.<parameter>" (e.g. actor.net.0.weight)
    config.json         format, format_version, kind, config, record, weights_sha256, sha256

``weights_sha256`` is the SHA-256 of the weights file and ``sha256`` that of the canonical JSON of every
other entry of config.json (``weights_sha256`` included), so flipped weight bytes and an edited config value,
bound or record entry are both detected. Loading never unpickles anything: a pickle or ``torch.save`` zip is
refused by its header before any parser sees it. Writes are atomic (temporary files in the folder moved into
place with ``os.replace``, config.json last), so an interrupted write never leaves a checkpoint that verifies.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

FORMAT = "safectrl-checkpoint"
FORMAT_VERSION = 2
WEIGHTS = "model.safetensors"
CONFIG = "config.json"
_PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar")
_MAX_HEADER = 100_000_000  # bytes; safetensors itself refuses larger headers
RETRAIN = "it was written by an older safectrl and cannot be verified: retrain it"


class CheckpointError(ValueError):
    """A checkpoint that is missing parts, corrupted, edited, unsafe, or not what the caller expects."""


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint: its tensors, the config to rebuild the networks, and the training record."""

    folder: Path
    kind: str
    tensors: dict[str, torch.Tensor]
    config: dict[str, Any]
    record: dict[str, Any]

    @property
    def config_path(self) -> Path:
        return self.folder / CONFIG

    @property
    def weights_path(self) -> Path:
        return self.folder / WEIGHTS

    def check_tensors(self, expected: Mapping[str, torch.Tensor]) -> None:
        """Raise CheckpointError unless the tensors have exactly the names, shapes and dtypes of ``expected``.

        ``expected`` is the state the caller built from :attr:`config` (e.g. :func:`module_tensors` of fresh
        networks), so weights that do not fit the recorded configuration are named, not half-loaded.
        """
        check_tensors(self.tensors, expected, str(self.weights_path))

    def load_into(self, modules: Mapping[str, torch.nn.Module]) -> None:
        """Check the tensors against ``modules`` (named as by :func:`module_tensors`; no other tensor may be
        in the checkpoint) and load them."""
        check_tensors(self.tensors, module_tensors(modules), str(self.weights_path))
        load_modules(modules, self.tensors, str(self.weights_path))


def check_tensors(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, torch.Tensor],
                  where: str) -> None:
    """Raise CheckpointError unless ``tensors`` have exactly the names, shapes and dtypes of ``expected``
    (``where`` names their file in the message)."""
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = []
    for k, v in expected.items():
        got = tensors.get(k)
        if got is not None and (got.shape != v.shape or got.dtype != v.dtype):
            wrong.append(f"{k} {tuple(got.shape)} {got.dtype} (expected {tuple(v.shape)} {v.dtype})")
    if missing or unexpected or wrong:
        parts = [f"missing {missing[:5]}" if missing else "",
                 f"unexpected {unexpected[:5]}" if unexpected else "",
                 f"wrong shape or dtype: {wrong[:5]}" if wrong else ""]
        raise CheckpointError(f"the tensors in {where} do not match the recorded config "
                              f"({'; '.join(p for p in parts if p)})")


def load_modules(modules: Mapping[str, torch.nn.Module], tensors: Mapping[str, torch.Tensor],
                 where: str) -> None:
    """Load ``modules`` from the tensors named ``"<module>.<key>"`` among ``tensors`` (others are ignored),
    after checking that they are exactly the modules' state (names, shapes, dtypes)."""
    prefixes = tuple(f"{name}." for name in modules)
    mine = {k: v for k, v in tensors.items() if k.startswith(prefixes)}
    check_tensors(mine, module_tensors(modules), where)
    for name, module in modules.items():
        prefix = f"{name}."
        state = {k[len(prefix):]: v for k, v in mine.items() if k.startswith(prefix)}
        module.load_state_dict(state, strict=True)


def module_tensors(modules: Mapping[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """The state of several modules as one dict, ``"<module>.<key>"`` -> detached contiguous CPU tensor."""
    return {f"{name}.{key}": value.detach().cpu().contiguous()
            for name, module in modules.items() for key, value in module.state_dict().items()}


def save_checkpoint(folder: str | os.PathLike, kind: str, tensors: Mapping[str, torch.Tensor],
                    config: Mapping[str, Any], record: Mapping[str, Any] | None = None) -> Path:
    """Write a checkpoint folder (created if needed) atomically; returns the folder.

    Args:
        folder: checkpoint folder; an existing checkpoint in it is replaced.
        kind: what the checkpoint holds ("offline-policy", "sac", "cost-model"); :func:`load_checkpoint`
            refuses another kind.
        tensors: name -> tensor (see :func:`module_tensors`).
        config: JSON-serialisable; what the loader needs to rebuild the networks.
        record: JSON-serialisable; what else to remember (data, seed, steps, report ...).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = save_safetensors({k: v.detach().cpu().contiguous() for k, v in tensors.items()},
                               metadata={"format": FORMAT})
    content = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": str(kind),
               "config": dict(config), "record": dict(record or {}),
               "weights_sha256": hashlib.sha256(weights).hexdigest()}
    try:
        content = json.loads(json.dumps(content))  # the digest is taken over what a reader will parse
    except (TypeError, ValueError) as err:
        raise TypeError(f"checkpoint config and record must be JSON-serialisable: {err}") from None
    content["sha256"] = _content_sha256(content)
    text = json.dumps(content, indent=2).encode()
    # config.json goes first and comes back last: a write killed in between leaves no config.json
    (folder / CONFIG).unlink(missing_ok=True)
    _atomic_write(folder / WEIGHTS, weights)
    _atomic_write(folder / CONFIG, text)
    return folder


def read_config(folder: str | os.PathLike) -> dict[str, Any]:
    """The parsed config.json of ``folder`` (a folder, or its model.safetensors), not yet verified."""
    folder = checkpoint_folder(folder)
    path = folder / CONFIG
    try:
        doc = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(
            f"{folder} has no {CONFIG}; not a safectrl checkpoint (or an interrupted write)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is corrupted (not valid JSON: {err})") from None
    if not isinstance(doc, dict):
        raise CheckpointError(f"{path} is not a safectrl checkpoint record (not a JSON object)")
    return doc


def load_checkpoint(folder: str | os.PathLike, kind: str) -> Checkpoint:
    """Read and verify the checkpoint of the given ``kind`` in ``folder`` (or its model.safetensors).

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        CheckpointError: anything else: a missing or unparsable file, an older or other format, another kind,
            a pickle, truncated or altered weights, an edited config.json.
    """
    folder = checkpoint_folder(folder)
    doc = read_config(folder)
    path = folder / CONFIG
    if doc.get("format") != FORMAT:
        raise CheckpointError(f"{path} has format {doc.get('format')!r}, not {FORMAT!r}; {RETRAIN}")
    if doc.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {doc.get('format_version')}, this "
                              f"safectrl reads version {FORMAT_VERSION}")
    if doc.get("kind") != kind:
        raise CheckpointError(f"{path} holds a {doc.get('kind')!r} checkpoint, not a {kind!r} one")
    if not (isinstance(doc.get("config"), dict) and isinstance(doc.get("record"), dict)):
        raise CheckpointError(f"{path} is malformed: config and record must be JSON objects")
    weights = read_weights(folder / WEIGHTS)
    if hashlib.sha256(weights).hexdigest() != doc.get("weights_sha256"):
        raise CheckpointError(f"{folder / WEIGHTS} does not match the weights_sha256 in {CONFIG}: "
                              "corrupted or altered")
    if _content_sha256(doc) != doc.get("sha256"):
        raise CheckpointError(f"{path} does not match its sha256: an entry was edited or corrupted")
    return Checkpoint(folder, kind, parse_weights(weights, folder / WEIGHTS), doc["config"], doc["record"])


def checkpoint_folder(path: str | os.PathLike) -> Path:
    """The folder of a checkpoint given as the folder or its weights file; pickle-like names are refused."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"no checkpoint at {p}")
    if p.is_file():
        if p.suffix.lower() in _PICKLE_SUFFIXES:
            raise CheckpointError(
                f"{p} looks like a pickle-based checkpoint ({p.suffix}); refused, because loading a pickle "
                f"can execute arbitrary code. safectrl checkpoints are folders with {WEIGHTS} and {CONFIG}")
        if p.name != WEIGHTS:
            raise CheckpointError(f"{p} is not a checkpoint: expected a folder with {WEIGHTS} and {CONFIG}")
        p = p.parent
    return p


def read_weights(path: Path) -> bytes:
    """The bytes of a safetensors file; anything else (a pickle, a torch.save zip, bad header) is refused."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"{path.parent} has no {path.name}") from None
    # a safetensors header length can begin with the bytes of a pickle or zip: test the header first
    header_len = struct.unpack("<Q", data[:8])[0] if len(data) >= 9 else None
    if header_len is not None and header_len <= min(len(data) - 8, _MAX_HEADER) and data[8:9] == b"{":
        return data
    if data[:1] == b"\x80" or data[:2] == b"PK":
        kind = "a pickle payload" if data[:1] == b"\x80" else "a torch.save zip archive (pickle inside)"
        raise CheckpointError(f"{path} contains {kind}; refused, because loading it could execute code")
    if header_len is None:
        raise CheckpointError(f"{path} is truncated ({len(data)} bytes); not a safetensors file")
    raise CheckpointError(f"{path} is not a safetensors file (bad header); corrupted or not a checkpoint")


def parse_weights(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of checked safetensors bytes (:func:`read_weights`); ``path`` names the file in errors."""
    try:
        return load_safetensors(data)
    except (SafetensorError, ValueError, RuntimeError) as err:
        raise CheckpointError(f"{path} is corrupted: {err}") from None


def _content_sha256(doc: Mapping[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
