"""Config dataclasses refuse wrong types and ranges when they are made, with the field named."""

from __future__ import annotations

import math

import numpy as np
import pytest

from safectrl.common import validation
from safectrl.controllers.estimation import EKFConfig
from safectrl.controllers.nmpc import NMPCConfig
from safectrl.rl.acr import RLACRConfig
from safectrl.rl.bc import BCConfig
from safectrl.rl.iql import IQLConfig
from safectrl.rl.sac import SACConfig
from safectrl.safety.correction import GDConfig
from safectrl.safety.cost_model import CostModelTrainConfig
from safectrl.safety.picnn import PICNNConfig
from safectrl.studies.acr_study import ACRPreset, ACRStudyConfig
from safectrl.studies.study import PRESETS, StudyConfig

EKF = dict(measured=("x",), measurement_std=(0.1,), process_std=(0.1, 0.1), initial_std=(1.0, 1.0))


@pytest.mark.parametrize("make, error, message", [
    (lambda: NMPCConfig(horizon=2.5), TypeError, r"^horizon must be a positive integer, got 2\.5$"),
    (lambda: NMPCConfig(horizon=0), ValueError, r"^horizon must be a positive integer, got 0$"),
    (lambda: NMPCConfig(horizon=True), TypeError, "horizon must be a positive integer, got True"),
    (lambda: NMPCConfig(collocation_degree=0), ValueError, "collocation_degree must be a positive integer"),
    (lambda: NMPCConfig(tracked=("T",), tracking_weights=(1.0, 2.0)), ValueError,
     "tracking_weights must have 1 entries, got 2"),
    (lambda: NMPCConfig(tracked=("T",), tracking_weights=(math.nan,)), ValueError,
     r"tracking_weights\[0\] must be finite, got nan"),
    (lambda: NMPCConfig(tracked=("T", "T"), tracking_weights=(1.0, 1.0)), ValueError, r"tracked names \['T'\]"),
    (lambda: NMPCConfig(du_weights=(1.0, -1.0)), ValueError, r"du_weights\[1\] must be >= 0, got -1"),
    (lambda: NMPCConfig(du_weights=(1.0, math.inf)), ValueError, r"du_weights\[1\] must be finite"),
    (lambda: NMPCConfig(tol=0.0), ValueError, r"tol must be > 0, got 0"),
    (lambda: NMPCConfig(max_iter=1.5), TypeError, "max_iter must be a positive integer"),
    (lambda: NMPCConfig(max_cpu_time=-1.0), ValueError, "max_cpu_time must be > 0"),
    (lambda: NMPCConfig(state_bounds=("T",)), TypeError, r"state_bounds\[0\] must be a StateBound"),
    (lambda: NMPCConfig(strict="yes"), TypeError, "strict must be True or False"),
    (lambda: EKFConfig(**{**EKF, "measurement_std": (-0.1,)}), ValueError, r"measurement_std\[0\] must be >= 0"),
    (lambda: EKFConfig(**{**EKF, "process_std": (0.1, math.nan)}), ValueError, r"process_std\[1\] must be finite"),
    (lambda: EKFConfig(**{**EKF, "measured": "x"}), TypeError, "measured must be a sequence"),
    (lambda: SACConfig(hidden=(0, 256)), ValueError, r"hidden\[0\] must be an integer in 1\.\.65536, got 0"),
    (lambda: SACConfig(discount=1.0), ValueError, r"discount must be in \[0, 1\), got 1"),
    (lambda: SACConfig(batch_size=0), ValueError, "batch_size must be a positive integer"),
    (lambda: SACConfig(log_std_min=2.0, log_std_max=1.0), ValueError, "log_std_max must be > 2"),
    (lambda: RLACRConfig(focus_hidden=(10**12,)), ValueError, r"focus_hidden\[0\] must be an integer in 1\.\.65536"),
    (lambda: RLACRConfig(focus_init=1.0), ValueError, r"focus_init must be in \(0, 1\), got 1"),
    (lambda: RLACRConfig(sac={"hidden": (8,)}), TypeError, "sac must be a SACConfig"),
    (lambda: BCConfig(hidden=()), ValueError, "hidden must list at least one layer width"),
    (lambda: BCConfig(steps=0), ValueError, "steps must be a positive integer"),
    (lambda: BCConfig(lr=-1e-3), ValueError, "lr must be > 0"),
    (lambda: IQLConfig(tau=0.0), ValueError, r"tau must be in \(0, 1\], got 0"),
    (lambda: IQLConfig(hidden=(256, 2.5)), TypeError, r"hidden\[1\] must be an integer in 1\.\.65536, got 2\.5"),
    (lambda: GDConfig(max_steps=2.5), TypeError, "max_steps must be a positive integer"),
    (lambda: CostModelTrainConfig(hidden=[10**12]), ValueError,
     r"hidden\[0\] must be an integer in 1\.\.65536, got 1000000000000"),
    (lambda: CostModelTrainConfig(huber_delta=0.0), ValueError, "huber_delta must be > 0"),
    (lambda: CostModelTrainConfig(epochs=0), ValueError, "epochs must be a positive integer"),
    (lambda: PICNNConfig(3, 2, hidden=(10**12,)), ValueError,
     r"hidden\[0\] must be an integer in 1\.\.65536, got 1000000000000"),
    (lambda: PICNNConfig(0, 2), ValueError, "obs_dim must be an integer in 1..65536, got 0"),
    (lambda: ACRPreset("x", seeds=0, episodes=1, pretrain_episodes=1, envs=("a",)), ValueError,
     "seeds must be a positive integer, got 0"),
    (lambda: ACRPreset("x", seeds=1, episodes=-3, pretrain_episodes=1, envs=("a",)), ValueError,
     "episodes must be a positive integer, got -3"),
    (lambda: StudyConfig(connect_timeout=0.0), ValueError, "connect_timeout must be > 0"),
    (lambda: ACRStudyConfig(connect_timeout=math.nan), ValueError, "connect_timeout must be finite"),
])
def test_a_bad_field_is_refused_when_the_config_is_made(make, error, message):
    with pytest.raises(error, match=message):
        make()


def test_study_presets_refuse_no_episodes():
    from dataclasses import replace

    with pytest.raises(ValueError, match="eval_seeds must be a positive integer, got 0"):
        replace(PRESETS["quick"], eval_seeds=0)
    with pytest.raises(ValueError, match="bc_steps must be a positive integer, got 0"):
        replace(PRESETS["quick"], bc_steps=0)


def test_valid_values_are_kept_and_normalised():
    """A width list (as JSON gives it) becomes a tuple of ints; NumPy integers and the defaults pass."""
    assert PICNNConfig(3, 2, hidden=[np.int64(16), 8]).hidden == (16, 8)
    assert CostModelTrainConfig(hidden=[32, 32]).hidden == (32, 32)
    assert SACConfig(hidden=[validation.MAX_WIDTH]).hidden == (validation.MAX_WIDTH,)
    assert NMPCConfig(horizon=np.int32(5)).horizon == 5
    for config in (NMPCConfig, SACConfig, RLACRConfig, BCConfig, IQLConfig, GDConfig, CostModelTrainConfig,
                   StudyConfig, ACRStudyConfig):
        config()  # every default is valid
