"""The `uvim-keras` command line (also `python -m uvim_keras`)."""

import argparse
import os
import sys

# The command line defaults to JAX (the project's default backend) unless the
# user chose one; this must happen before Keras is imported.
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


_DEMO_OVERRIDES = ("size", "train_examples", "eval_examples", "stage1_epochs", "stage2_epochs",
                   "batch_size")


def _demo(args):
    import dataclasses

    from uvim_keras.demo import demo_config, run_demo

    config = demo_config(args.task, args.quick)
    overrides = {k: getattr(args, k) for k in _DEMO_OVERRIDES if getattr(args, k) is not None}
    run_demo(task=args.task, out=args.out, seed=args.seed, quick=args.quick,
             config=dataclasses.replace(config, **overrides), verbose=0 if args.quiet else 1)


class _Parser(argparse.ArgumentParser):
    """argparse, with usage errors reported on one line (exit status 2)."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser():
    from uvim_keras.cli_presets import add_subcommands

    parser = _Parser(prog="uvim-keras", description="UViM on Keras 3.")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    demo = sub.add_parser(
        "demo", help="train and evaluate a two-stage UViM on synthetic data (CPU, minutes)"
    )
    demo.add_argument("--task", default="panoptic",
                      help="panoptic (default), depth or colorization")
    demo.add_argument("--quick", action="store_true", help="a smoke run of about a minute")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--out", default="uvim_demo", help="output folder (default: uvim_demo)")
    demo.add_argument("--quiet", action="store_true", help="no progress output")
    for name in _DEMO_OVERRIDES:
        demo.add_argument("--" + name.replace("_", "-"), type=int, default=None,
                          help=f"override the recipe's {name}")
    demo.set_defaults(func=_demo)
    add_subcommands(sub)
    return parser


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    from uvim_keras.cli_presets import one_line

    try:
        args.func(args)
    except (ValueError, OSError, ImportError) as e:
        print(f"uvim-keras {args.command}: error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"uvim-keras {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
