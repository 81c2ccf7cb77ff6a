"""The predictive safety filter on the reactor: its latency against the NMPC's in the same run (behind a safe
controller, and behind the most heat with the SQP correction, the default, and with the NLP alone), whether
it stays out of the way behind a safe controller, and whether adversarial policies (always the most heat,
corners of the input box held for random numbers of intervals, uniformly random inputs) behind it stay below
T_max over whole episodes on the nominal plant, the mismatched one, and the
mismatched one with noisy sensors.

Run::

    python benchmarks/psf.py [--seeds 3] [--steps 200] [--markdown docs/psf.md] [--latency-only]

Seeds are 5000 + k (disjoint from the study's evaluation and tuning seeds). Every number is measured in this
process; the latency ratio is the filter's median time per decision over the NMPC's, both on the same
episodes (the nominal PI's, and the NMPC's own).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
from tqdm import tqdm

from safectrl.common.faults import FallbackWarning
from safectrl.controllers.pi import NOMINAL_TUNING, PIController
from safectrl.controllers.polycstr_nmpc import polycstr_nmpc
from safectrl.models import polycstr as pc
from safectrl.models.registry import get_task
from safectrl.rl.env import TaskEnv
from safectrl.rl.rollout import run_episode
from safectrl.safety.psf import predictive_safety_filter, with_config
from safectrl.studies import report
from safectrl.studies.psf_study import BangBang, MostHeat, Uniform

ENV = "safectrl/PolyCSTR-v0"
TASK = get_task(ENV)
PLANTS = {"nominal": ("nominal", False), "mismatch": ("actual", False), "mismatch+noise": ("actual", True)}


#: The adversarial policies of the back-off study (safectrl.studies.psf_study), and uniformly random inputs.
POLICIES = {"most heat": MostHeat, "bang-bang": BangBang, "random": Uniform,
            "PI nominal": lambda: PIController(NOMINAL_TUNING)}


def episode(policy, scenario: str, plant: str, seed: int, steps: int, filtered: bool, config=None):
    name, noise = PLANTS[plant]
    env = TaskEnv(TASK, scenario=scenario, plant=name, noise=noise, max_steps=steps)
    decider = predictive_safety_filter(policy, ENV, config=config) if filtered else policy
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FallbackWarning)
        ep = run_episode(env, decider, seed)
    T = np.asarray(ep.infos["state"])[1:, 4]
    row = {"violations": int(np.sum(ep.infos["violation"][1:])), "peak_T": float(np.nanmax(T)),
           "cost": float(-ep.rewards.sum()), "ms": float(np.median(ep.decision_time) * 1e3)}
    if filtered:
        row.update(decider.episode_report())
        rec = decider.record.arrays()
        row.update(applied=rec["applied"], screened=float(rec["screened"].mean()),
                   iterations=float(rec["iterations"].mean()), sqp_applied=float(np.mean(rec["sqp"] == "applied")),
                   sqp_iterations=float(rec["sqp_iterations"].mean()))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3, help="episodes per policy, scenario and plant")
    parser.add_argument("--steps", type=int, default=TASK.episode_steps, help="intervals per episode")
    parser.add_argument("--markdown", help="also write the tables to this file")
    parser.add_argument("--latency-only", action="store_true",
                        help="only the latency tables (PI, PI+PSF and the NMPC on the nominal plant; the most "
                             "heat behind the filter with the SQP correction and with the NLP alone)")
    args = parser.parse_args()
    seeds = [5000 + k for k in range(args.seeds)]
    scenarios = list(TASK.scenarios)
    out = [f"# Predictive safety filter on the reactor (`python benchmarks/psf.py --seeds {args.seeds} "
           f"--steps {args.steps}`)\n"]

    # 1. latency and staying out of the way: PI nominal raw vs filtered, and the NMPC, same episodes
    rows, lat = [], {"NMPC": [], "PSF": []}
    jobs = [(sc, s) for sc in scenarios for s in seeds]
    for sc, seed in tqdm(jobs, desc="PI, PI+PSF, NMPC (nominal plant)"):
        raw = episode(PIController(NOMINAL_TUNING), sc, "nominal", seed, args.steps, False)
        psf = episode(PIController(NOMINAL_TUNING), sc, "nominal", seed, args.steps, True)
        nmpc = episode(polycstr_nmpc(), sc, "nominal", seed, args.steps, False)
        lat["NMPC"].append(nmpc["ms"])
        lat["PSF"].append(psf["ms"])
        rows.append([sc, seed, report.fmt(raw["cost"]), report.fmt(psf["cost"]),
                     f"{100 * (psf['cost'] / raw['cost'] - 1):+.2f} %", f"{100 * psf['interventions']:.1f} %",
                     report.fmt(psf["ms"], 3), report.fmt(nmpc["ms"], 3)])
    out.append("## Behind a safe controller (PI nominal, nominal plant)\n")
    out.append(report.markdown_table(("scenario", "seed", "cost PI", "cost PI+PSF", "Δ cost", "interventions",
                                      "ms/decision PSF", "ms/decision NMPC"), rows))
    ratio = np.median(lat["PSF"]) / np.median(lat["NMPC"])
    out.append(f"\nLatency: PSF {np.median(lat['PSF']):.1f} ms vs NMPC {np.median(lat['NMPC']):.1f} ms per decision "
               f"(medians over episodes), ratio **{ratio:.2f}** (target <= 1.5).\n")

    # 1b. latency where the filter must intervene: the most heat on the mismatched plant (with and without
    # noisy sensors), the default (the SQP correction before the NLP) against the NLP alone, same episodes
    rows, lat_heat, lat_plant = [], {True: [], False: []}, {}
    span = TASK.model.u_high - TASK.model.u_low
    jobs_heat = [(pl, sc, s) for pl in ("mismatch", "mismatch+noise") for sc in scenarios for s in seeds]
    for plant, sc, seed in tqdm(jobs_heat, desc="most heat + PSF, SQP correction on and off"):
        on, off = (episode(MostHeat(), sc, plant, seed, args.steps, True, with_config(ENV, sqp=flag))
                   for flag in (True, False))
        nmpc_here = episode(polycstr_nmpc(), sc, plant, seed, args.steps, False)
        lat_heat[True].append(on["ms"])
        lat_heat[False].append(off["ms"])
        lat_plant.setdefault(plant, []).append((on["ms"], nmpc_here["ms"]))
        rows.append([plant, sc, seed, report.fmt(nmpc_here["ms"], 3), report.fmt(off["ms"], 3), report.fmt(on["ms"], 3),
                     f"{off['ms'] / on['ms']:.1f}x", f"{100 * on['sqp_applied']:.0f} %",
                     f"{off['iterations']:.1f}", f"{on['iterations']:.1f}", f"{on['sqp_iterations']:.1f}",
                     f"{np.max(np.abs(on['applied'] - off['applied']) / span):.1e}",
                     f"{on['violations']}, {off['violations']}", f"{on['fallbacks']}, {off['fallbacks']}",
                     f"{100 * (on['cost'] / off['cost'] - 1):+.2f} %"])
    out.append("## Behind the most heat: the SQP correction (default) against the NLP alone\n")
    out.append(report.markdown_table(("plant", "scenario", "seed", "ms/decision, NMPC on that plant",
                                      "ms/decision, NLP", "ms/decision, SQP",
                                      "speed-up", "steps the SQP decided", "NLP iterations/step, NLP",
                                      "NLP iterations/step, SQP", "QPs/step, SQP",
                                      "max |Δu| / range between the two", "above T_max (SQP, NLP)",
                                      "fallbacks (SQP, NLP)", "Δ cost"), rows))
    nmpc_ms = np.median(lat["NMPC"])
    out.append(f"\nLatency behind the most heat: PSF {np.median(lat_heat[True]):.1f} ms with the SQP correction, "
               f"{np.median(lat_heat[False]):.1f} ms with the NLP alone (medians over episodes), against the "
               f"NMPC's {nmpc_ms:.1f} ms above: ratios **{np.median(lat_heat[True]) / nmpc_ms:.2f}** and "
               f"{np.median(lat_heat[False]) / nmpc_ms:.1f} (target <= 1.5).\n")
    for plant, pairs in lat_plant.items():
        psf_ms, own = (np.median([p[i] for p in pairs]) for i in (0, 1))
        out.append(f"On the {plant} plant alone: PSF {psf_ms:.1f} ms, the NMPC on the same plant {own:.1f} ms: ratio "
                   f"**{psf_ms / own:.2f}**; against the nominal-plant NMPC above {psf_ms / nmpc_ms:.2f}.\n")

    # 2. adversarial policies over whole episodes
    rows = []
    jobs = [] if args.latency_only else [
        (p, pl, sc, s) for p in ("most heat", "bang-bang", "random") for pl in PLANTS for sc in scenarios for s in seeds]
    results: dict[tuple[str, str], list[dict]] = {}
    for pol, plant, sc, seed in tqdm(jobs, desc="adversarial policies behind the filter"):
        results.setdefault((pol, plant), []).append(episode(POLICIES[pol](), sc, plant, seed, args.steps, True))
    for (pol, plant), eps in results.items():
        rows.append([pol, plant, len(eps), sum(e["violations"] for e in eps), report.fmt(max(e["peak_T"] for e in eps)),
                     report.mean_std([100 * e["interventions"] for e in eps], 3),
                     sum(e["fallbacks"] for e in eps), sum(e["rejected_plans"] for e in eps),
                     report.mean_std([e["ms"] for e in eps], 3)])
    if rows:
        out.append(f"## Adversarial policies behind the filter (T_max = {pc.T_MAX} K)\n")
        out.append(report.markdown_table(("policy", "plant", "episodes", "intervals above T_max", "peak T [K]",
                                          "interventions [%]", "fallbacks", "rejected plans", "ms/decision"),
                                         rows))
    text = "\n".join(out) + "\n"
    print(text)
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write(text)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"({time.perf_counter() - t0:.0f} s)")
