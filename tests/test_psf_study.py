"""The choice of the predictive safety filter's back-off (safectrl.studies.psf_study)."""

import math

import numpy as np
import pytest

from safectrl.models import polycstr as pc
from safectrl.studies import psf_study
from safectrl.studies.cli import main


def _episode(peak, errors=(0.3, 0.8), riding=(True, False)):
    return {"peak_T": peak, "violations": int(peak > pc.T_MAX), "runaway": False, "error": np.array(errors),
            "riding": np.array(riding), "interventions": 0.2, "fallbacks": 0, "ms": 10.0}


def test_the_choice_is_the_smallest_back_off_whose_worst_peak_keeps_the_margin():
    limit = pc.T_MAX - psf_study.BACKOFF_MARGIN
    results = {}
    for policy in psf_study.POLICIES:
        for variant in psf_study.VARIANTS:
            results[(1.5, policy, variant, 0)] = _episode(365.5 if policy == "BC" else 364.0)  # one exceedance
            results[(2.0, policy, variant, 0)] = _episode(limit + 0.01)  # misses the margin by 0.01 K
            results[(2.5, policy, variant, 0)] = _episode(limit - 0.2)
            results[(3.0, policy, variant, 0)] = _episode(limit - 0.5)
    chosen, rows = psf_study.backoff_table((1.5, 2.0, 2.5, 3.0), results)
    assert chosen == 2.5
    assert len(rows) == 4 * len(psf_study.POLICIES) * len(psf_study.VARIANTS)
    first = rows[0]
    assert first[psf_study.HEADERS.index("riding steps")] == 1  # only the step flagged as riding the limit
    assert first[psf_study.HEADERS.index("1-step T error max K")] == pytest.approx(0.3)
    bc_noise = [r for r in rows if r[0] == 1.5 and r[1] == "BC" and r[2] == "yes"][0]
    assert bc_noise[psf_study.HEADERS.index("T>T_max intervals")] == 1
    none, _ = psf_study.backoff_table((1.5,), {k: v for k, v in results.items() if k[0] == 1.5})
    assert math.isnan(none)


def test_one_filtered_episode_reports_its_one_interval_errors():
    r = psf_study.backoff_episode(1.5, "most heat", "startup", "mismatch+noise", 11, steps=6)
    assert r["error"].shape == r["riding"].shape == (6,)
    assert np.all(np.isfinite(r["error"])) and r["violations"] == 0 and r["peak_T"] <= pc.T_MAX
    # the most heat from the start: T has not reached the tightened limit within six intervals
    assert not r["riding"][0]


@pytest.mark.parametrize("argv, message", [
    (["safety", "psf-backoff-study", "--backoffs", "-1"], "backoffs[0] must be >= 0"),
    (["safety", "psf-backoff-study", "--backoffs", "2", "2"], "backoffs must be distinct"),
])
def test_bad_back_offs_are_one_clear_error(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_an_unknown_scenario_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["safety", "psf-backoff-study", "--scenario", "shutdown"])
    assert exc.value.code == 2 and "invalid choice" in capsys.readouterr().err


def _task_episode(failed=False, outside=0, margin=(0.5, 0.2), error=((0.1, 0.0), (0.4, 0.3)),
                  riding=((True, False), (False, True))):
    return {"margin": np.array(margin), "outside": outside, "failed": failed, "length": 2,
            "plan_beyond": np.array([-0.05, 0.01]),
            "error": np.array(error), "riding": np.array(riding), "interventions": 0.5, "fallbacks": 1,
            "ms": 4.0}


class _TwoLimits:
    limits = (type("L", (), {"name": "x"})(), type("L", (), {"name": "theta"})())


def test_a_tasks_tightening_choice_is_the_smallest_scale_without_failure_exceedance_or_thin_margin():
    results = {}
    for policy in psf_study.TASK_POLICIES:
        results[(0.5, policy, False, 0)] = _task_episode(failed=policy == "uniform")  # one failure
        results[(1.0, policy, False, 0)] = _task_episode(outside=1 if policy == "bang-bang" else 0,
                                                         margin=(-0.01, 0.2))  # ends an interval outside
        # inside, but theta's margin 0.007 < a quarter of its tightening 0.03
        results[(1.5, policy, False, 0)] = _task_episode(margin=(0.5, 0.007))
        results[(2.0, policy, False, 0)] = _task_episode()
    chosen, rows = psf_study.tightening_table(_TwoLimits, (0.2, 0.02), (0.5, 1.0, 1.5, 2.0), results)
    assert chosen == 2.0
    h = psf_study.TIGHTENING_HEADERS
    first = rows[0]
    assert first[h.index("tightening")] == "0.1, 0.01"
    assert first[h.index("riding steps")] == 2  # steps where any limit was ridden
    # the plant beyond the plan at the riding steps only: x at step 0 (0.1), theta at step 1 (0.3)
    assert first[h.index("plant beyond plan, max per limit")] == "x 0.1, theta 0.3"
    assert [r[h.index("smallest margin per limit")] for r in rows if r[0] == 1.0][0] == "x -0.01, theta 0.2"
    assert first[h.index("plan beyond tightened bound, max per limit")] == "x -0.05, theta 0.01"
    none, _ = psf_study.tightening_table(_TwoLimits, (0.2, 0.02), (0.5,), results)
    assert math.isnan(none)
    # a scale that passes below one that fails (by luck of the seeds) is not chosen
    lucky = {**results, **{(0.5, policy, False, 0): _task_episode() for policy in psf_study.TASK_POLICIES}}
    assert psf_study.tightening_table(_TwoLimits, (0.2, 0.02), (0.5, 1.0, 1.5, 2.0), lucky)[0] == 2.0
    failing_top = {k: (_task_episode(failed=True) if k[0] == 2.0 else v) for k, v in lucky.items()}
    assert math.isnan(psf_study.tightening_table(_TwoLimits, (0.2, 0.02), (0.5, 1.0, 1.5, 2.0), failing_top)[0])


