r"""Partially input-convex neural network (PICNN; Amos, Xu & Kolter, "Input convex neural networks", ICML 2017).

A scalar function f(x, y) of a state x (free, non-convex path u) and an action y (convex path z). For
layers i = 0 .. k-1, with u_0 = x and z_0 absent::

    u_{i+1} = relu(Wt_i u_i + bt_i)
    z_{i+1} = g_i( W_i^z (z_i ∘ relu(W_i^zu u_i + b_i^z)) + W_i^y (y ∘ (W_i^yu u_i + b_i^y)) + W_i^u u_i + b_i )
    f(x, y) = z_k

Layer 0 has no z-term; the last layer is linear (g_{k-1} = identity, width 1); the hidden g_i are the
(leaky) ReLU with slope ``negative_slope`` in [0, 1]. f is convex in y because every W_i^z is non-negative
(kept so by :meth:`PICNN.clamp_`) and every g_i is convex and non-decreasing; all other weights are free.

For a fixed state the network is, layer by layer, ``z_{i+1} = g_i(A_i z_i + B_i y + c_i)`` with

    A_i = W_i^z diag(relu(W_i^zu u_i + b_i^z)) >= 0,   B_i = W_i^y diag(W_i^yu u_i + b_i^y),   c_i = W_i^u u_i + b_i,

the numbers :meth:`PICNN.export` returns (batched over states). Only the gate vectors ``relu(W_i^zu u_i + b_i^z)``,
``W_i^yu u_i + b_i^y`` and c_i depend on the state (:meth:`PICNN.gates`); the exact convex program of
:mod:`safectrl.safety.correction` takes them as its parameters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from safectrl.common import validation


@dataclass(frozen=True)
class PICNNConfig:
    """Shape of a PICNN."""

    obs_dim: int  # size of x, the input of the non-convex path
    act_dim: int  # size of y, the input of the convex path
    hidden: tuple[int, ...] = (64, 64)  # widths of the hidden layers (both paths); the output has width 1
    negative_slope: float = 0.0  # slope of the hidden activations g_i for negative inputs: 0 ReLU, (0, 1] leaky

    def __post_init__(self) -> None:
        validation.integer("obs_dim", self.obs_dim, low=1, high=validation.MAX_WIDTH)
        validation.integer("act_dim", self.act_dim, low=1, high=validation.MAX_WIDTH)
        object.__setattr__(self, "hidden", validation.widths("hidden", self.hidden))
        if not 0.0 <= self.negative_slope <= 1.0:
            raise ValueError(f"negative_slope must lie in [0, 1] for convexity, got {self.negative_slope}")

    @property
    def widths(self) -> tuple[int, ...]:
        """Output widths of the k layers of the convex path (the last is 1)."""
        return (*self.hidden, 1)


@dataclass(frozen=True)
class Gates:
    """The state-dependent vectors of a PICNN's layers at fixed states; batch first.

    ``gz[i] = relu(W_i^zu u_i + b_i^z)`` (N, widths[i-1]) >= 0 (``gz[0]`` is None), ``gy[i] = W_i^yu u_i + b_i^y``
    (N, act_dim), ``c[i] = W_i^u u_i + b_i`` (N, widths[i]): with them ``A_i = W_i^z diag(gz[i])`` and
    ``B_i = W_i^y diag(gy[i])``.
    """

    gz: list[np.ndarray | None]
    gy: list[np.ndarray]
    c: list[np.ndarray]


@dataclass(frozen=True)
class AffineLayers:
    """A PICNN at fixed states as affine layers ``z_{i+1} = g_i(A_i z_i + B_i y + c_i)``; batch first.

    ``A[0]`` is None (layer 0 has no z-term); ``A[i]`` has shape (N, widths[i], widths[i-1]) and is >= 0,
    ``B[i]`` (N, widths[i], act_dim), ``c[i]`` (N, widths[i]). The last layer is linear.
    """

    A: list[np.ndarray | None]
    B: list[np.ndarray]
    c: list[np.ndarray]
    negative_slope: float

    def __len__(self) -> int:
        return len(self.B)

    def forward(self, y: np.ndarray) -> np.ndarray:
        """f at actions ``y`` (N, act_dim), one per exported state; returns (N,)."""
        z = None
        for i in range(len(self)):
            pre = np.einsum("noa,na->no", self.B[i], y) + self.c[i]
            if z is not None:
                pre = pre + np.einsum("noh,nh->no", self.A[i], z)
            z = np.maximum(pre, self.negative_slope * pre) if i < len(self) - 1 else pre
        return z[:, 0]


class PICNN(nn.Module):
    """f(x, y), convex in y. Batched: ``x`` (N, obs_dim), ``y`` (N, act_dim) -> (N,).

    Initialisation: the gates start near one (biases 1, small gate weights), so at initialisation the
    network is a plain input-convex net with a mean-preserving non-negative z-path (W^z ~ U(0, 2/n), so each
    unit's z-input averages the previous layer's activations) plus the affine y- and u-terms.
    """

    def __init__(self, config: PICNNConfig) -> None:
        super().__init__()
        self.config = config
        widths = config.widths
        k = len(widths)
        u_widths = (config.obs_dim, *config.hidden[: k - 1])  # width of u_i entering layer i
        self.state_path = nn.ModuleList(nn.Linear(u_widths[i], u_widths[i + 1]) for i in range(k - 1))
        self.gate_z = nn.ModuleList(nn.Linear(u_widths[i], widths[i - 1]) for i in range(1, k))
        self.weight_z = nn.ParameterList(nn.Parameter(torch.empty(widths[i], widths[i - 1])) for i in range(1, k))
        self.gate_y = nn.ModuleList(nn.Linear(u_widths[i], config.act_dim) for i in range(k))
        self.weight_y = nn.ParameterList(nn.Parameter(torch.empty(widths[i], config.act_dim)) for i in range(k))
        self.linear_u = nn.ModuleList(nn.Linear(u_widths[i], widths[i]) for i in range(k))
        self.reset_parameters()

    @property
    def num_layers(self) -> int:
        return len(self.config.widths)

    def reset_parameters(self) -> None:
        for gate in (*self.gate_z, *self.gate_y):
            nn.init.uniform_(gate.weight, -0.1 / math.sqrt(gate.in_features), 0.1 / math.sqrt(gate.in_features))
            nn.init.ones_(gate.bias)
        for w in self.weight_z:
            nn.init.uniform_(w, 0.0, 2.0 / w.shape[1])
        for w in self.weight_y:
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Linear's default
        for lin in (*self.state_path, *self.linear_u):
            lin.reset_parameters()

    @torch.no_grad()
    def clamp_(self) -> None:
        """Project every W^z onto W^z >= 0 (call after each optimiser step)."""
        for w in self.weight_z:
            w.clamp_(min=0.0)

    def check_convex(self) -> None:
        """Raise ValueError unless every W^z is non-negative (e.g. after loading weights)."""
        for i, w in enumerate(self.weight_z, start=1):
            if not torch.all(w >= 0):
                raise ValueError(f"W^z of layer {i} has negative entries (min {w.min().item():.3g}): "
                                 "f would not be convex in the action")

    def _act(self, v: torch.Tensor) -> torch.Tensor:
        s = self.config.negative_slope
        return F.relu(v) if s == 0.0 else F.leaky_relu(v, s)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        u, z = x, None
        for i in range(self.num_layers):
            pre = F.linear(y * self.gate_y[i](u), self.weight_y[i]) + self.linear_u[i](u)
            if z is not None:
                pre = pre + F.linear(z * F.relu(self.gate_z[i - 1](u)), self.weight_z[i - 1])
            if i < self.num_layers - 1:
                z = self._act(pre)
                u = F.relu(self.state_path[i](u))
            else:
                z = pre
        return z[:, 0]

    @torch.no_grad()
    def gates(self, x: torch.Tensor) -> Gates:
        """The state-dependent vectors of every layer at states ``x`` (N, obs_dim), as float64 arrays."""
        return PICNNArrays(self).gates(x.detach().double().numpy())

    def export(self, x: torch.Tensor) -> AffineLayers:
        """The affine layers A_i(x), B_i(x), c_i(x) at states ``x`` (N, obs_dim), as float64 arrays."""
        g = self.gates(x)
        A: list[np.ndarray | None] = [None]
        B = []
        for i in range(self.num_layers):
            B.append(self.weight_y[i].detach().double().numpy()[None] * g.gy[i][:, None, :])
            if i > 0:
                A.append(self.weight_z[i - 1].detach().double().numpy()[None] * g.gz[i][:, None, :])
        return AffineLayers(A=A, B=B, c=g.c, negative_slope=self.config.negative_slope)


class PICNNArrays:
    """A float64 NumPy snapshot of a :class:`PICNN` for inference at a few states at a time.

    The exact correction evaluates the gates and the cost of one state per decision; for that torch's
    per-operator overhead (about 25 small operators, 0.1 ms for the gates and 0.25 ms for a forward pass)
    costs more than the arithmetic. Later changes to the network's weights are not seen.
    :meth:`PICNN.gates` is computed here too, so the gates have one implementation.
    """

    def __init__(self, net: PICNN) -> None:
        def arr(t: torch.Tensor) -> np.ndarray:
            return t.detach().double().numpy().copy()

        self.config = net.config
        self.state_path = [(arr(lin.weight), arr(lin.bias)) for lin in net.state_path]
        self.gate_z = [(arr(lin.weight), arr(lin.bias)) for lin in net.gate_z]
        self.gate_y = [(arr(lin.weight), arr(lin.bias)) for lin in net.gate_y]
        self.linear_u = [(arr(lin.weight), arr(lin.bias)) for lin in net.linear_u]
        self.weight_z = [arr(w) for w in net.weight_z]
        self.weight_y = [arr(w) for w in net.weight_y]

    def gates(self, x: np.ndarray) -> Gates:
        """The :class:`Gates` at states ``x`` (N, obs_dim)."""
        u = np.asarray(x, dtype=np.float64)
        gz: list[np.ndarray | None] = [None]
        gy, c = [], []
        k = len(self.weight_y)
        for i in range(k):
            gy.append(u @ self.gate_y[i][0].T + self.gate_y[i][1])
            c.append(u @ self.linear_u[i][0].T + self.linear_u[i][1])
            if i > 0:
                gz.append(np.maximum(u @ self.gate_z[i - 1][0].T + self.gate_z[i - 1][1], 0.0))
            if i < k - 1:
                u = np.maximum(u @ self.state_path[i][0].T + self.state_path[i][1], 0.0)
        return Gates(gz=gz, gy=gy, c=c)

    def _forward(self, gates: Gates, y: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """f (N,) and, per hidden layer, the activation's slope at its pre-activation (1 above 0, else
        ``negative_slope``: torch's convention at 0)."""
        s = self.config.negative_slope
        k = len(self.weight_y)
        z, slopes = None, []
        for i in range(k):
            pre = (y * gates.gy[i]) @ self.weight_y[i].T + gates.c[i]
            if z is not None:
                pre = pre + (z * gates.gz[i]) @ self.weight_z[i - 1].T
            if i < k - 1:
                positive = pre > 0
                slopes.append(np.where(positive, 1.0, s))
                z = np.where(positive, pre, s * pre)
            else:
                z = pre
        return z[:, 0], slopes

    def value(self, gates: Gates, y: np.ndarray) -> np.ndarray:
        """f(x, y) (N,) for the states of ``gates`` (N of them) at actions ``y`` (N, act_dim)."""
        return self._forward(gates, y)[0]

    def value_and_grad(self, gates: Gates, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """f(x, y) (N,) and its gradient in the action (N, act_dim), by reverse mode through the layers;
        the gradient autograd gives for :meth:`PICNN.forward`."""
        f, slopes = self._forward(gates, y)
        delta = np.ones((len(y), 1))  # df / d pre of the last layer
        grad = np.zeros_like(y, dtype=np.float64)
        for i in range(len(self.weight_y) - 1, -1, -1):
            grad += (delta @ self.weight_y[i]) * gates.gy[i]
            if i > 0:
                delta = (delta @ self.weight_z[i - 1]) * gates.gz[i] * slopes[i - 1]
        return f, grad
