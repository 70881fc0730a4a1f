"""Tiny models and procedurally generated batches for fast tests."""

import numpy as np

TINY = dict(
    input_size=16, patch_size=4, code_len=4, dict_size=8, codeword_dim=8, width=16,
    oracle_num_layers=1, base_num_layers=1, num_heads=2, mlp_dim=32,
)
TINY_LM = dict(
    input_size=16, patch_size=4, code_len=4, dict_size=8, width=16, num_layers=1,
    num_heads=2, mlp_dim=32,
)


def tiny_stage1(task=None, seed=0, **overrides):
    import keras

    from uvim_keras import PanopticTask, UViMStage1

    keras.utils.set_random_seed(seed)
    task = task or PanopticTask(num_classes=5, max_instances=4)
    return UViMStage1(task, **{**TINY, "seed": seed, **overrides})


def tiny_lm(seed=0, **overrides):
    import keras

    from uvim_keras import GuidingCodeLM

    keras.utils.set_random_seed(seed)
    return GuidingCodeLM(**{**TINY_LM, **overrides})


def randomize(model, seed, std=0.3):
    """Random normal values (std `std`) in every trainable float weight of
    `model` (zero-initialised heads included), from a numpy seed."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if "float" in str(v.dtype) and v.trainable:
            v.assign(rng.normal(0, std, tuple(v.shape)).astype("float32"))


def randomize_with_state(model, seed=1):
    """Random normal values (std 0.3) in every float weight of `model`,
    non-trainable ones included, and for a model with a quantizer, VQ usage
    counts in [0.5, 3): non-trivial weights (heads are zero-initialised) and
    VQ state, from a numpy seed."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        if "float" in str(v.dtype):
            v.assign(rng.normal(0, 0.3, v.shape).astype("float32"))
    if hasattr(model, "quantizer"):
        model.quantizer.counts.assign(
            rng.uniform(0.5, 3, model.quantizer.counts.shape).astype("float32"))


def panoptic_batch(n=4, size=16, num_classes=5, max_instances=4, seed=0):
    """Images whose colour tells the label: blocks of class c, instance i."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n, size, size, 2), "int32")
    images = np.zeros((n, size, size, 3), "float32")
    palette = rng.uniform(-1, 1, (num_classes, 3)).astype("float32")
    for b in range(n):
        half = size // 2
        for q, (y, x) in enumerate([(0, 0), (0, half), (half, 0), (half, half)]):
            c = rng.integers(1, num_classes)
            labels[b, y:y + half, x:x + half, 0] = c
            labels[b, y:y + half, x:x + half, 1] = q % max_instances
            images[b, y:y + half, x:x + half] = palette[c]
    images += rng.normal(0, 0.05, images.shape).astype("float32")
    return {"image": np.clip(images, -1, 1), "labels": labels}
