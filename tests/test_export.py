"""Serving: `UViM.export` writes a TF SavedModel that plain TensorFlow (in a
process that never imports uvim_keras) serves with `predict`'s outputs,
whether or not the model predicted before; `UViMStage1.export_base_model`
writes an ONNX decoder of guiding codes that onnxruntime runs with Keras'
outputs.

Keras exports a SavedModel from JAX and TensorFlow (from torch only through
torch_xla, not installed: those tests skip, and the error is checked);
ONNX from all three backends.
"""

import json
import os
import sys
import textwrap
import time

import numpy as np
import pytest

from common import run_json
from uvim_keras.presets.bundled import BUNDLED_DIR

pytestmark = [
    pytest.mark.multibackend,
    # Keras' jax2tf call (jax export) passes an argument JAX deprecates.
    pytest.mark.filterwarnings("ignore:The `native_serialization` parameter:DeprecationWarning"),
    pytest.mark.skipif(not (BUNDLED_DIR / "shapes_panoptic").is_dir(), reason="no bundled preset"),
]


def _backend():
    import keras

    return keras.backend.backend()


def _has(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


needs_saved_model = pytest.mark.skipif(
    not _has("tensorflow") or (_backend() == "torch" and not _has("torch_xla")),
    reason="Keras exports a TF SavedModel from torch only through torch_xla (not installed: "
           "its latest release, 2.9, needs torch 2.9); needs tensorflow",
)

# Runs in a fresh process with plain TensorFlow: loads each SavedModel, serves
# its inputs, and checks that uvim_keras (and so this package's code) was
# never imported.
_SERVE = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    start = time.perf_counter()
    import tensorflow as tf
    jobs = json.loads(sys.argv[1])
    times = {}
    for name, job in jobs.items():
        t = time.perf_counter()
        served = tf.saved_model.load(job["path"])
        times[name] = {"load_s": time.perf_counter() - t}
        inputs = dict(np.load(job["inputs"]))
        arg = inputs if len(inputs) > 1 else inputs["image"]
        t = time.perf_counter()
        outputs = {f"serve_{i}": served.serve(arg).numpy() for i in range(job["calls"])}
        times[name]["serve_s"] = (time.perf_counter() - t) / job["calls"]
        if len(inputs) == 1:  # the signature TF Serving uses
            (out,) = served.signatures["serving_default"](images=tf.constant(arg)).values()
            outputs["serving_default"] = out.numpy()
        np.savez(job["outputs"], **outputs)
    assert "uvim_keras" not in sys.modules, "the SavedModel needed uvim_keras"
    times["total_s"] = time.perf_counter() - start
    print(json.dumps(times))
""")


def _serve_in_fresh_process(jobs, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "KERAS_BACKEND"}
    env["TF_CPP_MIN_LOG_LEVEL"] = "3"
    return run_json([sys.executable, "-c", _SERVE, json.dumps(jobs)], cwd=tmp_path, env=env,
                    timeout=600)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """Exports the bundled UViMs (before and after `predict`), serves them
    with plain TensorFlow in a fresh process; {name: (expected, served)}."""
    import keras

    from uvim_keras import UViM
    from uvim_keras.data.synthetic import (
        make_colorization_shapes, make_depth_scenes, make_panoptic_shapes)
    from uvim_keras.models.sampling import image_seeds

    tmp = tmp_path_factory.mktemp("export")
    held_out = {
        "panoptic": make_panoptic_shapes(4, size=64, seed=10_000)["image"],
        "depth": make_depth_scenes(4, size=64, seed=10_000)["image"],
        "colorization": make_colorization_shapes(3, size=64, seed=10_000)["image"],
    }
    jobs, expected, export_s = {}, {}, {}

    def export(name, uvim, images, extra_inputs=None, calls=1, **kwargs):
        t = time.perf_counter()
        uvim.export(str(tmp / name), verbose=False, **kwargs)
        export_s[name] = time.perf_counter() - t
        np.savez(tmp / f"{name}_in.npz", image=images, **(extra_inputs or {}))
        jobs[name] = {"path": str(tmp / name), "inputs": str(tmp / f"{name}_in.npz"),
                      "outputs": str(tmp / f"{name}_out.npz"), "calls": calls}

    # Exported before any predict: the default input signature is needed.
    panoptic = UViM.from_preset("shapes_panoptic")
    export("panoptic_before_predict", panoptic, held_out["panoptic"])
    expected["panoptic_before_predict"] = panoptic.predict(held_out["panoptic"], verbose=0)
    # Exported after predict and sample (compiled functions cached on the model).
    panoptic.sample(held_out["panoptic"][:2], num_samples=2, temperature=1.0, seed=0)
    export("panoptic_after_predict", panoptic, held_out["panoptic"])
    expected["panoptic_after_predict"] = expected["panoptic_before_predict"]

    depth = UViM.from_preset("shapes_depth")
    expected["depth_after_predict"] = depth.predict(held_out["depth"], verbose=0)
    export("depth_after_predict", depth, held_out["depth"])

    # Colorization samples its code at T = 1: exported with per-image seeds
    # it serves what predict(x, seed=...) returns; greedy with temperature=0.
    color = UViM.from_preset("shapes_colorization")
    images = held_out["colorization"]
    expected["colorization_seeded"] = color.predict(images, seed=7, verbose=0)
    seeds = np.asarray(image_seeds(7, 0, len(images)), "int32")
    spec = [{"image": keras.InputSpec(shape=(None, 64, 64, 3), dtype="float32", name="image"),
             "seed": keras.InputSpec(shape=(None,), dtype="int32", name="seed")}]
    export("colorization_seeded", color, images, {"seed": seeds}, input_signature=spec)
    export("colorization_sampled", color, images, calls=2)  # seeds from the saved generator
    export("colorization_greedy", color, images, temperature=0)
    expected["colorization_greedy"] = color.predict(images, temperature=0, verbose=0)

    times = _serve_in_fresh_process(jobs, tmp)
    print(f"\n[{_backend()}] export s: " + ", ".join(f"{k} {v:.1f}" for k, v in export_s.items())
          + f"; reload in a fresh process: {times['total_s']:.1f} s (TF import included): "
          + ", ".join(f"{k} load {v['load_s']:.1f} serve {v['serve_s']:.2f}"
                      for k, v in times.items() if k != "total_s"))
    return {name: (expected.get(name), dict(np.load(job["outputs"])))
            for name, job in jobs.items()}


@pytest.mark.slow
@needs_saved_model
@pytest.mark.parametrize("name", ["panoptic_before_predict", "panoptic_after_predict"])
def test_saved_model_serves_panoptic_ids_of_predict(served, name):
    expected, got = served[name]
    assert expected.shape == (4, 64, 64, 2) and expected.dtype == np.int32
    for out in got.values():
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out, expected)


@pytest.mark.slow
@needs_saved_model
def test_saved_model_serves_depth_of_predict(served):
    expected, got = served["depth_after_predict"]
    assert expected.shape == (4, 64, 64)
    for out in got.values():
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5)


@pytest.mark.slow
@needs_saved_model
def test_saved_model_samples_colorization(served):
    expected, got = served["colorization_seeded"]
    # Per-image seeds: predict(x, seed=7)'s samples (jax2tf may differ in the last bit).
    np.testing.assert_allclose(got["serve_0"], expected, rtol=0, atol=1e-5)
    _, got = served["colorization_sampled"]
    first, second = got["serve_0"], got["serve_1"]
    assert first.shape == (3, 64, 64, 3) and -1 <= first.min() and first.max() <= 1
    assert np.abs(first - second).max() > 0.1  # the saved seed generator moves on
    expected, got = served["colorization_greedy"]
    np.testing.assert_allclose(got["serve_0"], expected, rtol=0, atol=1e-5)


@pytest.mark.skipif(_backend() != "torch" or _has("torch_xla"),
                    reason="the torch backend without torch_xla")
def test_saved_model_from_torch_says_what_is_missing(tmp_path):
    from helpers import tiny_lm, tiny_stage1

    from uvim_keras import UViM

    uvim = UViM.from_stage1(tiny_lm(), tiny_stage1())
    with pytest.raises(ImportError, match="torch_xla"):
        uvim.export(str(tmp_path / "model"))


def test_export_checks_its_temperature(tmp_path):
    from helpers import tiny_lm, tiny_stage1

    from uvim_keras import UViM

    uvim = UViM.from_stage1(tiny_lm(), tiny_stage1())
    with pytest.raises(ValueError, match="temperature"):
        uvim.export(str(tmp_path / "model"), temperature=-1.0)


_ONNX_EXPORTER = {"jax": "jax2onnx", "tensorflow": "tf2onnx", "torch": "onnx"}


@pytest.mark.slow
@pytest.mark.skipif(not (_has("onnxruntime") and _has("onnx")
                         and _has(_ONNX_EXPORTER.get(_backend(), "-"))),
                    reason="needs onnx, onnxruntime and Keras' ONNX exporter of this backend")
def test_onnx_base_model_decodes_codes_as_keras(tmp_path):
    import keras
    import onnxruntime

    from uvim_keras import UViMStage1
    from uvim_keras.data.synthetic import make_panoptic_shapes

    stage1 = UViMStage1.from_preset("shapes_panoptic")
    images = make_panoptic_shapes(3, size=64, seed=10_000)["image"]
    codes = np.random.default_rng(0).integers(
        0, stage1.dict_size, (3, stage1.code_len)).astype("int32")
    logits = {k: keras.ops.convert_to_numpy(v) for k, v in stage1.decode(codes, images).items()}
    ids = keras.ops.convert_to_numpy(stage1.task.predict_outputs(stage1.decode(codes, images)))

    times = {}
    for outputs in ("predictions", "logits"):
        path = str(tmp_path / f"base_{outputs}.onnx")
        t = time.perf_counter()
        stage1.export_base_model(path, outputs=outputs, verbose=False)
        times[outputs] = time.perf_counter() - t
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        assert [i.name for i in session.get_inputs()] == ["codes", "images"]
        names = [o.name for o in session.get_outputs()]
        for n in (3, 1):  # any batch size
            got = dict(zip(names, session.run(None, {"codes": codes[:n], "images": images[:n]})))
            if outputs == "predictions":
                assert names == ["predictions"] and got["predictions"].dtype == np.int32
                np.testing.assert_array_equal(got["predictions"], ids[:n])
            else:
                assert names == list(stage1.base_model.label_channels)
                for key, value in got.items():
                    np.testing.assert_allclose(value, logits[key][:n], rtol=0, atol=1e-4)
    print(f"\n[{_backend()}] ONNX export s: "
          + ", ".join(f"{k} {v:.1f}" for k, v in times.items()))
