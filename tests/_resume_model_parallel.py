"""A resumed stage-I run under 2 x 4 model parallelism (8 CPU devices) ends
with the weights of the uninterrupted run; restored variables keep their
sharding (the VQ dictionary sharded on the model axis).

Run as a script by test_training_resume.py (the device count must be set
before JAX starts). Prints a JSON summary.
"""

import json
import os
import sys
import tempfile

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from helpers import panoptic_batch, tiny_stage1  # noqa: E402
from uvim_keras.models.sharding import model_parallel  # noqa: E402
from uvim_keras.optimizers import BigVisionAdafactor, CosineWarmup  # noqa: E402
from uvim_keras.training import fit_resumable  # noqa: E402

DATA = panoptic_batch(n=16, size=16, seed=4)


def make_dataset():
    tf.random.set_seed(0)
    ds = tf.data.Dataset.from_tensor_slices(DATA).shuffle(16, seed=2).repeat()
    return ds.batch(4, drop_remainder=True)


def model(seed):
    m = tiny_stage1(seed=seed, num_heads=4, code_dropout="random")
    m.compile(optimizer=BigVisionAdafactor(CosineWarmup(2e-3, 4, 1), weight_decay=1e-4))
    return m


def state(m):
    return [np.asarray(keras.ops.convert_to_numpy(v.value), np.float64)
            for v in list(m.variables) + list(m.optimizer.variables)]


def main():
    keras.distribution.set_distribution(model_parallel((2, 4)))
    common = dict(total_steps=4, steps_per_epoch=4, checkpoint_every=2, log_every=None,
                  verbose=0)
    with tempfile.TemporaryDirectory() as tmp:
        a = model(0)
        fit_resumable(a, make_dataset(), workdir=os.path.join(tmp, "a"), keep=None, **common)
        b = model(7)
        os.makedirs(os.path.join(tmp, "b"))
        os.rename(os.path.join(tmp, "a", "checkpoints"), os.path.join(tmp, "b", "checkpoints"))
        for name in os.listdir(os.path.join(tmp, "b", "checkpoints")):
            if not name.endswith("02"):
                os.rename(os.path.join(tmp, "b", "checkpoints", name), os.path.join(tmp, name))
        result = fit_resumable(b, make_dataset(), workdir=os.path.join(tmp, "b"), **common)
    diff = max(float(np.abs(x - y).max()) for x, y in zip(state(a), state(b)))
    dictionary = b.quantizer.dictionary.value
    print(json.dumps({
        "start_step": result.start_step, "step": result.step, "max_abs_diff": diff,
        "dictionary_sharding": str(dictionary.sharding.spec),
        "same_shardings": all(
            x.value.sharding == y.value.sharding for x, y in zip(a.variables, b.variables)),
    }))


if __name__ == "__main__":
    main()
