"""The ``safectrl`` command line: ``safectrl <command> --help`` for each command.

Every command is a study's config dataclass turned into options (:mod:`safectrl.studies.options`), so a
default is written once, in the config; a handler here only prints what the study's ``run`` returns.

A user's mistake (a bad value, a missing file, a folder that belongs to another run, an unreachable
scheduler) ends the command with one line on stderr, ``safectrl <command>: <message>``, and exit status 2 for
a bad value or 1 otherwise — no traceback; ``SAFECTRL_DEBUG=1`` re-raises to show it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Callable, Sequence

from safectrl.studies import options


def _cmd_data(args: argparse.Namespace) -> int:
    from safectrl.rl import data
    from safectrl.studies import datasets, report

    cfg = options.from_args(datasets.DataConfig, args)
    try:
        summaries = datasets.run(cfg)
    except data.DatasetError as exc:
        print(f"safectrl data: {exc}", file=sys.stderr)
        return 2
    rows = [[ds_id, s.episodes, s.with_violations, s.runaways, s.final_abs_eP_median, s.final_abs_eP_p90,
             s.peak_T_p90, s.cost_median, s.cost_best] for ds_id, s in summaries.items()]
    with data.datasets_root(cfg.root) as root:
        print(f"\nMinari datasets under {root}\n")
    print(report.markdown_table(
        ["dataset", "episodes", "with violations", "runaways", "final |e_P| median", "final |e_P| p90",
         "peak T p90 K", "cost median", "cost best"], rows))
    return 0


def _cmd_study(args: argparse.Namespace) -> int:
    from safectrl.studies import study

    study.run(options.from_args(study.StudyConfig, args))
    return 0


def _cmd_acr(args: argparse.Namespace) -> int:
    from safectrl.studies import acr_study

    acr_study.run(options.from_args(acr_study.ACRStudyConfig, args))
    return 0


def _cmd_acr_report(args: argparse.Namespace) -> int:
    from safectrl.studies import acr_study

    acr_study.run_report(options.from_args(acr_study.ACRReportConfig, args))
    return 0


def _cmd_pi_tuning(args: argparse.Namespace) -> int:
    from safectrl.studies import pi_tuning

    pi_tuning.run(options.from_args(pi_tuning.PITuningConfig, args))
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


def _cmd_psf_backoff(args: argparse.Namespace) -> int:
    from safectrl.studies import psf_study, report

    chosen, rows, out = psf_study.run_backoff(options.from_args(psf_study.PSFBackoffConfig, args))
    print(report.markdown_table(psf_study.HEADERS, rows))
    print(f"\nchosen back-off: {chosen:g} K (smallest with peak T <= T_max - {psf_study.BACKOFF_MARGIN:g} K); "
          f"written to {out}")
    return 0


def _cmd_psf_tightening(args: argparse.Namespace) -> int:
    from safectrl.studies import psf_study, report

    chosen, rows, out = psf_study.run_tightening(options.from_args(psf_study.PSFTighteningConfig, args))
    print(report.markdown_table(psf_study.TIGHTENING_HEADERS, rows))
    print(f"\n{psf_study.CHOICE_RULE}: {chosen:g}; written to {out}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from safectrl.rl.data import DatasetError
    from safectrl.studies import offline

    try:
        folder = offline.run_train(options.from_args(offline.TrainConfig, args))
    except DatasetError as exc:
        print(f"safectrl train: {exc}", file=sys.stderr)
        return 2
    print(f"checkpoint written to {folder} (model.safetensors, config.json, losses.csv, losses.png)")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from safectrl.studies import offline

    cfg = options.from_args(offline.EvaluateConfig, args)
    table, seeds = offline.run_evaluate(cfg)
    kind = "tuning" if cfg.tuning else "evaluation"
    print(f"\n{kind} seeds {seeds[0]}..{seeds[-1]}; cost = -sum of rewards over 100 h; final offsets: "
          f"means over the last 10 h\n")
    print(table)
    if cfg.out:
        print(f"\nwritten to {cfg.out}")
    return 0


def _cmd_safety_train(args: argparse.Namespace) -> int:
    from safectrl.studies import report
    from safectrl.studies import safety_layer as sl

    cfg = options.from_args(sl.TrainConfig, args)
    rows = [[scenario, rep.extra["train_episodes"], rep.extra["val_episodes"], rep.extra["val_transitions"],
             rep.target_std, rep.val_rmse_best, rep.val_mae_best, rep.val_r2_best, rep.best_epoch]
            for scenario, rep in sl.run_train(cfg).items()]
    print(f"\ncost models (H = {cfg.horizon}) written to {cfg.out}\n")
    print(report.markdown_table(["scenario", "train episodes", "val episodes", "val transitions",
                                 "target std", "val RMSE", "val MAE", "val R²", "best epoch"], rows))
    return 0


def _cmd_safety_eval(args: argparse.Namespace) -> int:
    from safectrl.studies import safety_layer as sl

    table, out = sl.run_eval(options.from_args(sl.EvalConfig, args))
    print(table)
    print(f"\nwritten to {out}")
    return 0


def _cmd_safety_figure(args: argparse.Namespace) -> int:
    from safectrl.studies import safety_layer as sl

    cfg = options.from_args(sl.FigureConfig, args)
    pts = sl.run_figure(cfg)
    print(f"policy action {pts['policy']}, GD result {pts['gd_path'][-1]} after {len(pts['gd_path']) - 1} "
          f"steps, exact optimum {pts['qp_optimum']} (λ = {cfg.trust:g}), LP optimum {pts['lp_optimum']}")
    print(f"written to {cfg.out}")
    return 0


def _cmd_safety_tune(args: argparse.Namespace) -> int:
    from safectrl.studies import report
    from safectrl.studies import safety_layer as sl

    rows = sl.run_tune(options.from_args(sl.TuneConfig, args))
    print(report.markdown_table(sl.tune_headers(), rows))
    return 0


def _command(sub, name: str, help_text: str, run: Callable[[argparse.Namespace], int],
             config: type) -> argparse.ArgumentParser:
    """A (sub)command whose options are the fields of the study's ``config`` dataclass."""
    p = sub.add_parser(name, help=help_text, description=help_text)
    options.add_options(p, config)
    p.set_defaults(func=run)
    return p


