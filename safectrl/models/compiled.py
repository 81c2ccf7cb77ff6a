"""Compile CasADi Functions to C once, cache the shared library on disk, and map them over batches.

CasADi evaluates SX Functions in a virtual machine; generated C compiled with ``-O2`` runs the same
operations in the same order several times faster (the results are bitwise identical in our tests, since
no fast-math flags are used). The library is cached under ``$SAFECTRL_CACHE_DIR/compiled`` (default
``~/.cache/safectrl/compiled``), keyed by a hash of the generated source, so a Function is compiled once
per machine and shared by every process (parallel workers included).

No compiler, or ``SAFECTRL_NO_COMPILE=1``: the Function is used as it is, with a one-time warning. Results
are the same, only slower.
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import casadi as ca

_CFLAGS = ("-O2", "-fPIC", "-shared")
_warned = False


def cache_dir() -> Path:
    """Root folder of safectrl's caches (``$SAFECTRL_CACHE_DIR`` or ``~/.cache/safectrl``)."""
    root = os.environ.get("SAFECTRL_CACHE_DIR")
    return Path(root) if root else Path.home() / ".cache" / "safectrl"


def _warn_once(reason: str) -> None:
    global _warned
    if not _warned:
        warnings.warn(
            f"safectrl: running CasADi Functions in the virtual machine ({reason}); results are the same, "
            "simulation is several times slower.",
            RuntimeWarning,
            stacklevel=3,
        )
        _warned = True


@functools.lru_cache(maxsize=None)
def _compile_source(name: str, source: str) -> str | None:
    """Compile ``source`` to a shared library in the cache; return its path, or None if impossible."""
    compiler = os.environ.get("CC", "gcc")
    if shutil.which(compiler) is None:
        _warn_once(f"no C compiler {compiler!r} on PATH")
        return None
    digest = hashlib.sha256((source + " ".join(_CFLAGS) + compiler).encode()).hexdigest()[:20]
    folder = cache_dir() / "compiled"
    folder.mkdir(parents=True, exist_ok=True)
    lib = folder / f"{name}_{digest}.so"
    if lib.exists():
        return str(lib)
    with tempfile.TemporaryDirectory(dir=folder) as tmp:
        src = Path(tmp) / f"{name}.c"
        src.write_text(source)
        out = Path(tmp) / f"{name}.so"
        proc = subprocess.run(
            [compiler, *_CFLAGS, "-o", str(out), str(src)], capture_output=True, text=True, check=False
        )
        if proc.returncode != 0:
            _warn_once(f"{compiler} failed: {proc.stderr.strip()[:300]}")
            return None
        # Atomic: concurrent processes compiling the same source all end with one complete file.
        os.replace(out, lib)
    return str(lib)


def compile_function(fn: ca.Function) -> ca.Function:
    """``fn`` as compiled C (a CasADi ``external`` with the same signature), or ``fn`` itself if that fails."""
    if os.environ.get("SAFECTRL_NO_COMPILE"):
        _warn_once("SAFECTRL_NO_COMPILE is set")
        return fn
    gen = ca.CodeGenerator(f"{fn.name()}.c")
    gen.add(fn)
    lib = _compile_source(fn.name(), gen.dump())
    if lib is None:
        return fn
    return ca.external(fn.name(), lib)


def threads() -> int:
    """Threads used to evaluate a batch (``$SAFECTRL_THREADS``, default: all cores)."""
    return max(1, int(os.environ.get("SAFECTRL_THREADS", os.cpu_count() or 1)))


def mapped(fn: ca.Function, n: int) -> ca.Function:
    """``fn`` evaluated column-wise over ``n`` inputs; spread over threads when ``n`` is large enough."""
    if n == 1:
        return fn
    nthreads = min(threads(), n)
    return fn.map(n, "thread", nthreads) if nthreads > 1 and n >= 16 else fn.map(n)
