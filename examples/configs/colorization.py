"""ImageNet colorization: big_vision's `vqvae_imagenet2012_colorization.py`
(stage I) and `train_imagenet2012_colorization_pretrained.py` (stage II)."""

DATASET = "imagenet2012"
TRAIN_SPLIT = "train[4096:]"
HOLDOUT_SPLIT = "train[:4096]"
TRAIN_EXAMPLES = 1_281_167 - 4_096    # = 1_277_071


def task():
    from uvim_keras import ColorizationTask

    return ColorizationTask()


def dataset(split, **kwargs):
    from uvim_keras.data import imagenet_colorization_dataset

    return imagenet_colorization_dataset(split, **kwargs)


STAGE1 = dict(
    batch_size=1024, epochs=100, lr=4e-4, wd=4e-5, warmup_steps=4_000, grad_clip_norm=1.0,
    shuffle_buffer=25_000, checkpoint_every=1_000, keep_every_n_steps=20_000, log_every=50,
)
STAGE1_SINGLEHOST = dict(batch_size=128, epochs=20)

STAGE2 = dict(
    batch_size=512, epochs=50, lr=1e-3, wd=1e-6, warmup_steps=4_000, grad_clip_norm=None,
    shuffle_buffer=50_000, checkpoint_every=1_000, keep_every_n_steps=5_000, log_every=50,
)
STAGE2_SINGLEHOST = dict(batch_size=32, epochs=20)

SMOKE = {}
