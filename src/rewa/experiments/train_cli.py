"""`rewa train`, `rewa eval`, `rewa report`: train from a config, evaluate a run, compare runs."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rewa.cliutil import fraction
from rewa.errors import UsageError

TRAIN_EPILOG = """\
examples:
  rewa train --config configs/cifar10_resnet20_rewa.yaml --set data.data_dir=DIR
  rewa train --config configs/tiny.yaml --set schedule.epochs=2 --set method.options.K=3
  rewa train --config configs/cifar10_resnet20_rewa.yaml --set data.data_dir=DIR --resume
      (continue after a crash: same config and --set; output.* and eval.* may differ)

A run directory (default runs/<config name>) gets config.yaml, run.json, metrics.jsonl,
checkpoint.pt (+ checkpoint.prev.pt), and at the end eval.json, eval.md and PNG plots.
"""


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train a model from a YAML config (checkpoints, resume, final threshold sweep)",
        description="Train a model as described by a YAML config (see configs/), writing a run "
        "directory with the resolved config, metrics, atomic checkpoints every epoch, and at the "
        "end the threshold sweep of the last epoch's weights on the validation and test sets.",
        epilog=TRAIN_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--config", metavar="FILE", help="YAML config (default: built-in defaults)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set method.lr=0.05 or --set method.options.K=3 "
        "(repeatable; VALUE is parsed as YAML)",
    )
    p.add_argument(
        "--run-dir", metavar="DIR", help="run directory (default: output.runs_root/<config name>)"
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in the run directory from its newest good checkpoint (starts "
        "fresh if there is none); the config must match the stored one",
    )
    p.add_argument(
        "--force",
        action="store_true",
        help="start over in a run directory that already holds a run (deletes its files)",
    )
    p.add_argument("--seed", type=int, help="shortcut for --set train.seed=N")
    p.add_argument(
        "--target-sparsity",
        type=fraction,
        metavar="S",
        help="end training with a fraction S of the conv/linear weights at |x| <= "
        "sparsity.threshold (default 1e-3) by adjusting the method's strength (ReWA's weight "
        "decay, l1's lam) during training; shortcut for --set sparsity.target=S",
    )
    p.add_argument(
        "--init-from",
        metavar="RUN_OR_CHECKPOINT",
        help="start from the weights of a trained run (a run directory, a checkpoint, or a "
        "`rewa prune` output; same model) with a fresh optimizer state, e.g. sparsify a trained "
        "dense model; shortcut for --set train.init_from=PATH",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--print-config", action="store_true", help="print the resolved config, exit")
    p.set_defaults(func=_train)

    e = commands.add_parser(
        "eval",
        help="threshold sweep, per-layer sparsity and plots of a run's last checkpoint",
        description="Re-run the final evaluation of a run directory from its newest good "
        "checkpoint: the threshold sweep on the validation and test sets, the per-layer "
        "sparsity table and the plots (eval.json, eval.md, *.png in the run directory).",
    )
    e.add_argument("run_dir", metavar="RUN_DIR", help="a run directory written by `rewa train`")
    e.add_argument("--device", help="device to evaluate on (default: the run's train.device)")
    e.add_argument("--data-dir", help="dataset directory, if it moved since training")
    e.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    e.add_argument("--quiet", action="store_true", help="no progress bar")
    e.set_defaults(func=_eval)

    r = commands.add_parser(
        "report",
        help="one comparison table and accuracy-sparsity plot across runs",
        description="Compare finished runs: comparison.md / .csv / .json (method, options, final "
        "accuracy, exact sparsity, accuracy at 90/95/98/99% sparsity from each run's threshold "
        "sweep) and accuracy_sparsity.png.",
    )
    r.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories with eval.json")
    r.add_argument("--out", default="runs/report", metavar="DIR", help="output directory")
    r.add_argument(
        "--split", choices=("test", "val"), default="test", help="split of the accuracy columns"
    )
    r.set_defaults(func=_report)


def _train(args: argparse.Namespace) -> int:
    from rewa.train.config import load_config
    from rewa.train.pipeline import train
    from rewa.train.rundir import default_run_dir

    overrides = list(args.overrides)
    if args.seed is not None:
        overrides.append(f"train.seed={args.seed}")
    if args.target_sparsity is not None:
        overrides.append(f"sparsity.target={args.target_sparsity!r}")
    if args.init_from:
        overrides.append(f"train.init_from={args.init_from}")
    config = load_config(args.config, overrides)
    if args.print_config:
        print(config.to_yaml(), end="")
        return 0
    if args.config is None and not args.overrides:
        raise UsageError("give --config FILE (see configs/) or --set overrides")
    run_dir = Path(args.run_dir) if args.run_dir else default_run_dir(config, args.config)
    progress = False if args.quiet else None
    train(config, run_dir, resume=args.resume, force=args.force, progress=progress)
    return 0


def _eval(args: argparse.Namespace) -> int:
    from rewa.train.final import evaluate_run

    evaluate_run(
        args.run_dir,
        device=args.device,
        data_dir=args.data_dir,
        plots=not args.no_plots,
        progress=not args.quiet,
    )
    return 0


def _report(args: argparse.Namespace) -> int:
    from rewa.report.runs import compare_runs

    compare_runs(args.run_dirs, args.out, split=args.split)
    out = Path(args.out)
    print((out / "comparison.md").read_text(), end="")
    print(
        f"wrote {out}/comparison.md, comparison.csv, comparison.json, accuracy_sparsity.png",
        file=sys.stderr,
    )
    return 0
