"""A learned cost model f(obs, action), convex in the action: a PICNN between fixed affine scalings.

Observations are standardised with the training data's mean and standard deviation, and so are actions:
the network's action unit is one standard deviation of the recorded actions, which makes the trust term
of the correction (:mod:`safectrl.safety.correction`) a penalty on leaving the region the model has seen.
The network regresses standardised costs; :meth:`ConvexCostModel.predict` returns costs in the units of
the training targets. Affine maps with positive scales keep the model convex in the physical action.

Training (:func:`fit_cost_model`) takes plain arrays; what the target is (an H-step cost-to-go, say) is
decided by the code that composes datasets with this module. Checkpoints are in safectrl's one verified
format (:mod:`safectrl.common.checkpoint`, :func:`save_cost_model`).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from safectrl.common import validation
from safectrl.common.checkpoint import RETRAIN, Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from safectrl.safety.picnn import PICNN, PICNNConfig

#: The ``kind`` of cost-model checkpoints (:mod:`safectrl.common.checkpoint`).
KIND = "cost-model"
#: The files of the unverified format before the common checkpoint.
_OLD_FILES = ("cost_model.json", "cost_model.safetensors")


@dataclass(frozen=True)
class CostModelTrainConfig:
    """Hyperparameters of cost-model regression."""

    hidden: tuple[int, ...] = (64, 64)  # PICNN hidden widths
    negative_slope: float = 0.0  # hidden activation: 0 ReLU (the exact program is then an LP), > 0 leaky
    lr: float = 1e-3  # Adam learning rate
    weight_decay: float = 0.0  # Adam L2 penalty
    batch_size: int = 256  # transitions per gradient step
    epochs: int = 100  # passes over the training set; the epoch of lowest validation error is kept
    seed: int = 0  # weight initialisation and minibatch order
    huber_delta: float | None = None  # None: mean squared error; else Huber loss with this threshold, in
    #                                   standard deviations of the targets (robust to a heavy tail)

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", validation.widths("hidden", self.hidden))
        validation.real("negative_slope", self.negative_slope, low=0.0, high=1.0)
        validation.positive("lr", self.lr)
        validation.non_negative("weight_decay", self.weight_decay)
        validation.positive_int("batch_size", self.batch_size)
        validation.positive_int("epochs", self.epochs)
        validation.integer("seed", self.seed, low=0)
        if self.huber_delta is not None:
            validation.positive("huber_delta", self.huber_delta)


@dataclass(frozen=True)
class TrainingReport:
    """Per-epoch errors, in target units, and the epoch kept."""

    train_rmse: list[float]  # RMSE on the training set, per epoch (running average over minibatches)
    val_rmse: list[float]  # RMSE on the validation set, per epoch
    best_epoch: int  # index of the epoch whose weights were kept
    val_rmse_best: float
    val_mae_best: float
    val_r2_best: float  # 1 - SSE/SST on the validation set
    target_std: float  # standard deviation of the training targets (RMSE of predicting the mean)
    extra: dict[str, Any] = field(default_factory=dict)


class ConvexCostModel(nn.Module):
    """A PICNN with the data's normalisation. ``predict(obs, action)`` works in physical units.

    Args:
        picnn: the network, on standardised observations and actions.
        obs_mean, obs_std: (net_obs_dim,) observation statistics.
        action_mean, action_std: (act_dim,) action statistics.
        cost_mean, cost_std: statistics of the regression targets.
        obs_index: which columns of the caller's observation the network sees (``None``: all of them, in
            order). The statistics are those of the selected columns.
        obs_dim: columns of the caller's observations (default: ``net_obs_dim`` without ``obs_index``, else
            one past its largest column).
    """

    def __init__(
        self,
        picnn: PICNN,
        obs_mean: np.ndarray,
        obs_std: np.ndarray,
        action_mean: np.ndarray,
        action_std: np.ndarray,
        cost_mean: float,
        cost_std: float,
        obs_index: Sequence[int] | None = None,
        obs_dim: int | None = None,
    ) -> None:
        super().__init__()
        self.picnn = picnn
        n_x, n_y = picnn.config.obs_dim, picnn.config.act_dim
        if obs_index is not None:
            obs_index = tuple(int(i) for i in obs_index)
            if len(obs_index) != n_x or min(obs_index, default=0) < 0 or len(set(obs_index)) != n_x:
                raise ValueError(f"obs_index must be {n_x} distinct non-negative column numbers, got {obs_index}")
        self.obs_index = obs_index
        self.obs_dim = int(obs_dim) if obs_dim is not None else (n_x if obs_index is None else max(obs_index) + 1)
        if (obs_index is None and self.obs_dim != n_x) or (obs_index is not None and self.obs_dim <= max(obs_index)):
            raise ValueError(f"obs_dim {obs_dim} does not fit the network's {n_x} inputs and obs_index "
                             f"{obs_index}")
        for name, value, size in (("obs_mean", obs_mean, n_x), ("obs_std", obs_std, n_x),
                                  ("action_mean", action_mean, n_y), ("action_std", action_std, n_y),
                                  ("cost_mean", [cost_mean], 1), ("cost_std", [cost_std], 1)):
            arr = np.asarray(value, dtype=np.float64).reshape(-1)
            if arr.shape != (size,) or not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} must be {size} finite numbers, got {value!r}")
            if name.endswith("std") and np.any(arr <= 0):
                raise ValueError(f"{name} must be positive, got {value!r}")
            self.register_buffer(name, torch.as_tensor(arr))

    @property
    def net_obs_dim(self) -> int:
        """Observation entries the network sees (``obs_dim`` is what the caller passes)."""
        return self.picnn.config.obs_dim

    @property
    def act_dim(self) -> int:
        return self.picnn.config.act_dim

    # -- unit conversions (numpy in, numpy out, float64) ---------------------------------------------------

    def state_features(self, obs: np.ndarray) -> np.ndarray:
        """The seen columns of observations (N, obs_dim), standardised: (N, net_obs_dim)."""
        obs = np.asarray(obs, dtype=float)
        if self.obs_index is not None:
            if obs.shape[-1] <= max(self.obs_index):
                raise ValueError(f"observations have {obs.shape[-1]} columns; this cost model reads columns "
                                 f"{self.obs_index}")
            obs = obs[..., list(self.obs_index)]
        return (obs - self.obs_mean.numpy()) / self.obs_std.numpy()

    def scale_action(self, action: np.ndarray) -> np.ndarray:
        """Physical actions to network units."""
        return (np.asarray(action, dtype=float) - self.action_mean.numpy()) / self.action_std.numpy()

    def unscale_action(self, y: np.ndarray) -> np.ndarray:
        """Network units to physical actions."""
        return np.asarray(y, dtype=float) * self.action_std.numpy() + self.action_mean.numpy()

    def cost_from_network(self, value: np.ndarray) -> np.ndarray:
        """Network outputs to costs in target units."""
        return np.asarray(value, dtype=float) * float(self.cost_std) + float(self.cost_mean)

    @torch.no_grad()
    def predict(self, obs: np.ndarray, action: np.ndarray) -> np.ndarray:
        """Predicted cost of ``action`` (N, act_dim) in ``obs`` (N, obs_dim), target units; (N,)."""
        obs, action = np.atleast_2d(obs), np.atleast_2d(action)
        net = self.picnn
        dtype = next(net.parameters()).dtype
        x = torch.as_tensor(self.state_features(obs), dtype=dtype)
        y = torch.as_tensor(self.scale_action(action), dtype=dtype)
        return self.cost_from_network(net(x, y).double().numpy())


# -- training --------------------------------------------------------------------------------------------


def _check_arrays(obs: np.ndarray, action: np.ndarray, target: np.ndarray, name: str) -> None:
    if obs.ndim != 2 or action.ndim != 2 or target.ndim != 1:
        raise ValueError(f"{name}: obs (N, n_obs), action (N, n_act) and target (N,) expected, got shapes "
                         f"{obs.shape}, {action.shape}, {target.shape}")
    if not len(obs) == len(action) == len(target) or len(obs) == 0:
        raise ValueError(f"{name}: obs, action and target need the same non-zero length, got "
                         f"{len(obs)}, {len(action)}, {len(target)}")
    for label, arr in (("obs", obs), ("action", action), ("target", target)):
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"{name}: {label} contains NaN or inf")


def fit_cost_model(
    train: tuple[np.ndarray, np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray, np.ndarray],
    config: CostModelTrainConfig = CostModelTrainConfig(),
    progress: Callable[[int, float, float], None] | None = None,
    obs_index: Sequence[int] | None = None,
) -> tuple[ConvexCostModel, TrainingReport]:
    """Regress a convex cost model on (obs, action) -> target by Adam on the mean squared (or Huber) error.

    Args:
        train: (obs (N, n_obs), action (N, n_act), target (N,)) arrays; they set the normalisation.
        val: held-out arrays of the same layout (split by episode, not by transition).
        config: network and optimiser settings.
        progress: called after each epoch with (epoch, train RMSE, validation RMSE).
        obs_index: the observation columns the model sees (default: all); kept in the model and its
            checkpoint, so it is always called with whole observations.

    Returns:
        The model with the weights of the epoch of lowest validation RMSE, and the training report.
    """
    obs, action, target = (np.asarray(a, dtype=float) for a in train)
    v_obs, v_action, v_target = (np.asarray(a, dtype=float) for a in val)
    _check_arrays(obs, action, target, "train")
    _check_arrays(v_obs, v_action, v_target, "val")
    if v_obs.shape[1] != obs.shape[1] or v_action.shape[1] != action.shape[1]:
        raise ValueError("train and val arrays have different widths")
    full_obs, full_v_obs = obs, v_obs
    if obs_index is not None:
        obs_index = tuple(int(i) for i in obs_index)
        if not obs_index or max(obs_index) >= obs.shape[1] or min(obs_index) < 0:
            raise ValueError(f"obs_index {obs_index} does not select columns of {obs.shape[1]}-column observations")
        obs, v_obs = obs[:, list(obs_index)], v_obs[:, list(obs_index)]
    cost_std = float(target.std()) or 1.0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        net = PICNN(PICNNConfig(obs.shape[1], action.shape[1], config.hidden, config.negative_slope))
        model = ConvexCostModel(
            net,
            obs.mean(0), np.maximum(obs.std(0), 1e-8 * np.abs(obs).max(0) + 1e-12),
            action.mean(0), np.maximum(action.std(0), 1e-8 * np.abs(action).max(0) + 1e-12),
            float(target.mean()), cost_std, obs_index, full_obs.shape[1],
        )
        x = torch.as_tensor(model.state_features(full_obs), dtype=torch.float32)
        y = torch.as_tensor(model.scale_action(action), dtype=torch.float32)
        t = torch.as_tensor((target - target.mean()) / cost_std, dtype=torch.float32)
        vx = torch.as_tensor(model.state_features(full_v_obs), dtype=torch.float32)
        vy = torch.as_tensor(model.scale_action(v_action), dtype=torch.float32)
        opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        gen = torch.Generator().manual_seed(config.seed)
        train_rmse, val_rmse = [], []
        best = (math.inf, -1, copy.deepcopy(net.state_dict()))
        for epoch in range(config.epochs):
            net.train()
            sse = 0.0
            for idx in torch.randperm(len(t), generator=gen).split(config.batch_size):
                err = net(x[idx], y[idx]) - t[idx]
                if config.huber_delta is None:
                    loss = torch.mean(err**2)
                else:
                    loss = torch.nn.functional.huber_loss(err, torch.zeros_like(err), delta=config.huber_delta)
                opt.zero_grad()
                loss.backward()
                opt.step()
                net.clamp_()
                sse += torch.sum(err.detach() ** 2).item()
            train_rmse.append(math.sqrt(sse / len(t)) * cost_std)
            pred = model.cost_from_network(_evaluate(net, vx, vy))
            val_rmse.append(float(np.sqrt(np.mean((pred - v_target) ** 2))))
            if val_rmse[-1] < best[0]:
                best = (val_rmse[-1], epoch, copy.deepcopy(net.state_dict()))
            if progress is not None:
                progress(epoch, train_rmse[-1], val_rmse[-1])
        net.load_state_dict(best[2])
    net.eval()
    pred = model.cost_from_network(_evaluate(net, vx, vy))
    err = pred - v_target
    report = TrainingReport(
        train_rmse=train_rmse,
        val_rmse=val_rmse,
        best_epoch=best[1],
        val_rmse_best=float(np.sqrt(np.mean(err**2))),
        val_mae_best=float(np.mean(np.abs(err))),
        val_r2_best=float(1.0 - np.sum(err**2) / max(np.sum((v_target - v_target.mean()) ** 2), 1e-300)),
        target_std=cost_std,
    )
    return model, report


@torch.no_grad()
def _evaluate(net: PICNN, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    net.eval()
    return np.concatenate([net(xb, yb).double().numpy() for xb, yb in zip(x.split(4096), y.split(4096))])


# -- checkpoints -----------------------------------------------------------------------------------------


def save_cost_model(model: ConvexCostModel, folder: str | os.PathLike, metadata: dict[str, Any] | None = None) -> Path:
    """Write the model (weights and normalisation) and its network configuration as a checkpoint folder.

    ``metadata`` (JSON-serialisable: the training target's definition, the data, the report) is the
    checkpoint's record, returned by :func:`load_cost_model_metadata`.
    """
    config = {"picnn": asdict(model.picnn.config), "obs_dim": model.obs_dim,
              "obs_index": None if model.obs_index is None else list(model.obs_index)}
    return save_checkpoint(folder, KIND, model.state_dict(), config, metadata)


def load_cost_model(folder: str | os.PathLike) -> ConvexCostModel:
    """Read and verify a checkpoint written by :func:`save_cost_model`; checks that every W^z is non-negative.

    Raises:
        FileNotFoundError: ``folder`` does not exist.
        CheckpointError: unverifiable, altered, or weights that do not fit the recorded configuration.
        ValueError: a W^z with negative entries (the model would not be convex in the action).
    """
    ckpt = _load(folder)
    try:
        cfg = ckpt.config["picnn"]
        net = PICNN(PICNNConfig(cfg["obs_dim"], cfg["act_dim"], tuple(cfg["hidden"]), cfg["negative_slope"]))
        t = ckpt.tensors
        model = ConvexCostModel(
            net,
            t["obs_mean"].numpy(), t["obs_std"].numpy(), t["action_mean"].numpy(), t["action_std"].numpy(),
            float(t["cost_mean"][0]), float(t["cost_std"][0]),
            ckpt.config["obs_index"], ckpt.config["obs_dim"],
        )
    except (KeyError, TypeError, ValueError, IndexError) as err:
        raise CheckpointError(f"{ckpt.config_path} or {ckpt.weights_path} is incomplete or malformed: "
                              f"{err!r}") from None
    ckpt.check_tensors(model.state_dict())
    model.load_state_dict(ckpt.tensors)
    net.check_convex()
    return model.eval()


def load_cost_model_metadata(folder: str | os.PathLike) -> dict[str, Any]:
    """The ``metadata`` dict stored with a checkpoint (verified with the rest of it)."""
    return _load(folder).record


def _load(folder: str | os.PathLike) -> Checkpoint:
    folder = Path(folder)
    if all((folder / name).exists() for name in _OLD_FILES):
        raise CheckpointError(f"{folder / _OLD_FILES[0]} is a cost-model checkpoint without a hash; "
                              f"{RETRAIN}")
    return load_checkpoint(folder, KIND)
