"""PI control: tuning ranges, anti-windup, bumpless start, the nominal tuning's derivation."""

from __future__ import annotations

import numpy as np
import pytest

from safectrl.controllers import pi
from safectrl.models import polycstr as pc
from safectrl.rl.env import TaskEnv
from safectrl.rl.rollout import run_episode
from safectrl.studies.metrics import episode_metrics
from safectrl.studies.pi_tuning import round_tuning


def _obs(e_P=0.0, e_T=0.0, u_prev=(1.0, 345.0)):
    return np.array([450.0, 100.0 - e_P, 350.0 - e_T, e_P, e_T, *u_prev])


def test_sampled_tunings_lie_in_the_spec_ranges(rng):
    for _ in range(200):
        t = pi.sample_tuning(rng).as_dict()
        for name, (lo, hi) in pi.TUNING_RANGES.items():
            assert lo <= t[name] <= hi


def test_bumpless_start_uses_previous_input_as_bias():
    c = pi.PIController(pi.NOMINAL_TUNING)
    np.testing.assert_array_equal(c.act(_obs(u_prev=(0.75, 342.9))), [0.75, 342.9])


def test_proportional_and_integral_action():
    t = pi.PITuning(Kp_P=0.01, Ki_P=1e-6, Kp_T=0.1, Ki_T=1e-5)
    c = pi.PIController(t)
    u = c.act(_obs(e_P=2.0, e_T=-1.0))
    np.testing.assert_allclose(u, [1.0 + 0.01 * 2 + 1e-6 * 2 * 1800, 345.0 - 0.1 - 1e-5 * 1800])


def test_conditional_integration_stops_the_integral_when_saturated():
    c = pi.PIController(pi.PITuning(Kp_P=0.5, Ki_P=1e-4, Kp_T=0.1, Ki_T=1e-5))
    for _ in range(10):
        u = c.act(_obs(e_P=20.0, e_T=0.5))
    assert u[0] == pc.U_HIGH[0]
    assert c.integral[0] == 0.0  # never advanced: the raw output was clipped every interval
    assert c.integral[1] == pytest.approx(10 * 0.5 * 1800)
    # as soon as the error reverses, the output leaves the bound immediately (no wound-up integral)
    assert c.act(_obs(e_P=-1.0))[0] < pc.U_HIGH[0]


def test_reset_forgets_integral_and_bias():
    c = pi.PIController(pi.NOMINAL_TUNING)
    c.act(_obs(e_P=1.0))
    c.reset(seed=3)
    assert c.bias is None and not c.integral.any()


def test_nominal_tuning_is_the_rounded_simc_result():
    """NOMINAL_TUNING = SIMC at the chosen time constants (0.5 h, 2 h), two significant figures."""
    assert round_tuning(pi.simc_tuning(0.5 * 3600, 2.0 * 3600)) == pi.NOMINAL_TUNING


def test_fopdt_identification_is_sane():
    m_P = pi.identify_fopdt("P", 0.05)
    m_T = pi.identify_fopdt("T", 0.5)
    assert 40 < m_P.k < 60 and 5 * 3600 < m_P.tau < 10 * 3600  # slow loop, of order the residence time
    assert 1.5 < m_T.k < 2.5 and 3600 < m_T.tau < 3 * 3600
    assert m_T.theta >= pc.DT / 2
    with pytest.raises(ValueError, match="'P' or 'T'"):
        pi.identify_fopdt("A", 1.0)


@pytest.mark.parametrize("scenario", list(pc.SCENARIOS))
def test_nominal_pi_holds_the_limit_and_reaches_the_setpoint(scenario):
    for seed in range(3):
        m = episode_metrics(run_episode(TaskEnv(pc.TASK, scenario), pi.PIController(pi.NOMINAL_TUNING), seed))
        assert m.violations == 0 and not m.failure
        assert m.final_abs_eP < 0.05 and m.final_abs_eT < 0.01
