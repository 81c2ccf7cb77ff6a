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
