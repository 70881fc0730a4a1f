"""One stage-I fit step on 1 device and under DataParallel on 8 CPU devices.

Run as a script by test_distribution.py (the device count must be set before
JAX starts). Prints the largest weight difference as JSON.
"""

import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from helpers import panoptic_batch, tiny_stage1  # noqa: E402


def one_step(distribution, init_weights, batch):
    keras.distribution.set_distribution(distribution)
    try:
        model = tiny_stage1(seed=3)
        if init_weights is not None:
            model.set_weights(init_weights)
        model.compile(optimizer=keras.optimizers.SGD(0.5))
        model.train_on_batch(batch)
        # Commit the step's result: weights after one update.
        return [np.asarray(keras.ops.convert_to_numpy(w)) for w in model.weights], \
            [w.path for w in model.weights]
    finally:
        keras.distribution.set_distribution(None)


def main():
    devices = keras.distribution.list_devices("cpu")
    assert len(devices) == 8, devices
    batch = panoptic_batch(8, seed=5)
    model = tiny_stage1(seed=3)
    rng = np.random.default_rng(0)
    # Non-zero heads so that one step moves every weight.
    init = [
        w + rng.normal(0, 0.1, w.shape).astype(w.dtype) if w.dtype == np.float32 else w
        for w in model.get_weights()
    ]
    single, paths = one_step(None, init, batch)
    parallel, _ = one_step(keras.distribution.DataParallel(devices=devices), init, batch)
    diffs = {p: float(np.max(np.abs(a - b))) for p, a, b in zip(paths, single, parallel)}
    moved = {p: float(np.max(np.abs(a - b))) for p, a, b in zip(paths, single, init)}
    print(json.dumps({"max_diff": max(diffs.values()), "diffs": diffs, "moved": moved}))


if __name__ == "__main__":
    main()
