"""The `uvim-keras` command line (also `python -m uvim_keras`).

Nothing heavy is imported before the arguments are parsed (`--help` and
`--version` answer without Keras or JAX); each command imports what it needs.

Exit status: 0 on success, 2 for a usage error (argparse's, or a bad
argument value the command checks before it starts), 1 when a command fails
at run time (a missing or unreadable file, an unknown preset, a checkpoint
that does not convert, ...), 130 when interrupted. Failures are reported on
one line on stderr; `--traceback` (or UVIM_KERAS_TRACEBACK=1) adds the
traceback.
"""

import argparse
import os
import sys

# The command line defaults to JAX (the project's default backend) unless the
# user chose one; this must happen before Keras is imported.
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

DISTRIBUTION = "uvim-keras"

_DEMO_TASKS = ("panoptic", "depth", "colorization")  # the synthetic tasks (data.synthetic)
_DEMO_OVERRIDES = ("size", "train_examples", "eval_examples", "stage1_epochs", "stage2_epochs",
                   "batch_size")


def version():
    """The installed distribution's version (importlib.metadata)."""
    from importlib import metadata

    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return "unknown (not installed)"


def _prepare_training(args, config, seeds):
    """Checks a training command's values (a bad one is a usage error, exit
    status 2) and, for long runs, keeps the step buffers mapped (host_memory)."""
    from uvim_keras.cli.demo import check_args
    from uvim_keras.cli.presets import CommandError

    try:
        for seed in seeds:
            check_args(args.task, seed, args.out, config)
    except ValueError as e:
        raise CommandError(str(e)) from None
    if not args.quick:
        from uvim_keras.runtime.host_memory import reuse_host_memory

        reuse_host_memory()


def _demo(args):
    import dataclasses

    from uvim_keras.cli.demo import demo_config, run_demo

    config = demo_config(args.task, args.quick)
    overrides = {k: getattr(args, k) for k in _DEMO_OVERRIDES if getattr(args, k) is not None}
    config = dataclasses.replace(config, **overrides)
    _prepare_training(args, config, [args.seed])
    run_demo(task=args.task, out=args.out, seed=args.seed, quick=args.quick, config=config,
             verbose=0 if args.quiet else 1)


def _ablate(args):
    from uvim_keras.cli.ablate import ablation_config, run_ablations

    config = ablation_config(args.task, args.quick)
    _prepare_training(args, config, args.seeds)
    run_ablations(task=args.task, out=args.out, seeds=args.seeds, quick=args.quick,
                  config=config, verbose=0 if args.quiet else 1)


