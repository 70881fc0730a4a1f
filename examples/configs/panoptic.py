"""COCO panoptic: big_vision's `vqvae_coco_panoptic.py` (stage I) and
`train_coco_panoptic_pretrained.py` (stage II)."""

DATASET = "coco/2017_panoptic"
TRAIN_SPLIT = "train[4096:]"          # big_vision trains on all but the first 4096
HOLDOUT_SPLIT = "train[:4096]"        # ... which are its holdout set
TRAIN_EXAMPLES = 118_287 - 4_096      # = 114_191 (steps = epochs * this / batch)


def task():
    from uvim_keras import PanopticTask

    return PanopticTask(num_classes=134, max_instances=100)  # 133 classes + void


def dataset(split, **kwargs):
    from uvim_keras.data import coco_panoptic_dataset

    return coco_panoptic_dataset(split, **kwargs)


STAGE1 = dict(
    batch_size=1024, epochs=1000, lr=4e-4, wd=4e-5, warmup_steps=4_000, grad_clip_norm=1.0,
    shuffle_buffer=25_000, checkpoint_every=1_000, keep_every_n_steps=20_000, log_every=50,
)
# big_vision's `:singlehost` sets `config.num_epochs = 100`, a key its trainer
# never reads, so a literal big_vision run keeps total_epochs = 1000 at batch 128
# (pass --epochs 1000 for that); we use the 100 epochs the variant intends.
STAGE1_SINGLEHOST = dict(batch_size=128, epochs=100)

STAGE2 = dict(
    batch_size=512, epochs=200, lr=1e-3, wd=1e-6, warmup_steps=4_000, grad_clip_norm=None,
    shuffle_buffer=50_000, checkpoint_every=1_000, keep_every_n_steps=5_000, log_every=50,
)
# As above: big_vision's `num_epochs = 50` is ignored by its trainer (200 epochs run).
STAGE2_SINGLEHOST = dict(batch_size=32, epochs=50)

SMOKE = dict(dataset_kwargs=dict(strict=False))  # tfds' random mock COCO objects are inconsistent
