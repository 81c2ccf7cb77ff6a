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

import ctypes
import functools
import hashlib
import itertools
import os
import shutil
import subprocess
import tempfile
import warnings
from pathlib import Path

import casadi as ca
import numpy as np

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


def _library(fn: ca.Function) -> str | None:
    """Path of the compiled library of ``fn`` (compiling it on first use), or None."""
    if os.environ.get("SAFECTRL_NO_COMPILE"):
        _warn_once("SAFECTRL_NO_COMPILE is set")
        return None
    gen = ca.CodeGenerator(f"{fn.name()}.c")
    gen.add(fn)
    return _compile_source(fn.name(), gen.dump())


def compile_function(fn: ca.Function) -> ca.Function:
    """``fn`` as compiled C (a CasADi ``external`` with the same signature), or ``fn`` itself if that fails."""
    lib = _library(fn)
    return fn if lib is None else ca.external(fn.name(), lib)


def _split(sizes: list[int]) -> tuple[np.ndarray, list[np.ndarray], list[tuple[int, int]]]:
    """One zeroed buffer holding ``sizes`` numbers in turn, its consecutive views of those sizes and their
    bounds."""
    ends = np.cumsum([0, *sizes]).tolist()
    buf = np.zeros(max(ends[-1], 1))
    bounds = list(itertools.pairwise(ends))
    return buf, [buf[lo:hi] for lo, hi in bounds], bounds


class DirectCall:
    """Call a compiled CasADi Function through ctypes, NumPy arrays in and out.

    Passing NumPy arrays through CasADi's Python bindings costs ~25 us per argument (conversion to DM);
    for a single reactor that dwarfs the ~6 us of arithmetic. This calls the generated C entry point with
    preallocated buffers instead: each argument is copied into its input buffer (a vector, or an array of
    one row; matrices are not accepted), whose address the C function was given once. Dense inputs and
    outputs only; not thread-safe (one instance per thread). Falls back to calling ``fn`` (same results)
    when no compiled library is available.
    """

    def __init__(self, fn: ca.Function, matrices: bool = False) -> None:
        for i in range(fn.n_in()):
            if not fn.sparsity_in(i).is_dense():
                raise ValueError(f"{fn.name()}: input {i} is sparse; DirectCall needs dense arguments")
        self.fn = fn
        for i in range(fn.n_in()):
            if min(fn.size_in(i)) > 1 and not matrices:
                raise ValueError(f"{fn.name()}: input {i} is a matrix; DirectCall takes vectors")
        # one contiguous buffer per direction, the arguments and results as views into it: the outputs
        # are handed out as views of one copy instead of one copy each
        self._inbuf, self._in, _ = _split([fn.nnz_in(i) for i in range(fn.n_in())])
        self._outbuf, self._out, self._out_bounds = _split([fn.nnz_out(i) for i in range(fn.n_out())])
        self._in_row = self._inbuf[None, :sum(b.size for b in self._in)]
        self._row_shapes = [(1, b.size) for b in self._in]
        self._c = None
        lib = _library(fn)
        if lib is None:
            return
        dll = ctypes.CDLL(lib)
        c_int = {4: ctypes.c_int32, 8: ctypes.c_int64}[dll[f"{fn.name()}_casadi_int_size"]()]
        sizes = [c_int() for _ in range(4)]
        dll[f"{fn.name()}_work"](*[ctypes.byref(v) for v in sizes])
        sz_arg, sz_res, sz_iw, sz_w = (v.value for v in sizes)
        self._arg = (ctypes.c_void_p * sz_arg)()
        self._res = (ctypes.c_void_p * sz_res)()
        self._iw = (c_int * max(sz_iw, 1))()
        self._w = np.zeros(max(sz_w, 1))
        self._w_ptr = self._w.ctypes.data
        for i, buf in enumerate(self._in):
            self._arg[i] = buf.ctypes.data
        for i, out in enumerate(self._out):
            self._res[i] = out.ctypes.data
        self._c = dll[fn.name()]
        self._c.restype = ctypes.c_int
        self._c.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        self._dll = dll  # keep the library loaded

    def rows(self, args: tuple[np.ndarray, ...], outs: list[np.ndarray], lo: int, hi: int) -> None:
        """For a Function mapped over m columns (``matrices=True``): evaluate rows ``lo:hi`` (at most m) of
        the (n, k) arrays ``args`` (the transposes of its (k, m) inputs) into rows ``lo:hi`` of ``outs``. A
        short chunk is filled up with copies of its first row. Compiled library required."""
        m = hi - lo
        for buf, a in zip(self._in, args):
            if not buf.size:
                continue
            block = buf.reshape(-1, a.shape[1])  # column-major (k, m) is row-major (m, k)
            block[:m] = a[lo:hi]
            if m < len(block):
                block[m:] = a[lo]
        status = self._c(self._arg, self._res, self._iw, self._w_ptr, 0)
        if status != 0:
            raise RuntimeError(f"{self.fn.name()}: compiled evaluation returned status {status}")
        for o, buf in zip(outs, self._out):
            if buf.size:
                o[lo:hi] = buf.reshape(-1, o.shape[1])[:m]

    def __call__(self, *args: np.ndarray) -> list[np.ndarray]:
        """Evaluate; returns fresh copies of the outputs, each flattened (column-major for matrices)."""
        if len(args) != len(self._in):
            raise TypeError(f"{self.fn.name()} takes {len(self._in)} arguments, got {len(args)}")
        if self._c is None:
            return [np.asarray(o, dtype=float).ravel(order="F") for o in self.fn(*args)]
        for i, (buf, a) in enumerate(zip(self._in, args)):
            try:
                # (else a single number would be broadcast into the buffer)
                if (a.size if type(a) is np.ndarray else np.size(a)) != len(buf):
                    raise ValueError
                buf[:] = a  # a (k,) vector, a (1, k) row or, for k == 1, a scalar
            except (ValueError, TypeError):
                raise ValueError(f"{self.fn.name()}: input {i} needs {len(buf)} numbers, got "
                                 f"{np.shape(a)}") from None
        status = self._c(self._arg, self._res, self._iw, self._w_ptr, 0)
        if status != 0:
            raise RuntimeError(f"{self.fn.name()}: compiled evaluation returned status {status}")
        out = self._outbuf.copy()
        return [out[lo:hi] for lo, hi in self._out_bounds]

    def row(self, args: tuple[np.ndarray, ...]) -> list[np.ndarray]:
        """Evaluate on arrays of one row each, (1, k_i) (a broadcast view is fine); returns every output as
        (1, nnz_out): :class:`Rows`' case of one row, without :meth:`__call__`'s conversions."""
        if self._c is None:
            return [o[None, :] for o in self(*(a[0] for a in args))]
        if [a.shape for a in args] != self._row_shapes:
            i, a = next((i, a) for i, a in enumerate(args) if a.shape != self._row_shapes[i])
            raise ValueError(f"{self.fn.name()}: input {i} needs one row of {self._in[i].size} numbers, got "
                             f"{a.shape}")
        np.concatenate(args, axis=1, out=self._in_row)
        status = self._c(self._arg, self._res, self._iw, self._w_ptr, 0)
        if status != 0:
            raise RuntimeError(f"{self.fn.name()}: compiled evaluation returned status {status}")
        out = self._outbuf[None, :].copy()
        return [out[:, lo:hi] for lo, hi in self._out_bounds]


