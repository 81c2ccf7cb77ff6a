"""Math namespaces: the few functions a right-hand side may call.

Every model's right-hand side is written once against one of these namespaces, so that the same lines give
a CasADi expression (``CASADI``), a NumPy value (``NUMPY``) and, in ``safectrl.models.pyomo``, a Pyomo
expression. A right-hand side must use only ``+ - * / **`` and the functions below.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import casadi as ca
import numpy as np


@dataclass(frozen=True)
class MathNamespace:
    """The functions a right-hand side may call, for one backend."""

    name: str
    exp: Callable
    log: Callable
    sqrt: Callable
    sin: Callable
    cos: Callable
    # if_else(cond, a, b): a where cond holds, else b. Piecewise models (e.g. renal clearance) use it.
    if_else: Callable
    fabs: Callable  # |a|
    fmax: Callable  # elementwise max(a, b)


NUMPY = MathNamespace(
    name="numpy",
    exp=np.exp,
    log=np.log,
    sqrt=np.sqrt,
    sin=np.sin,
    cos=np.cos,
    if_else=np.where,
    fabs=np.abs,
    fmax=np.maximum,
)

CASADI = MathNamespace(
    name="casadi",
    exp=ca.exp,
    log=ca.log,
    sqrt=ca.sqrt,
    sin=ca.sin,
    cos=ca.cos,
    if_else=ca.if_else,
    fabs=ca.fabs,
    fmax=ca.fmax,
)
