"""UViM stage I: train the oracle + base model (the guiding code) on COCO
panoptic, NYU depth or ImageNet colorization with the paper's recipe.

    python examples/train_stage1.py --task panoptic --workdir runs/panoptic_stage1
    python examples/train_stage1.py --task depth --singlehost --workdir runs/depth1 \\
        --data-dir ~/tensorflow_datasets --distribution data
    python examples/train_stage1.py --task colorization --smoke --workdir /tmp/smoke1

Rerun the same command after a kill to resume. The trained model is written
to ``<workdir>/stage1.keras`` (the input of train_stage2.py --stage1).
See examples/README.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import uvim_examples_common as common  # noqa: E402


def build_model(cfg):
    from uvim_keras import UViMStage1

    return UViMStage1(cfg["module"].task(), seed=cfg["train"]["seed"], **cfg["model"])


def main(argv=None):
    args = common.base_parser(__doc__.splitlines()[0]).parse_args(argv)
    cfg = common.config_from_args(args, stage=1)
    if args.dry_run:
        return common.dry_run(cfg)
    common.setup(args, cfg)
    total, _, warmup = common.schedule_steps(cfg, warn=True)
    with common.mock_data(cfg):
        model = build_model(cfg)
        model.compile(optimizer=common.make_optimizer(cfg, total, warmup))
        size = cfg["model"]["input_size"]
        result = common.run(model, cfg, args, common.data_fn(cfg, args, size, size))
    path = os.path.join(args.workdir, "stage1.keras")
    model.save(path)
    print(f"saved {path}", flush=True)
    return result


if __name__ == "__main__":
    main()
