"""Parity with big_vision's own outputs (fixtures made by running its code).

Every `stageI_*_io.npz` / `stageII*_io.npz` found in UVIM_BIG_VISION_FIXTURES
is checked with the model config stored in its `meta/config_json`.
"""

import numpy as np
import pytest

from common import big_vision_io_files, load_io, params_file, to_numpy

pytestmark = pytest.mark.multibackend

STAGE1 = big_vision_io_files("stageI_*_io.npz")
STAGE2 = big_vision_io_files("stageII*_io.npz")
ATOL = 1e-4


def _ids(paths):
    return [p.name for p in paths]


def build_stage1(io_path):
    from uvim_keras.checkpoints import big_vision as convert

    io, meta = load_io(io_path)
    model = convert.stage1_from_big_vision_config(meta["model"], task_config=meta.get("task_extra"))
    convert.load_big_vision_weights(model, params_file(io_path))
    return model, io, meta


def _patch_logits(model, logits):
    from uvim_keras.layers import patchify

    return {k: to_numpy(patchify(v, model.patch_size)) for k, v in logits.items()}


def _check_predictions(model, io, prefix, logits, meta):
    from uvim_keras.tasks import PanopticTask

    task = model.task
    names = [k[len(prefix):] for k in io.files if k.startswith(prefix)]
    assert names, f"no {prefix}* arrays"
    for name in names:
        expected = io[prefix + name]
        if isinstance(task, PanopticTask):
            if name == "panoptic_min_extra":
                min_fraction = float(io["meta/min_fraction_extra"])
            else:
                min_fraction = float(name.replace("panoptic_min", ""))
            got = to_numpy(task.predict_outputs(logits, min_fraction=min_fraction))
            np.testing.assert_array_equal(got, expected, err_msg=name)
        elif name == "color":
            np.testing.assert_allclose(to_numpy(task.predict_outputs(logits)), expected, atol=ATOL)
        else:
            np.testing.assert_array_equal(to_numpy(task.predict_outputs(logits)), expected)


@pytest.mark.slow
@pytest.mark.parametrize("io_path", STAGE1, ids=_ids(STAGE1))
def test_stage1_eval_path(io_path):
    model, io, meta = build_stage1(io_path)
    batch = {"image": io["inputs/image"], "labels": io["inputs/labels"]}
    out = model(batch, training=False)
    np.testing.assert_allclose(to_numpy(out["bottleneck"]), io["eval/bottleneck"], atol=ATOL)
    np.testing.assert_allclose(to_numpy(out["quantized"]), io["eval/bottleneck_q"], atol=ATOL)
    np.testing.assert_array_equal(to_numpy(out["codes"]), io["eval/code"])
    np.testing.assert_allclose(to_numpy(model.quantizer.codewords()), io["eval/codewords"], atol=1e-5)
    ours = _patch_logits(model, out["logits"])
    for key, value in ours.items():
        np.testing.assert_allclose(value, io[f"eval/logits/{key}"], atol=ATOL, err_msg=key)
    _check_predictions(model, io, "eval/predict/", out["logits"], meta)
    rec = float(to_numpy(model.task.loss(io["inputs/labels"], out["logits"])))
    np.testing.assert_allclose(rec, float(io["loss/rec"]), rtol=1e-5, atol=1e-5)
    commitment = np.mean((io["eval/bottleneck"] - io["eval/bottleneck_q"]) ** 2)
    np.testing.assert_allclose(
        np.mean((to_numpy(out["bottleneck"]) - to_numpy(out["quantized"])) ** 2),
        float(io["loss/commitment"]), rtol=1e-4,
    )
    np.testing.assert_allclose(commitment, float(io["loss/commitment"]), rtol=1e-5)


@pytest.mark.parametrize("io_path", STAGE1, ids=_ids(STAGE1))
def test_stage1_intermediates(io_path):
    """Oracle internals (stems, encoder, head) match big_vision's debug arrays."""
    from uvim_keras.layers import patchify

    model, io, _ = build_stage1(io_path)
    debug = [k for k in io.files if k.startswith("debug/")]
    if not debug:
        pytest.skip("fixture has no debug arrays")
    oracle = model.oracle
    labels = model.task.encode_labels(io["inputs/labels"])
    for key, stem in zip(oracle.label_channels, oracle.stems):
        if f"debug/stem/{key}" in io.files:
            got = stem(patchify(labels[key], oracle.patch_size))
            np.testing.assert_allclose(to_numpy(got), io[f"debug/stem/{key}"], atol=ATOL)
    if "debug/encoder_head_out" in io.files:
        got = oracle(labels, image=io["inputs/image"])
        np.testing.assert_allclose(to_numpy(got), io["debug/encoder_head_out"], atol=ATOL)


