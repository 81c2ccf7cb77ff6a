"""The ``safectrl`` command line: ``safectrl <command> --help`` for each command."""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace
from typing import Callable, Sequence

from safectrl.models import polycstr as pc
from safectrl.studies import options


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
    from safectrl.studies import study

    try:
        study.run(options.from_args(study.StudyConfig, args))
    except study.ControllerSpecError as exc:
        print(f"safectrl study: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_acr(args: argparse.Namespace) -> int:
    from safectrl.studies import acr_study

    acr_study.run(options.from_args(acr_study.ACRStudyConfig, args))
    return 0


def _cmd_acr_report(args: argparse.Namespace) -> int:
    from safectrl.studies import acr_study

    try:
        acr_study.run_report(options.from_args(acr_study.ACRReportConfig, args))
    except FileNotFoundError as exc:
        print(f"safectrl study acr report: {exc}", file=sys.stderr)
        return 1
    return 0


def _cmd_pi_tuning(args: argparse.Namespace) -> int:
    from safectrl.studies.pi_tuning import run_pi_tuning

    run_pi_tuning(episodes=args.episodes)
    return 0


def _cmd_nmpc_episode(args: argparse.Namespace) -> int:
    from safectrl.studies import nmpc_study, report

    cfg = options.from_args(nmpc_study.EpisodeConfig, args)
    run, path = nmpc_study.run(cfg)
    variant = "mismatched" if cfg.mismatch else "oracle"
    noise = ", measurement noise" if cfg.noise else ""
    print(f"NMPC ({variant}), scenario {cfg.scenario}, seed {cfg.seed}{noise}\n")
    print(report.markdown_table(["metric", "value"], nmpc_study.episode_summary(run)))
    print(f"\nfigure written to {path}")
    return 0


def _cmd_nmpc_acceptance(args: argparse.Namespace) -> int:
    from safectrl.studies import nmpc_study

    rows, path = nmpc_study.run_acceptance(options.from_args(nmpc_study.AcceptanceConfig, args))
    print(nmpc_study.acceptance_table(rows))
    print(f"\nwritten to {path}")
    return 0 if all(r.passes() for r in rows if r.variant == "oracle") else 1


def _cmd_nmpc_backoff(args: argparse.Namespace) -> int:
    from safectrl.studies import nmpc_study, report

    chosen, rows, out = nmpc_study.run_backoff(options.from_args(nmpc_study.BackoffConfig, args))
    print(report.markdown_table(nmpc_study.BACKOFF_HEADERS, rows))
    margin = nmpc_study.BACKOFF_MARGIN
    print(f"\nchosen back-off: {chosen:g} K (smallest with peak T <= T_max - {margin:g} K); written to {out}")
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

    from safectrl.rl.data import evaluation_seeds, tuning_seeds
    from safectrl.studies.offline import evaluation_report

    torch.set_num_threads(args.threads)
    scenarios = None if args.scenario is None else list(pc.SCENARIOS) if args.scenario == "all" else [args.scenario]
    seeds = tuning_seeds(args.seeds) if args.tuning else evaluation_seeds(args.seeds)
    table = evaluation_report(args.policy, scenarios, seeds, baselines=args.baselines,
                              merge_seeds=args.merge_seeds, out=args.out,
                              episodes=args.episodes, dataset_seed=args.dataset_seed, root=args.root)
    kind = "tuning" if args.tuning else "evaluation"
    print(f"\n{kind} seeds {seeds[0]}..{seeds[-1]}; cost = -sum of rewards over 100 h; final offsets: "
          f"means over the last 10 h\n")
    print(table)
    if args.out:
        print(f"\nwritten to {args.out}")
    return 0


def _cmd_safety(args: argparse.Namespace) -> int:
    from safectrl.studies import report
    from safectrl.studies import safety_layer as sl

    sl.set_torch_threads(1)
    scenarios = list(pc.SCENARIOS) if getattr(args, "scenario", "all") == "all" else [args.scenario]
    if args.safety_command == "train":
        default = sl.SafetyLayerConfig()
        cfg = sl.SafetyLayerConfig(
            target=replace(default.target, horizon=args.horizon, penalty=args.penalty),
            train=replace(default.train, epochs=args.epochs, seed=args.train_seed),
        )
        rows = []
        for scenario in scenarios:
            _, rep = sl.train_for_scenario(scenario, sl.checkpoint_dir(args.out, scenario), args.episodes,
                                           args.seed, args.root, cfg)
            rows.append([scenario, rep.extra["train_episodes"], rep.extra["val_episodes"],
                         rep.extra["val_transitions"], rep.target_std, rep.val_rmse_best, rep.val_mae_best,
                         rep.val_r2_best, rep.best_epoch])
        print(f"\ncost models (H = {args.horizon}) written to {args.out}\n")
        print(report.markdown_table(["scenario", "train episodes", "val episodes", "val transitions",
                                     "target std", "val RMSE", "val MAE", "val R²", "best epoch"], rows))
    elif args.safety_command == "eval":
        settings = sl.FilterSettings(trust=args.trust, rate=tuple(args.rate) if args.rate else None)
        out = args.out or f"runs/safety-eval-{time.strftime('%Y%m%d-%H%M%S')}"
        print(sl.evaluate(args.models, scenarios, args.policy, args.methods, args.episodes, settings, out))
        print(f"\nwritten to {out}")
    elif args.safety_command == "figure":
        settings = sl.FilterSettings(trust=args.trust)
        pts = sl.figure_for_episode(args.models, args.scenario, args.policy, args.seed, args.step, args.out,
                                    settings, root=args.root)
        print(f"policy action {pts['policy']}, GD result {pts['gd_path'][-1]} after {len(pts['gd_path']) - 1} "
              f"steps, exact optimum {pts['qp_optimum']} (λ = {args.trust:g}), LP optimum {pts['lp_optimum']}")
        print(f"written to {args.out}")
    else:  # tune
        rows = sl.tune(args.horizons, args.trusts, args.episodes, root=args.root)
        print(report.markdown_table(sl.tune_headers(), rows))
    return 0


def _command(sub, name: str, help_text: str, run: Callable, config: type | None = None,
             add: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.ArgumentParser:
    """A (sub)command whose options are the fields of ``config`` (or added by ``add``)."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    if config is not None:
        options.add_options(p, config)
    if add is not None:
        add(p)
    p.set_defaults(func=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    from safectrl.studies import acr_study, nmpc_study, study

    parser = argparse.ArgumentParser(
        prog="safectrl",
        description="Process models, reference controllers, offline RL and safety layers for process control.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    p = _command(sub, "study", "run the main study on every scenario (tables, CSV, figures); `study acr`: RL-ACR",
                 _cmd_study, study.StudyConfig)
    studies = p.add_subparsers(dest="study", metavar="STUDY")  # none: the comparative study
    acr = _command(studies, "acr", "RL-ACR vs SAC, SAC-pt and MPC on the RL-ACR tasks (runs/acr-PRESET)", _cmd_acr,
                   acr_study.ACRStudyConfig)
    _command(acr.add_subparsers(dest="acr_command", metavar="SUBCOMMAND"), "report",
             "write the summary from the tasks finished so far in --out, run nothing", _cmd_acr_report,
             acr_study.ACRReportConfig)
    _command(sub, "data", "generate offline datasets (Minari) of randomly tuned PI control", _cmd_data,
             add=_add_data)
    _command(sub, "pi-tuning", "derive the nominal PI tuning (SIMC + closed-loop choice)", _cmd_pi_tuning,
             add=_add_pi_tuning)
    p = sub.add_parser("nmpc", help="the NMPC reference controller: one episode, its acceptance table, the back-off",
                       description="the NMPC reference controller")
    nmpc = p.add_subparsers(dest="nmpc_command", required=True, metavar="SUBCOMMAND")
    _command(nmpc, "episode", "one closed-loop episode: summary table and a figure with the predicted horizons",
             _cmd_nmpc_episode, nmpc_study.EpisodeConfig)
    _command(nmpc, "acceptance", "the NMPC variants on every scenario against the best PI of the datasets",
             _cmd_nmpc_acceptance, nmpc_study.AcceptanceConfig)
    _command(nmpc, "backoff-study", "choose the T back-off on tuning-seed startups", _cmd_nmpc_backoff,
             nmpc_study.BackoffConfig)
    _command(sub, "train", "train an offline RL policy (BC or IQL) on the PI datasets", _cmd_train, add=_add_train)
    _command(sub, "evaluate", "evaluate offline RL checkpoints in closed loop (optionally against PI)",
             _cmd_evaluate, add=_add_evaluate)
    _command(sub, "safety", "PICNN safety layer: train cost models, evaluate filtered policies, draw the cost "
             "surface", _cmd_safety, add=_add_safety)
    return parser


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
    p.add_argument("--tuning", action="store_true",
                   help="run on the tuning seeds 500000..500000+N-1 instead, for choices made while developing "
                        "(the evaluation seeds are kept for the final report)")
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


#: Policies ``safectrl safety eval`` can wrap (the keys of ``safectrl.studies.safety_layer.POLICIES``; listed
#: here so that building the parser does not import torch).
SAFETY_POLICIES = ("pi-nominal", "pi-dataset")


def _add_safety(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="safety_command", required=True, metavar="SUBCOMMAND")
    models_help = "folder of cost models, one sub-folder per scenario (default runs/safety-models)"
    train = sub.add_parser("train", help="train the PICNN cost model of each scenario on its PI dataset")
    train.add_argument("--scenario", choices=[*pc.SCENARIOS, "all"], default="all")
    train.add_argument("--episodes", type=_positive_int, default=100, help="dataset episodes (default 100)")
    train.add_argument("--seed", type=_nonnegative_int, default=0, help="dataset seed (default 0)")
    train.add_argument("--root", default=None, help="Minari datasets folder")
    train.add_argument("--out", default="runs/safety-models", help=models_help)
    train.add_argument("--horizon", type=_positive_int, default=20, help="H of the cost-to-go (default 20)")
    train.add_argument("--penalty", type=float, default=100.0, help="cost per K above T_max (default 100)")
    train.add_argument("--epochs", type=_positive_int, default=100, help="training epochs (default 100)")
    train.add_argument("--train-seed", type=_nonnegative_int, default=0, help="initialisation seed (default 0)")
    ev = sub.add_parser("eval", help="closed loop on evaluation seeds: each policy raw and filtered")
    ev.add_argument("--models", default="runs/safety-models", help=models_help)
    ev.add_argument("--scenario", choices=[*pc.SCENARIOS, "all"], default="all")
    ev.add_argument("--policy", nargs="+", choices=SAFETY_POLICIES, default=list(SAFETY_POLICIES))
    ev.add_argument("--methods", nargs="+", choices=["gd", "exact"], default=["gd", "exact"])
    ev.add_argument("--episodes", type=_positive_int, default=5, help="evaluation seeds 0.. (default 5)")
    ev.add_argument("--trust", type=float, default=0.3, help="λ of the trust term (default 0.3)")
    ev.add_argument("--rate", type=float, nargs=2, default=None, metavar=("DF_I", "DT_C"),
                    help="optional rate limit per interval, kg/h and K")
    ev.add_argument("--out", default=None, help="output folder (default runs/safety-eval-TIMESTAMP)")
    fig = sub.add_parser("figure", help="the cost surface over the input box at one state of an episode")
    fig.add_argument("--models", default="runs/safety-models", help=models_help)
    fig.add_argument("--scenario", choices=list(pc.SCENARIOS), default="grade_down")
    fig.add_argument("--policy", choices=SAFETY_POLICIES, default="pi-dataset")
    fig.add_argument("--seed", type=_nonnegative_int, default=0, help="evaluation seed of the episode")
    fig.add_argument("--step", type=_nonnegative_int, default=20, help="interval of the episode (default 20)")
    fig.add_argument("--trust", type=float, default=0.3, help="λ of the trust term (default 0.3)")
    fig.add_argument("--root", default=None, help="Minari datasets folder (for the dataset's actions)")
    fig.add_argument("--out", default="cost_surface.png", help="output file (PNG or PDF)")
    tune = sub.add_parser("tune", help="choose H and λ by closed-loop cost on tuning seeds")
    tune.add_argument("--horizons", type=_positive_int, nargs="+", default=[1, 3, 10, 20, 30, 40, 60])
    tune.add_argument("--trusts", type=float, nargs="+", default=[0.1, 0.3, 1.0, 3.0])
    tune.add_argument("--episodes", type=_positive_int, default=8, help="tuning seeds per scenario (default 8)")
    tune.add_argument("--root", default=None, help="Minari datasets folder")


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