def build_parser() -> argparse.ArgumentParser:
    from safectrl.studies import acr_study, datasets, nmpc_study, offline, pi_tuning, psf_study, safety_layer, study

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
             datasets.DataConfig)
    _command(sub, "pi-tuning", "derive the nominal PI tuning (SIMC + closed-loop choice)", _cmd_pi_tuning,
             pi_tuning.PITuningConfig)
    p = sub.add_parser("nmpc", help="the NMPC reference controller: one episode, its acceptance table, the back-off",
                       description="the NMPC reference controller")
    nmpc = p.add_subparsers(dest="nmpc_command", required=True, metavar="SUBCOMMAND")
    _command(nmpc, "episode", "one closed-loop episode: summary table and a figure with the predicted horizons",
             _cmd_nmpc_episode, nmpc_study.EpisodeConfig)
    _command(nmpc, "acceptance", "the NMPC variants on every scenario against the best PI of the datasets",
             _cmd_nmpc_acceptance, nmpc_study.AcceptanceConfig)
    _command(nmpc, "backoff-study", "choose the T back-off on tuning-seed startups", _cmd_nmpc_backoff,
             nmpc_study.BackoffConfig)
    _command(sub, "train", "train an offline RL policy (BC or IQL) on the PI datasets", _cmd_train,
             offline.TrainConfig)
    _command(sub, "evaluate", "evaluate offline RL checkpoints in closed loop (optionally against PI)",
             _cmd_evaluate, offline.EvaluateConfig)
    help_text = "PICNN safety layer: train cost models, evaluate filtered policies, draw the cost surface, tune"
    p = sub.add_parser("safety", help=help_text, description=help_text)
    safety = p.add_subparsers(dest="safety_command", required=True, metavar="SUBCOMMAND")
    _command(safety, "train", "train the PICNN cost model of each scenario on its PI dataset", _cmd_safety_train,
             safety_layer.TrainConfig)
    _command(safety, "eval", "closed loop on evaluation seeds: each policy raw and filtered", _cmd_safety_eval,
             safety_layer.EvalConfig)
    _command(safety, "figure", "the cost surface over the input box at one state of an episode",
             _cmd_safety_figure, safety_layer.FigureConfig)
    _command(safety, "tune", "choose H and λ by closed-loop cost on tuning seeds", _cmd_safety_tune,
             safety_layer.TuneConfig)
    _command(safety, "psf-backoff-study", "choose the predictive safety filter's T back-off on tuning seeds",
             _cmd_psf_backoff, psf_study.PSFBackoffConfig)
    _command(safety, "psf-tightening-study", "any task's filter behind adversarial policies, for multiples of its "
             "tightening, on tuning seeds", _cmd_psf_tightening, psf_study.PSFTighteningConfig)
    return parser


def _version() -> str:
    import safectrl

    return safectrl.__version__


def _user_errors() -> tuple[tuple[type[BaseException], ...], tuple[type[BaseException], ...]]:
    """(usage errors: exit 2, other user errors: exit 1) — what a user can fix from the message alone."""
    from safectrl.common.checkpoint import CheckpointError
    from safectrl.studies.executor import CorruptTaskFile, SchedulerUnreachable

    return (ValueError, TypeError), (CheckpointError, CorruptTaskFile, SchedulerUnreachable, FileNotFoundError,
                                     NotADirectoryError, IsADirectoryError, PermissionError, FileExistsError)


def _command_name(args: argparse.Namespace) -> str:
    words = [args.command]
    for attr in ("study", "acr_command", "nmpc_command", "safety_command"):
        if getattr(args, attr, None):
            words.append(getattr(args, attr))
    return " ".join(words)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    usage, other = _user_errors()
    try:
        return int(args.func(args) or 0)
    except (*other, *usage) as exc:  # `other` first: CheckpointError and CorruptTaskFile are ValueErrors
        if os.environ.get("SAFECTRL_DEBUG") == "1":
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"safectrl {_command_name(args)}: {message}", file=sys.stderr)
        return 1 if isinstance(exc, other) else 2


if __name__ == "__main__":
    sys.exit(main())