@pytest.mark.parametrize("io_path", STAGE1, ids=_ids(STAGE1))
def test_stage1_discrete_input(io_path):
    model, io, meta = build_stage1(io_path)
    if "discrete/code_in" not in io.files:
        pytest.skip("light fixture: no discrete-input case")
    logits = model.decode(io["discrete/code_in"], io["inputs/image"])
    for key, value in _patch_logits(model, logits).items():
        np.testing.assert_allclose(value, io[f"discrete/logits/{key}"], atol=ATOL, err_msg=key)
    if any(k.startswith("discrete/predict/") for k in io.files):
        _check_predictions(model, io, "discrete/predict/", logits, meta)


@pytest.mark.parametrize("io_path", STAGE1, ids=_ids(STAGE1))
def test_stage1_resize_matrices(io_path):
    from uvim_keras.layers import linear_resize_matrix

    io, _ = load_io(io_path)
    if "resize/down_h" not in io.files:
        pytest.skip("no resize matrices (learned bottleneck)")
    for name in ("down_h", "down_w", "up_h", "up_w"):
        m = io[f"resize/{name}"]
        np.testing.assert_allclose(linear_resize_matrix(*m.shape), m, atol=1e-6, err_msg=name)


def build_lm(io_path):
    from uvim_keras.checkpoints import big_vision as convert

    io, meta = load_io(io_path)
    lm = convert.lm_from_big_vision_config(meta["model"])
    convert.load_big_vision_weights(lm, params_file(io_path))
    return lm, io, meta


@pytest.mark.parametrize("io_path", STAGE2, ids=_ids(STAGE2))
def test_stage2_teacher_forcing_and_greedy(io_path):
    lm, io, _ = build_lm(io_path)
    image = io["inputs/image"]
    np.testing.assert_allclose(to_numpy(lm.encode(image)), io["tf/encoded"], atol=ATOL)
    logits = lm({"image": image, "codes": io["inputs/targets"] - 1})
    np.testing.assert_allclose(to_numpy(logits), io["tf/logits"], atol=ATOL)
    tokens = to_numpy(lm.generate(image)) + 1
    np.testing.assert_array_equal(tokens, io["greedy/tokens"])
    on_tokens = lm({"image": image, "codes": io["greedy/tokens"] - 1})
    np.testing.assert_allclose(to_numpy(on_tokens), io["greedy/tf_logits_on_tokens"], atol=ATOL)
    np.testing.assert_allclose(to_numpy(on_tokens), io["greedy/step_logits"], atol=ATOL)


@pytest.mark.parametrize("io_path", STAGE2, ids=_ids(STAGE2))
def test_stage2_end_to_end(io_path):
    from uvim_keras import UViM
    from uvim_keras.checkpoints import big_vision as convert

    lm, io, meta = build_lm(io_path)
    stage1_keys = [k for k in meta if k.startswith("stage1_")]
    if not stage1_keys or "e2e/code" not in io.files:
        pytest.skip("fixture has no end-to-end case")
    name = stage1_keys[0][len("stage1_"):]
    stage1 = convert.stage1_from_big_vision_config(meta[stage1_keys[0]])
    convert.load_big_vision_weights(stage1, io_path.with_name(f"stageI_{name}_params.npz"))
    uvim = UViM.from_stage1(lm, stage1)
    image = io["inputs/image"]
    codes = to_numpy(lm.generate(image))
    np.testing.assert_array_equal(codes, io["e2e/code"])
    logits = stage1.decode(codes, image)
    for key, value in _patch_logits(stage1, logits).items():
        np.testing.assert_allclose(value, io[f"e2e/logits/{key}"], atol=ATOL, err_msg=key)
    panoptic = [k for k in io.files if k.startswith("e2e/") and k.split("/")[1] in ("panoptic", "depth", "color")]
    for key in panoptic:
        np.testing.assert_array_equal(uvim.predict(image, verbose=0), io[key])
        np.testing.assert_array_equal(to_numpy(uvim(image)), io[key])
