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
    if args.which == "acr":
        from safectrl.studies.acr_study import run_acr_study

        run_acr_study(args.preset, args.out, scheduler=args.scheduler, workers=args.workers, serial=args.serial)
        return 0
    from safectrl.studies.study import run_study

    run_study(args.preset, args.out, force=args.force, scheduler=args.scheduler, workers=args.workers,
              serial=args.serial)
    return 0


def _cmd_pi_tuning(args: argparse.Namespace) -> int:
    from safectrl.studies.pi_tuning import run_pi_tuning

    run_pi_tuning(episodes=args.episodes)
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
    ]
    for name, help_text, add, run in commands:
        p = sub.add_parser(name, help=help_text, description=help_text)
        add(p)
        p.set_defaults(func=run)
    return parser


def _add_study(p: argparse.ArgumentParser) -> None:
    p.add_argument("which", nargs="?", choices=["main", "acr"], default="main",
                   help="main: the comparative study (default); acr: RL-ACR vs SAC, SAC-pt and MPC (runs/acr-PRESET)")
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
