"""The paper's training recipes for the example scripts.

`get_config(task, stage, variant)` merges, in order:

1. the model sizes shared by the three tasks (the released big_vision
   configs: stage I a ViT-B-width oracle of depth 6 and base model of depth
   12, 256-word code from a 4096-word dictionary of 768-d codewords, 512 x 512
   inputs, 16 x 16 patches; stage II a ViT-L/16 encoder-decoder LM);
2. the task's recipe (`panoptic.py`, `depth.py`, `colorization.py`: batch
   size, epochs, learning rate, weight decay, warmup, gradient clipping,
   shuffle buffer, checkpoint/log periods), and its `:singlehost` variant;
3. for `variant="smoke"`: tiny sizes, 2 steps, batch 2, mock data.

Common to all recipes (big_vision's optimizer stack, see
`uvim_keras.optimizers`): `BigVisionAdafactor` (beta2_cap 0.95, momentum 0.9
in bfloat16, no update clipping, decoupled weight decay on kernels scaled by
the schedule), cosine schedule with linear warmup, seed 0; stage II
multiplies the encoder's learning rate by 0.1 (`UVIM_STAGE2_LR_MULTIPLIERS`)
and starts its encoder from the ImageNet-21k ViT-L/16 (`howto-i21k-L/16`).
"""

import copy
import importlib

TASKS = ("panoptic", "depth", "colorization")
VARIANTS = ("paper", "singlehost", "smoke")

STAGE1_MODEL = dict(
    input_size=512, patch_size=16, code_len=256, dict_size=4096, codeword_dim=768, width=768,
    oracle_num_layers=6, base_num_layers=12, num_heads=12, mlp_dim=3072, posemb="learn",
    bottleneck_resize=True, oracle_image_ctx=True, base_image_ctx=True, code_dropout="random",
    dict_momentum=0.995, commitment_weight=0.0,
)
# ViT-L/16 (big_vision's VTT 'large'); code_len and dict_size come from stage I.
LM_MODEL = dict(input_size=512, patch_size=16, width=1024, num_layers=24, num_heads=16,
                mlp_dim=4096, posemb="learn")
COMMON_TRAIN = dict(seed=0, encoder_lr_multiplier=0.1, mock_examples=None, steps=None)

SMOKE_STAGE1_MODEL = dict(input_size=16, patch_size=4, code_len=4, dict_size=8,
                          codeword_dim=8, width=16, oracle_num_layers=1, base_num_layers=1,
                          num_heads=2, mlp_dim=32)
# A different image resolution than stage I's, so the smoke run also feeds image_ctx.
SMOKE_LM_MODEL = dict(input_size=32, patch_size=8, width=16, num_layers=1, num_heads=2,
                      mlp_dim=32)
SMOKE_TRAIN = dict(batch_size=2, steps=2, epochs=None, shuffle_buffer=4, checkpoint_every=1,
                   keep_every_n_steps=None, log_every=1, warmup_steps=1, mock_examples=4)


def task_module(task):
    if task not in TASKS:
        raise ValueError(f"task={task!r}; expected one of {TASKS}.")
    return importlib.import_module(f"{__name__}.{task}")


def get_config(task, stage, variant="paper"):
    """{"task", "stage", "variant", "module", "model", "train"} for a run."""
    if stage not in (1, 2):
        raise ValueError(f"stage={stage!r}; expected 1 or 2.")
    if variant not in VARIANTS:
        raise ValueError(f"variant={variant!r}; expected one of {VARIANTS}.")
    module = task_module(task)
    train = {**COMMON_TRAIN, "dataset_kwargs": {},
             **copy.deepcopy(getattr(module, f"STAGE{stage}"))}
    if variant == "singlehost":
        train.update(getattr(module, f"STAGE{stage}_SINGLEHOST"))
    if stage == 1:
        model = dict(SMOKE_STAGE1_MODEL if variant == "smoke" else STAGE1_MODEL)
    else:
        model = dict(SMOKE_LM_MODEL if variant == "smoke" else LM_MODEL)
    if variant == "smoke":
        train.update(SMOKE_TRAIN)
        train["dataset_kwargs"].update(copy.deepcopy(module.SMOKE.get("dataset_kwargs", {})))
    return {"task": task, "stage": stage, "variant": variant, "module": module,
            "model": model, "train": train}
