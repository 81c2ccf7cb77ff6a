"""Trained artifacts (policies, cost models) cached on disk by a hash of the configuration that made them.

``$SAFECTRL_CACHE_DIR/artifacts/<kind>-<hash>/`` holds one artifact; an ``artifact.json`` inside records the full
configuration, and the folder appears only when the artifact is complete (it is built in a temporary folder
and renamed), so an interrupted training never leaves a half-written artifact behind.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from safectrl.models.compiled import cache_dir
from safectrl.studies.executor import config_hash


#: The file that marks a complete artifact and records its configuration.
MARKER = "artifact.json"


def artifacts_root() -> Path:
    """``$SAFECTRL_ARTIFACTS_DIR`` if set, else ``artifacts/`` in the cache folder (``$SAFECTRL_CACHE_DIR``).

    With ``--scheduler`` the workers must see the same folder (a shared file system).
    """
    env = os.environ.get("SAFECTRL_ARTIFACTS_DIR")
    return Path(env) if env else cache_dir() / "artifacts"


def artifact_path(kind: str, config: dict[str, Any]) -> Path:
    """Where the artifact of ``kind`` made from ``config`` lives (whether or not it exists yet)."""
    return artifacts_root() / f"{kind}-{config_hash(config)}"


def is_built(kind: str, config: dict[str, Any]) -> bool:
    return (artifact_path(kind, config) / MARKER).exists()


def build_artifact(
    kind: str, config: dict[str, Any], build: Callable[[Path], None], force: bool = False
) -> Path:
    """Build ``kind`` from ``config`` with ``build(folder)`` unless it is cached; return its folder."""
    final = artifact_path(kind, config)
    if is_built(kind, config) and not force:
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=final.parent, prefix=f".{kind}-"))
    try:
        build(tmp)
        (tmp / MARKER).write_text(json.dumps(config, indent=2, sort_keys=True, default=str))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final
