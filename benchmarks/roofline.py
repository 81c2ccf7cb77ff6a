"""What this CPU's float32 matrix products allow a training step: shared by ``train.py`` and ``acr_step.py``.

A step of IQL or SAC is a few dozen 256 x 256 x 256 products (the networks' square hidden layers times a
batch of 256) and a little elementwise work. :func:`matmul_gflops` measures the rate torch reaches on that
product in this process, with the thread count set at the time; :func:`counted_flops` counts the
floating-point operations of one call with torch's ``FlopCounterMode`` (matrix products only: ``mm``,
``addmm``, ``bmm``, ``baddbmm``, 2 per multiply-add). Their quotient is the fastest a step can be on this
machine whatever the Python around it: a goal above that ceiling needs other hardware or smaller networks.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def matmul_gflops(n: int = 256, repeats: int = 200, blocks: int = 5) -> float:
    """Best rate (GFLOP/s) of ``blocks`` timed blocks of ``repeats`` float32 products of two n x n
    matrices."""
    generator = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=generator), torch.randn(n, n, generator=generator)
    out = torch.empty(n, n)
    for _ in range(20):
        torch.mm(a, b, out=out)
    best = float("inf")
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(repeats):
            torch.mm(a, b, out=out)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 * repeats / best / 1e9


def counted_flops(call: Callable[[], object]) -> int:
    """Floating-point operations of the matrix products in ``call()`` (which runs once, for real)."""
    with FlopCounterMode(display=False) as counter:
        call()
    return int(counter.get_total_flops())
