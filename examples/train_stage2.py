"""UViM stage II: train the guiding-code LM (ViT-L/16 encoder-decoder) on the
codes of a frozen stage-I model, with the paper's recipe (encoder learning
rate x 0.1, encoder from an ImageNet-21k ViT).

    python examples/train_stage2.py --task panoptic --stage1 runs/panoptic_stage1/stage1.keras \\
        --encoder-init augreg_i21k_L16.npz --workdir runs/panoptic_stage2
    python examples/train_stage2.py --task depth --stage1 depth_nyu_stage1 --singlehost ...
    python examples/train_stage2.py --task colorization --smoke --workdir /tmp/smoke2

The codes are computed in the training step by the frozen oracle
(`uvim_keras.data.Stage2Model`), so augmentations stay fresh. Rerun the same
command after a kill to resume. Writes ``<workdir>/lm.keras`` and the
complete model ``<workdir>/uvim.keras``. See examples/README.md.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import uvim_examples_common as common  # noqa: E402


def load_stage1(spec, cfg):
    """A frozen stage-I model: a .keras file, a preset (name or directory), or, in a
    smoke run without --stage1, a tiny untrained one."""
    import keras

    from uvim_keras import UViMStage1

    if spec is None:
        if cfg["variant"] != "smoke":
            raise SystemExit("--stage1 is required: a stage-I .keras file (train_stage1.py) or "
                             f"a preset, e.g. one of {sorted(UViMStage1.presets)}.")
        return UViMStage1(cfg["module"].task(), seed=cfg["train"]["seed"],
                          **common.configs.SMOKE_STAGE1_MODEL)
    if spec.endswith(".keras"):
        stage1 = keras.saving.load_model(spec, compile=False)
    else:
        stage1 = UViMStage1.from_preset(spec)
    if not isinstance(stage1, UViMStage1):
        raise SystemExit(f"--stage1 {spec}: a {type(stage1).__name__}, not a UViMStage1.")
    if stage1.task.name != cfg["module"].task().name:
        raise SystemExit(f"--stage1 {spec} was trained for the {stage1.task.name} task, not "
                         f"{cfg['task']}.")
    return stage1


def build_model(cfg, stage1, encoder_init=None):
    from uvim_keras import GuidingCodeLM
    from uvim_keras.data import Stage2Model

    # An explicit name: the encoder's learning-rate multiplier matches variable
    # paths 'guiding_code_lm/...' (an automatic name may get a suffix).
    lm = GuidingCodeLM(code_len=stage1.code_len, dict_size=stage1.dict_size,
                       name="guiding_code_lm", **cfg["model"])
    if encoder_init:
        from uvim_keras.checkpoints.pretrained_vit import init_lm_encoder_from_vit

        init_lm_encoder_from_vit(lm, encoder_init)
    return Stage2Model(lm, stage1)


def main(argv=None):
    parser = common.base_parser(__doc__.splitlines()[0])
    parser.add_argument("--stage1", default=None,
                        help="the frozen stage-I model: a .keras file or a preset")
    parser.add_argument("--encoder-init", default=None,
                        help="ViT .npz (big_vision/AugReg, e.g. the ImageNet-21k ViT-L/16 "
                             "'howto-i21k-L/16' of the paper) to start the LM encoder from")
    args = parser.parse_args(argv)
    cfg = common.config_from_args(args, stage=2)
    if args.dry_run:
        return common.dry_run(cfg, {"stage1": args.stage1, "encoder_init": args.encoder_init})
    common.setup(args, cfg)
    total, _, warmup = common.schedule_steps(cfg, warn=True)

    from uvim_keras import UViM
    from uvim_keras.optimizers import UVIM_STAGE2_LR_MULTIPLIERS

    with common.mock_data(cfg):
        stage1 = load_stage1(args.stage1, cfg)
        model = build_model(cfg, stage1, args.encoder_init)
        optimizer = common.make_optimizer(
            cfg, total, warmup,
            lr_multipliers=[(p, cfg["train"]["encoder_lr_multiplier"])
                            for p, _ in UVIM_STAGE2_LR_MULTIPLIERS])
        scaled = [v for v in model.lm.trainable_variables if optimizer.lr_multiplier(v) != 1.0]
        if not scaled:
            raise SystemExit("the encoder learning-rate multiplier matched no LM variable.")
        print(f"encoder learning rate x {cfg['train']['encoder_lr_multiplier']} on "
              f"{len(scaled)} of {len(model.lm.trainable_variables)} LM variables", flush=True)
        model.compile(optimizer=optimizer)
        size, label_size = cfg["model"]["input_size"], stage1.input_size
        result = common.run(model, cfg, args, common.data_fn(cfg, args, size, label_size),
                            extra={"stage1": args.stage1, "encoder_init": args.encoder_init})
    lm_path = os.path.join(args.workdir, "lm.keras")
    model.lm.save(lm_path)
    uvim_path = os.path.join(args.workdir, "uvim.keras")
    UViM.from_stage1(model.lm, stage1).save(uvim_path)
    print(f"saved {lm_path} and {uvim_path}", flush=True)
    return result


if __name__ == "__main__":
    main()
