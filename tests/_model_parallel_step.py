"""One fit step on 1 device and under a 2x4 ModelParallel on 8 CPU devices.

Run as a script by test_model_parallel.py (the device count must be set before
JAX starts). Checks the tiny stage-I model (VQ state included) and the tiny
guiding-code LM with `uvim_keras.models.sharding.model_parallel`, records the
sharding of every variable, and prints one JSON line.
"""

import json
import os
import sys
import warnings

os.environ["KERAS_BACKEND"] = "jax"
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from helpers import panoptic_batch, tiny_lm, tiny_stage1  # noqa: E402
from uvim_keras.models.sharding import data_parallel, model_parallel  # noqa: E402

# 4 heads of 4 (width 16), mlp_dim 32, dict_size 8: all divisible by the 4-way model axis.
HEADS = 4


def spec(variable):
    """The variable's PartitionSpec as a list with one entry per dimension."""
    s = list(variable.value.sharding.spec)
    return s + [None] * (len(variable.shape) - len(s))


def one_step(make, distribution, init, batch):
    keras.utils.clear_session()  # same layer names (paths) in every run; before the distribution
    keras.distribution.set_distribution(distribution)
    try:
        model = make()
        model.set_weights(init)
        created = {w.path: spec(w) for w in model.weights} if distribution else {}
        model.compile(optimizer=keras.optimizers.SGD(0.5, momentum=0.9))
        model.train_on_batch(batch)
        weights = {w.path: np.asarray(keras.ops.convert_to_numpy(w)) for w in model.weights}
        stepped = {w.path: spec(w) for w in model.weights} if distribution else {}
        slots = (
            {v.path: spec(v) for v in model.optimizer.variables if len(v.shape)}
            if distribution else {}
        )
        return weights, {"created": created, "after_step": stepped, "optimizer": slots}
    finally:
        keras.distribution.set_distribution(None)


def compare(make, batch):
    keras.utils.clear_session()
    rng = np.random.default_rng(0)
    # Perturbed (non-zero heads, logits) so that one step moves every weight.
    init = [
        w + rng.normal(0, 0.1, w.shape).astype(w.dtype) if w.dtype == np.float32 else w
        for w in make().get_weights()
    ]
    single, _ = one_step(make, None, init, batch)
    parallel, specs = one_step(make, model_parallel(shape=(2, 4)), init, batch)
    initial = dict(zip(single, init))
    return {
        "max_diff": max(float(np.max(np.abs(single[p] - parallel[p]))) for p in single),
        "diffs": {p: float(np.max(np.abs(single[p] - parallel[p]))) for p in single},
        "moved": {p: float(np.max(np.abs(single[p] - initial[p]))) for p in single},
        **specs,
    }


def divisibility():
    """A 2-head LM on a 4-way model axis: strict raises, strict=False replicates."""
    out = {}
    keras.distribution.set_distribution(model_parallel(shape=(2, 4)))
    try:
        tiny_lm(num_heads=2)
        out["strict_error"] = None
    except ValueError as e:
        out["strict_error"] = str(e)
    finally:
        keras.distribution.set_distribution(None)
    keras.distribution.set_distribution(model_parallel(shape=(2, 4), strict=False))
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            lm = tiny_lm(num_heads=2)
        messages = [str(w.message) for w in caught]
        out["lenient_warnings"] = [m for m in messages if "replicating" in m]
        out["lenient_specs"] = {w.path: spec(w) for w in lm.weights}
    finally:
        keras.distribution.set_distribution(None)
    return out


def main():
    devices = keras.distribution.list_devices("cpu")
    assert len(devices) == 8, devices
    result = {
        "data_parallel_mesh": list(data_parallel().device_mesh.shape),
        "inferred_mesh": list(model_parallel(shape=(-1, 4)).device_mesh.shape),
    }
    result["stage1"] = compare(
        lambda: tiny_stage1(seed=3, num_heads=HEADS), panoptic_batch(8, seed=5)
    )
    rng = np.random.default_rng(7)
    lm_batch = {
        "image": rng.uniform(-1, 1, (8, 16, 16, 3)).astype("float32"),
        "codes": rng.integers(0, 8, (8, 4)).astype("int32"),
    }
    result["lm"] = compare(lambda: tiny_lm(seed=3, num_heads=HEADS), lm_batch)
    result.update(divisibility())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