def test_the_generic_adversarial_policies_stay_in_their_box():
    low, high = np.array([-1.0, 0.0, 5.0]), np.array([1.0, 2.0, 6.0])
    bang, uniform = psf_study.BangBang(low, high), psf_study.Uniform(low, high)
    bang.reset(seed=3)
    uniform.reset(seed=3)
    corners = np.array([bang.act(None) for _ in range(200)])
    assert np.all((corners == low) | (corners == high)) and len({tuple(c) for c in corners}) > 2
    draws = np.array([uniform.act(None) for _ in range(200)])
    assert np.all(draws >= low) and np.all(draws <= high) and np.all(draws.std(axis=0) > 0.2 * (high - low))
    with pytest.raises(ValueError, match="finite low <= high"):
        psf_study.BangBang(high, low)
    with pytest.raises(ValueError, match="give both low and high"):
        psf_study.Uniform(low)


def test_the_misled_mpc_carries_the_cart_into_a_rail_with_the_pole_up():
    """The adversary a learned CartPole policy turned out to be in training (a SAC+PSF seed failing 65 times):
    competent, drifting to a limit. Unfiltered on the actual plant, the regulariser told that the pole leans
    drives the cart steadily into the rail, the pole upright until then; the shift is the seed's, and 0
    at the first step."""
    from safectrl.models import cartpole as cp
    from safectrl.rl.env import TaskEnv
    from safectrl.rl.rollout import run_episode

    env_id = "safectrl/CartPoleContinuous-v0"
    policy = psf_study.MisledMPC(env_id, cp.TASK.nominal)
    ep = run_episode(TaskEnv(env_id, plant=cp.TASK.actual), policy, psf_study.TUNING_SEED_OFFSET)
    x = np.asarray(ep.infos["state"])
    assert ep.terminations[-1] and ep.length > 150  # failed, but only after a long drift
    assert np.abs(x[:, 0]).max() > cp.X_FAIL and np.abs(x[:-1, 2]).max() < cp.THETA_FAIL
    shift = policy.shift.copy()
    assert np.count_nonzero(shift) == 1 and np.abs(shift).max() == pytest.approx(0.75 * 2 * cp.THETA_FAIL)
    policy.reset(seed=psf_study.TUNING_SEED_OFFSET)
    np.testing.assert_array_equal(policy.shift, shift)
    assert policy.k == 0


@pytest.mark.parametrize("argv, message", [
    (["safety", "psf-tightening-study", "--env", "safectrl/Mars-v0"], "unknown task 'safectrl/Mars-v0'"),
    (["safety", "psf-tightening-study", "--scales", "1", "1"], "scales must be distinct"),
    (["safety", "psf-tightening-study", "--plant", "moon"], "moon"),
])
def test_a_bad_tightening_study_argument_is_one_clear_error(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


def test_the_glucose_filter_behind_bang_bang_insulin_keeps_the_actual_patient_inside():
    """One tightening-study episode on the actual patient (insulin sensitivity a third of the model's):
    the filter rides the tightened hypoglycaemia bound, the patient never leaves the limits, and where a
    plan rode the bound the patient ended less than half the tightening beyond the plan."""
    c = 40.0
    r = psf_study.tightening_episode("safectrl/Glucose-v0", (c,), "bang-bang", psf_study.TUNING_SEED_OFFSET,
                                     None, False, None, "nominal")
    assert r["length"] == 100 and not r["failed"] and r["outside"] == 0 and r["margin"][0] > 0
    assert r["error"].shape == r["riding"].shape == (100, 1) and r["riding"].sum() >= 10
    assert np.max(r["error"][r["riding"]]) < c / 2


class _OneLimit:
    limits = (type("L", (), {"name": "G"})(),)


def test_a_limit_tightened_per_bound_is_scaled_and_shown_per_bound():
    ep = {"margin": np.array([12.0]), "outside": 0, "failed": False, "length": 1, "plan_beyond": np.array([-1.0]),
          "error": np.array([[0.5]]), "riding": np.array([[True]]), "interventions": 0.1, "fallbacks": 0, "ms": 3.0}
    results = {(scale, "bang-bang", False, 0): ep for scale in (0.5, 1.0)}
    chosen, rows = psf_study.tightening_table(_OneLimit, ((40.0, 150.0),), (0.5, 1.0), results)
    h = psf_study.TIGHTENING_HEADERS
    assert [r[h.index("tightening")] for r in rows] == ["20/75", "40/150"]
    # a quarter of the smaller bound's tightening: 12 >= 5 at 0.5x, but 12 >= 10 too at 1x
    assert chosen == 0.5