def threads() -> int:
    """Threads used to evaluate a batch (``$SAFECTRL_THREADS``, default: all cores)."""
    return max(1, int(os.environ.get("SAFECTRL_THREADS", os.cpu_count() or 1)))


class Rows:
    """A CasADi Function evaluated on the rows of its arguments, compiled.

    One row goes through :class:`DirectCall`. Several go through the Function mapped over ``CHUNK`` rows and
    compiled as one C function (a loop in C), called through ctypes chunk by chunk with the rows copied into
    its buffers: no conversion to CasADi's DM (~2 us per reactor for the polymerisation CSTR, as much as the
    arithmetic of a short interval) and one compiled library whatever the batch size. The last chunk is
    filled up with copies of its first row. With more than one thread (``threads``, default :func:`threads`) and at least
    ``2 * CHUNK`` rows, the chunks are split between threads, each with its own buffers (ctypes releases the
    GIL during the C call). Without a compiled library, CasADi's map in its virtual machine (same results).
    """

    CHUNK = 32

    def __init__(self, fn: ca.Function, threads: int | None = None) -> None:
        self.fn = fn
        self.threads = threads  # None: threads() at each call
        self._direct: DirectCall | None = None
        self._chunk_fn: ca.Function | None = None
        self._callers: list[DirectCall] = []
        self._pool = None
        self._pool_size = 0
        self._vm: dict[int, ca.Function] = {}

    def _chunk_callers(self, k: int) -> list[DirectCall]:
        if self._chunk_fn is None:
            mapped_fn = self.fn.map(self.CHUNK)
            ins = mapped_fn.mx_in()
            self._chunk_fn = ca.Function(f"{self.fn.name()}_rows{self.CHUNK}", ins, mapped_fn.call(ins),
                                         self.fn.name_in(), self.fn.name_out())
        while len(self._callers) < k:
            self._callers.append(DirectCall(self._chunk_fn, matrices=True))
        return self._callers[:k]

    def __call__(self, *args: np.ndarray) -> list[np.ndarray]:
        """Each argument (n, k_i) (a broadcast view is fine); returns every output as (n, nnz_out)."""
        n = len(args[0])
        if n == 1:
            if self._direct is None:
                self._direct = DirectCall(self.fn)
            return self._direct.row(args)
        caller = self._chunk_callers(1)[0]
        outs = [np.empty((n, self.fn.nnz_out(i))) for i in range(self.fn.n_out())]
        if caller._c is None:  # no compiler: CasADi's map, evaluated in its virtual machine
            fn = self._vm.get(n)
            if fn is None:
                fn = self._vm[n] = self.fn.map(n)
            res = fn(*(np.asarray(a).T for a in args))
            res = res if isinstance(res, (list, tuple)) else [res]
            for o, r in zip(outs, res):
                o[:] = np.asarray(r, dtype=float).T.reshape(n, -1)
            return outs
        starts = range(0, n, self.CHUNK)
        nthreads = min(self.threads or threads(), len(starts) // 2)
        if nthreads <= 1:
            for lo in starts:
                caller.rows(args, outs, lo, min(lo + self.CHUNK, n))
            return outs
        if self._pool_size < nthreads:
            from concurrent.futures import ThreadPoolExecutor

            self._pool = ThreadPoolExecutor(nthreads, thread_name_prefix="safectrl-rows")
            self._pool_size = nthreads
        callers = self._chunk_callers(nthreads)
        per = -(-len(starts) // nthreads)

        def work(c: DirectCall, first: list[int]) -> None:
            for lo in first:
                c.rows(args, outs, lo, min(lo + self.CHUNK, n))

        jobs = [self._pool.submit(work, c, list(starts[i * per:(i + 1) * per])) for i, c in enumerate(callers)]
        for j in jobs:
            j.result()
        return outs
