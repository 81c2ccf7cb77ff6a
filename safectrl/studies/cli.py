"""The ``safectrl`` command line: ``safectrl <command> --help`` for each command."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

from safectrl.models import polycstr as pc


def _cmd_data(args: argparse.Namespace) -> int:
    from safectrl.rl import data
    from safectrl.studies import datasets, report

    scenarios = list(pc.SCENARIOS) if args.scenario == "all" else [args.scenario]
    rows = []
    for scenario in scenarios:
        ds_id = datasets.generate_dataset(
            scenario, args.episodes, args.seed, root=args.root, force=args.force, progress=True
        )
        s = datasets.summarise(data.load_episodes(ds_id, args.root))
        rows.append([ds_id, s.episodes, s.with_violations, s.runaways, s.final_abs_eP_median,
                     s.final_abs_eP_p90, s.peak_T_p90, s.cost_median, s.cost_best])
    with data.datasets_root(args.root) as root:
        print(f"\nMinari datasets under {root}\n")
    print(report.markdown_table(
        ["dataset", "episodes", "with violations", "runaways", "final |e_P| median", "final |e_P| p90",
         "peak T p90 K", "cost median", "cost best"], rows))
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from safectrl.studies.study import run_study

    run_study(args.preset, args.out, force=args.force, scheduler=args.scheduler, workers=args.workers,
              serial=args.serial)
    return 0


def _cmd_pi_tuning(args: argparse.Namespace) -> int:
    from safectrl.studies.pi_tuning import run_pi_tuning

    run_pi_tuning(episodes=args.episodes)
    return 0


def _cmd_nmpc(args: argparse.Namespace) -> int:
    import time
    from pathlib import Path

    from safectrl.studies import nmpc_study, report

    if args.backoff_study:
        chosen, rows = nmpc_study.backoff_study(episodes=args.episodes)
        print(report.markdown_table(nmpc_study.BACKOFF_HEADERS, rows))
        margin = nmpc_study.BACKOFF_MARGIN
        print(f"\nchosen back-off: {chosen:g} K (smallest with peak T <= T_max - {margin:g} K)")
        return 0
    variant = "mismatched" if args.mismatch else "oracle"
    out = Path(args.out) if args.out else Path("runs") / f"nmpc-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    if args.acceptance:
        rows = nmpc_study.acceptance(args.episodes, args.data_episodes, noise=args.noise, root=args.root)
        print(nmpc_study.acceptance_table(rows))
        print(f"\nwritten to {nmpc_study.write_acceptance(rows, out)}")
        return 0 if all(r.passes() for r in rows if r.variant == "oracle") else 1
    run = nmpc_study.run_nmpc_episode(args.scenario, variant, args.seed, noise=args.noise)
    noise = ", measurement noise" if args.noise else ""
    print(f"NMPC ({variant}), scenario {args.scenario}, seed {args.seed}{noise}\n")
    print(report.markdown_table(["metric", "value"], nmpc_study.episode_summary(run)))
    path = out / f"nmpc-{args.scenario}-{variant}-seed{args.seed}.png"
    nmpc_study.prediction_figure(run, path, title=f"NMPC ({variant}), {args.scenario}, seed {args.seed}")
    print(f"\nfigure written to {path}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    import torch

    from safectrl.studies.offline import train_policy

    torch.set_num_threads(args.threads)
    scenarios = list(pc.SCENARIOS) if args.scenario == "pooled" else [args.scenario]
    folder = train_policy(args.algo, scenarios, steps=args.steps, seed=args.seed, out=args.out,
                          episodes=args.episodes, dataset_seed=args.dataset_seed, root=args.root)
    print(f"checkpoint written to {folder} (model.safetensors, config.json, losses.csv, losses.png)")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from safectrl.rl.data import evaluation_seeds
    from safectrl.studies.offline import evaluation_report

    torch.set_num_threads(args.threads)
    scenarios = None if args.scenario is None else list(pc.SCENARIOS) if args.scenario == "all" else [args.scenario]
    seeds = evaluation_seeds(args.seeds)
    table = evaluation_report(args.policy, scenarios, seeds, baselines=args.baselines,
                              merge_seeds=args.merge_seeds, out=args.out,
                              episodes=args.episodes, dataset_seed=args.dataset_seed, root=args.root)
    print(f"\nevaluation seeds {seeds[0]}..{seeds[-1]}; cost = -sum of rewards over 100 h; final offsets: "
          f"means over the last 10 h\n")
    print(table)
    if args.out:
        print(f"\nwritten to {args.out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="safectrl",
        description="Process models, reference controllers, offline RL and safety layers for process control.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    commands: list[tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable]] = [
        ("study", "run the main study on every scenario (tables, CSV, figures)", _add_study, _cmd_study),
        ("data", "generate offline datasets (Minari) of randomly tuned PI control", _add_data, _cmd_data),
        ("pi-tuning", "derive the nominal PI tuning (SIMC + closed-loop choice)", _add_pi_tuning,
         _cmd_pi_tuning),
        ("nmpc", "run the NMPC reference controller for one episode (or its acceptance table)", _add_nmpc,
         _cmd_nmpc),
        ("train", "train an offline RL policy (BC or IQL) on the PI datasets", _add_train, _cmd_train),
        ("evaluate", "evaluate offline RL checkpoints in closed loop (optionally against PI)", _add_evaluate,
         _cmd_evaluate),
    ]
    for name, help_text, add, run in commands:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(func=run)
    return parser


def _add_study(p: argparse.ArgumentParser) -> None:
    p.add_argument("--preset", choices=["quick", "full"], default="quick",
                   help="quick: a few minutes on 2 cores; full: the published numbers (default: quick)")
    p.add_argument("--out", default=None,
                   help="output folder (default: runs/study-PRESET); an existing run there is resumed")
    p.add_argument("--force", action="store_true", help="rebuild cached artifacts and rerun every episode")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", metavar="tcp://HOST:PORT", default=None,
                       help="send tasks to this running Dask scheduler")
    where.add_argument("--workers", type=_positive_int, default=None,
                       help="start a local Dask cluster with this many worker processes")
    where.add_argument("--serial", action="store_true", help="run every task in this process (debugging)")


def _add_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", choices=[*pc.SCENARIOS, "all"], default="all")
    p.add_argument("--episodes", type=_positive_int, default=100, help="episodes per scenario (default 100)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="dataset seed (default 0)")
    p.add_argument("--root", default=None,
                   help="datasets folder (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)")
    p.add_argument("--force", action="store_true", help="regenerate even if the dataset exists")


def _add_pi_tuning(p: argparse.ArgumentParser) -> None:
    p.add_argument("--episodes", type=_positive_int, default=5,
                   help="tuning episodes per scenario and plant (default 5)")


def _add_nmpc(p: argparse.ArgumentParser) -> None:
    p.add_argument("--scenario", choices=list(pc.SCENARIOS), default="grade_up")
    p.add_argument("--mismatch", action="store_true",
                   help="predict with the mismatched model (UA -20 %%, dH +10 %%) instead of the plant's")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="env seed (default 0)")
    p.add_argument("--noise", action="store_true", help="measurement noise on A, P, T (SPEC §1 values)")
    p.add_argument("--out", default=None, help="output folder (default: runs/nmpc-TIMESTAMP)")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--acceptance", action="store_true",
                      help="instead of one episode: the NMPC variants on every scenario against PI data")
    mode.add_argument("--backoff-study", action="store_true",
                      help="instead of one episode: choose the T back-off on tuning-seed startups")
    p.add_argument("--episodes", type=_positive_int, default=10,
                   help="--acceptance, --backoff-study: seeds per scenario and setting (default 10)")
    p.add_argument("--data-episodes", type=_positive_int, default=100,
                   help="--acceptance: episodes of each PI dataset (default 100)")
    p.add_argument("--root", default=None,
                   help="--acceptance: datasets folder (default: $MINARI_DATASETS_PATH or Minari's)")


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--algo", choices=["bc", "iql"], required=True)
    p.add_argument("--scenario", choices=[*pc.SCENARIOS, "pooled"], default="startup",
                   help="dataset to train on; pooled: one policy on all three (default startup)")
    p.add_argument("--steps", type=_positive_int, default=None,
                   help="gradient steps (default: BC 20000, IQL 50000; a few minutes on one core)")
    p.add_argument("--seed", type=_nonnegative_int, default=0, help="training seed (default 0)")
    p.add_argument("--out", default=None, help="checkpoint folder (default runs/ALGO-SCENARIO-sSEED)")
    _add_dataset_options(p)
    p.add_argument("--threads", type=_positive_int, default=1, help="torch CPU threads (default 1)")


def _add_evaluate(p: argparse.ArgumentParser) -> None:
    p.add_argument("--policy", action="append", required=True, metavar="PATH",
                   help="checkpoint folder; repeat to compare several")
    p.add_argument("--scenario", choices=[*pc.SCENARIOS, "all"], default=None,
                   help="where to evaluate (default: the scenarios each policy was trained on)")
    p.add_argument("--seeds", type=_positive_int, default=10, help="evaluation episodes, seeds 0..N-1 (default 10)")
    p.add_argument("--baselines", action="store_true",
                   help="add the nominal PI and the dataset's median and best PI tunings")
    p.add_argument("--merge-seeds", action="store_true",
                   help="one row per algorithm and training set, pooling the episodes of all training seeds")
    p.add_argument("--out", default=None, help="also write episodes.csv, summary.md, trajectories.png here")
    _add_dataset_options(p)
    p.add_argument("--threads", type=_positive_int, default=1, help="torch CPU threads (default 1)")


def _add_dataset_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--episodes", type=_positive_int, default=100, help="episodes per PI dataset (default 100)")
    p.add_argument("--dataset-seed", type=_nonnegative_int, default=0, help="PI dataset seed (default 0)")
    p.add_argument("--root", default=None,
                   help="datasets folder (default: $MINARI_DATASETS_PATH or ~/.minari/datasets)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _version() -> str:
    import safectrl

    return safectrl.__version__


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