def _training_arguments(parser, out, quick):
    """The options the training commands share: --task, --quick, --out, --quiet."""
    parser.add_argument("--task", default="panoptic", choices=_DEMO_TASKS,
                        help="the task to train (default: panoptic)")
    parser.add_argument("--quick", action="store_true", help=quick)
    parser.add_argument("--out", default=out, help=f"output folder (default: {out})")
    parser.add_argument("--quiet", action="store_true", help="no progress output")


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors reported on one line (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class _VersionAction(argparse.Action):
    """`--version`: looks the version up only when asked."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS,
                 help="print the package version and exit"):
        super().__init__(option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(f"{parser.prog} {version()}")
        parser.exit(0)


def build_parser():
    from uvim_keras.cli.presets import add_subcommands

    parser = _Parser(prog="uvim-keras", description="UViM on Keras 3.",
                     epilog="exit status: 0 done, 1 the command failed (one line on stderr), "
                     "2 usage error")
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument("--traceback", action="store_true",
                        help="on an error, print the traceback too (or set UVIM_KERAS_TRACEBACK=1)")
    parser.add_argument("--verbose", action="store_true",
                        help="keep TensorFlow's C++ start-up log lines (hidden under the JAX and "
                        "torch backends; or set UVIM_KERAS_VERBOSE=1)")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = sub.add_parser(
        "demo", help="train and evaluate a two-stage UViM on synthetic data (CPU, about 5 min)",
        description="Trains the paper's three models on procedurally generated data of one "
        "task, on the CPU: the base model without a guiding code (the 'no oracle' ablation), "
        "stage I (restricted oracle + vector quantizer + base model) and stage II (the "
        "guiding-code LM); then reports the task's metric of all three on a held-out split "
        "(no code < UViM < oracle code, as in the paper) and writes the report, figures and "
        "the trained models (.keras) to --out. About 5 minutes on 2 CPU cores (panoptic).",
    )
    _training_arguments(demo, "uvim_demo", "a smoke run of about a minute (tiny data and models)")
    demo.add_argument("--seed", type=int, default=0,
                      help="seed of the data, the initial weights and sampling (default: 0)")
    for name in _DEMO_OVERRIDES:
        demo.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                          help=f"override the recipe's {name}")
    demo.set_defaults(func=_demo)
    ablate = sub.add_parser(
        "ablate", help="the paper's ablations (Table 2) on synthetic data (CPU, an hour a seed)",
        description="Reproduces the columns of the paper's Table 2 on the demo's synthetic "
        "data: default, from_scratch (LM encoder not started from the no-code model), "
        "no_dropout (stage I without code dropout), no_oracle (the base model alone), "
        "no_autoregression (an LM that predicts all code words in one pass) and no_image "
        "(stage I without the image). Trains what each column needs per seed, evaluates "
        "stage I (oracle code) and stage II (UViM) on the held-out split and writes "
        "ablations.json, ablations.md (the table beside the paper's) and a figure to --out.",
    )
    _training_arguments(ablate, "uvim_ablations",
                        "a smoke run of a few minutes (tiny data and models)")
    ablate.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], metavar="SEED",
                        help="the seeds to run (default: 0 1 2)")
    ablate.set_defaults(func=_ablate)
    add_subcommands(sub)
    for command in sub.choices.values():  # also after the command (default: the parser's)
        command.add_argument("--traceback", action="store_true", default=argparse.SUPPRESS,
                             help="on an error, print the traceback too")
        command.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                             help="keep TensorFlow's C++ start-up log lines")
    return parser


# Exceptions whose message is written for the user (it names the file or
# argument): shown as they are. Anything else is shown with its type.
_EXPECTED = (ValueError, OSError, ImportError)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    prefix = f"uvim-keras {args.command}"
    try:
        if args.verbose:
            from uvim_keras.runtime.import_hooks import keep_tensorflow_logs

            keep_tensorflow_logs()
        from uvim_keras.cli.presets import CommandError

        try:
            args.func(args)
            sys.stdout.flush()  # here, so that a closed pipe is handled below
        except CommandError as e:  # a bad argument value: a usage error
            print(f"{prefix}: error: {_one_line(e)} (see {prefix} --help)", file=sys.stderr)
            return 2
    except KeyboardInterrupt:
        print(f"{prefix}: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # stdout closed early (`uvim-keras presets | head -1`)
        _silence_stdout()
        return 1
    except Exception as e:  # noqa: BLE001 (every failure ends in one line, exit status 1)
        message = _one_line(e)
        if not isinstance(e, _EXPECTED) and message != type(e).__name__:
            message = f"{type(e).__name__}: {message}"
        if args.traceback or os.environ.get("UVIM_KERAS_TRACEBACK", "") not in ("", "0"):
            import traceback

            traceback.print_exc()
        print(f"{prefix}: error: {message}", file=sys.stderr)
        return 1
    return 0


def _one_line(error):
    try:
        from uvim_keras.cli.presets import one_line
    except Exception:  # noqa: BLE001 (the error may be this import's)
        return " ".join(str(error).split()) or type(error).__name__
    return one_line(error)


def _silence_stdout():
    """After a broken pipe: later writes (and the flush at exit) go nowhere."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):
        pass


if __name__ == "__main__":
    sys.exit(main())
