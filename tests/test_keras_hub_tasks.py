"""keras-hub's own classes load UViM presets: `import uvim_keras` registers
them (also when keras-hub is imported later), the complete models load as
`ImageSegmenter` / `DepthEstimator` / `ImageToImage` with a saved
preprocessor, take raw images of any size and answer at that size."""

import json
import os
import shutil
import sys

import numpy as np
import pytest

from common import REPO, run_command

pytest.importorskip("keras_hub")
pytestmark = pytest.mark.multibackend

WEIGHTS = REPO / "weights"


def _photos(n=2, size=(40, 70), seed=0):
    """uint8 images at another size and aspect than the models' 64x64."""
    from uvim_keras.data.synthetic import make_panoptic_shapes

    images = make_panoptic_shapes(n, size=64, seed=seed)["image"]
    import keras

    big = keras.ops.image.resize(images, size, interpolation="bilinear")
    return np.clip(np.round((keras.ops.convert_to_numpy(big) + 1) * 127.5), 0, 255).astype("uint8")


@pytest.mark.slow
def test_registration_happens_when_keras_hub_is_imported_after_uvim_keras(tmp_path):
    script = f"""
import sys
import uvim_keras
assert "keras_hub" not in sys.modules and "tensorflow" not in sys.modules or \\
    __import__("os").environ.get("KERAS_BACKEND") == "tensorflow"
import keras_hub
backbone = keras_hub.models.Backbone.from_preset({str(WEIGHTS / 'shapes_panoptic')!r})
task = keras_hub.models.ImageSegmenter.from_preset({str(WEIGHTS / 'shapes_panoptic')!r})
print(type(backbone).__name__, type(task).__name__, type(task.preprocessor).__name__)
"""
    proc = run_command([sys.executable, "-c", script], cwd=tmp_path, timeout=600,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.stdout.split() == ["UViMStage1Backbone", "UViMImageSegmenter",
                                   "UViMImageSegmenterPreprocessor"]


@pytest.mark.slow
def test_image_segmenter_takes_raw_images_and_answers_at_their_size():
    import keras_hub

    from uvim_keras import UViM
    from uvim_keras.data.images import prepare_image, resize_prediction

    segmenter = keras_hub.models.ImageSegmenter.from_preset(str(WEIGHTS / "shapes_panoptic"))
    photos = _photos()
    got = segmenter.predict(photos, verbose=0)
    assert got.shape == (2, 40, 70, 2) and got.dtype == np.int32
    # what the command line computes: big_vision's preprocessing, UViM, resized back
    uvim = UViM.from_preset("shapes_panoptic")
    model_in = np.stack([prepare_image(p, uvim.input_size) for p in photos])
    expected = np.stack([resize_prediction(o, (40, 70), uvim.task)
                         for o in uvim.predict(model_in, verbose=0)])
    assert (got == expected).mean() > 0.995, (got == expected).mean()
    # one image, and a list of images of different sizes
    assert segmenter.predict(photos[0], verbose=0).shape == (40, 70, 2)
    both = segmenter.predict([photos[0], photos[1, :30, :50]], verbose=0)
    assert [o.shape for o in both] == [(40, 70, 2), (30, 50, 2)]


@pytest.mark.slow
def test_depth_estimator_and_colorizer_from_keras_hub_base_classes():
    import keras_hub

    depth = keras_hub.models.DepthEstimator.from_preset(str(WEIGHTS / "shapes_depth"))
    assert type(depth).__name__ == "UViMDepthEstimator"
    out = depth.predict(_photos(1, (48, 30)), verbose=0)
    assert out.shape == (1, 48, 30) and np.isfinite(out).all() and out.min() >= 0
    colorizer = keras_hub.models.ImageToImage.from_preset(str(WEIGHTS / "shapes_colorization"))
    assert type(colorizer).__name__ == "UViMColorizer"
    colour = _photos(2, (36, 52), seed=4)
    grey = np.repeat(np.round(colour @ np.array([0.2989, 0.5870, 0.1140]))[..., None], 3,
                     axis=-1).clip(0, 255).astype("uint8")
    rgb = colorizer.generate(colour, verbose=0)
    assert rgb.shape == (2, 36, 52, 3) and np.abs(rgb).max() <= 1.0 + 1e-6
    # the preprocessor turns colour input grey, as big_vision's rgb_to_grayscale_to_rgb
    model_in = np.asarray(colorizer.preprocessor(colour))
    assert model_in.shape == (2, 64, 64, 3)
    np.testing.assert_allclose(model_in[..., 0], model_in[..., 2], atol=1e-6)
    np.testing.assert_allclose(np.asarray(colorizer.preprocessor(grey)), model_in, atol=0.01)
    # sampled with per-image seeds from the pixels: the same image, the same colours
    np.testing.assert_array_equal(colorizer.generate(colour[1:], verbose=0)[0], rgb[1])


def test_saved_presets_name_their_keras_hub_task(tmp_path):
    for name, task, cls in (("shapes_panoptic", "ImageSegmenter", "UViMImageSegmenter"),
                            ("shapes_depth", "DepthEstimator", "UViMDepthEstimator"),
                            ("shapes_colorization", "ImageToImage", "UViMColorizer")):
        folder = WEIGHTS / name
        assert json.loads((folder / "metadata.json").read_text())["tasks"] == [task]
        assert json.loads((folder / "task.json").read_text())["class_name"] == cls
        assert (folder / "preprocessor.json").is_file()
        card = (folder / "README.md").read_text()
        assert f"keras_hub.models.{task}.from_preset" in card and f'name: "{name}"' in card


@pytest.mark.slow
def test_presets_saved_by_older_versions_still_load(tmp_path):
    """A task.json naming the generic `UViMStage2Task` with no preprocessor
    (tests/fixtures/weights_layout2) loads as a UViM, and keras-hub's task
    classes say what to do instead of failing deep inside."""
    import keras_hub

    from uvim_keras import UViM
    from uvim_keras.presets import upgrade_weights_layout

    folder = tmp_path / "old"
    shutil.copytree(REPO / "tests" / "fixtures" / "weights_layout2" / "preset", folder)
    upgrade_weights_layout(folder)
    assert isinstance(UViM.from_preset(str(folder)), UViM)
    with pytest.raises(ValueError, match=r"written by an older uvim-keras.*UViM\.from_preset"):
        keras_hub.models.ImageSegmenter.from_preset(str(folder))


def test_from_preset_dtype_reaches_the_lm():
    """`UViM.from_preset(..., dtype=...)` (keras-hub's loader hands the dtype
    to the backbone only) also builds the guiding-code LM in that dtype."""
    from uvim_keras import UViM

    uvim = UViM.from_preset(str(WEIGHTS / "shapes_depth"), dtype="bfloat16")
    for model in (uvim.lm, uvim.stage1):
        assert model.dtype_policy.name == "bfloat16", model.name
    assert uvim.lm.decoder_blocks[0].mlp.dense_0.kernel.dtype == "bfloat16"
    assert UViM.from_preset(str(WEIGHTS / "shapes_depth")).lm.dtype_policy.name == "float32"
