"""NYU depth v2: big_vision's `vqvae_nyu_depth.py` (stage I) and
`train_nyu_depth_pretrained.py` (stage II)."""

DATASET = "nyu_depth_v2"
TRAIN_SPLIT = "train"
HOLDOUT_SPLIT = "validation"          # the 654 evaluation frames (with the eval crop)
TRAIN_EXAMPLES = 47_584


def task():
    from uvim_keras import DepthTask

    return DepthTask(bins=256, min_depth=1e-3, max_depth=10.0)


def dataset(split, **kwargs):
    from uvim_keras.data import nyu_depth_dataset

    return nyu_depth_dataset(split, **kwargs)


STAGE1 = dict(
    batch_size=1024, epochs=200, lr=1e-3, wd=1e-5, warmup_steps=4_000, grad_clip_norm=1.0,
    shuffle_buffer=25_000, checkpoint_every=1_000, keep_every_n_steps=20_000, log_every=50,
)
STAGE1_SINGLEHOST = dict(batch_size=128, epochs=50)

STAGE2 = dict(
    batch_size=512, epochs=50, lr=1e-3, wd=1e-6, warmup_steps=4_000, grad_clip_norm=None,
    shuffle_buffer=50_000, checkpoint_every=1_000, keep_every_n_steps=5_000, log_every=50,
)
STAGE2_SINGLEHOST = dict(batch_size=32, epochs=20)

SMOKE = {}
