"""BigVisionAdafactor and CosineWarmup against big_vision's optimizer.

`fixtures/adafactor_reference.npz` holds parameters and optimizer state after
each of 5 steps of `big_vision.optax.make(config, params, ...)` (jitted
`tx.update` on CPU) for three configs: UViM stage II
(`train_coco_panoptic_pretrained`: lr 1e-3, wd 1e-6, lr_mults 0.1 on the
encoder), UViM stage I (`vqvae_coco_panoptic`: lr 4e-4, wd 4e-5,
grad_clip_norm 1.0) and an `extended` one (update clipping, float32 first
moment, a frozen subtree, wd_mults, a large wd); the schedule is shortened to
60 steps with 2 warmup steps. The stage-II case also records step 45 (and the
state before it), where beta2 has reached its cap of 0.95. Metadata (configs,
versions, the generator script) is in its `meta_json` entry.

Two checks per case:
* step by step ("teacher forced"): parameters and state are set to
  big_vision's after step k-1, one step is taken, and the parameters must
  match big_vision's after step k to 1e-6 of the update (plus 2 float32
  ulps of the parameter), the second-moment state to 2e-6 of its largest
  entry, the bfloat16 first moment exactly except for at most a few
  elements one bfloat16 ulp off (float32 results that differ in the last
  bit, e.g. XLA's rsqrt vs torch's, can round the other way);
* five free steps: the trajectory within 1e-6 of the total update for >= 99%
  of elements and within 1e-2 for all (a bfloat16 rounding flip moves one
  element by ~2^-8 of its update).
"""

import contextlib
import json

import numpy as np
import pytest
from common import TEST_FIXTURES, to_numpy

FIXTURE = TEST_FIXTURES / "adafactor_reference.npz"
RTOL = 1e-6  # parameters: of the step's update
STATE_RTOL = 2e-6  # optimizer state: of the tensor's largest entry

# big_vision parameter name -> uvim_keras path (the GuidingCodeLM's layout).
PATHS = {
    "EmbedPatches/kernel": "guiding_code_lm/image_embedding/conv/kernel",
    "EmbedPatches/bias": "guiding_code_lm/image_embedding/conv/bias",
    "pos_embedding_encoder": "guiding_code_lm/encoder_posemb/embedding",
    "encoder/encoderblock_0/LayerNorm_0/scale": "guiding_code_lm/encoder/block_0/norm_0/gamma",
    "encoder/encoderblock_0/MlpBlock_0/Dense_0/kernel":
        "guiding_code_lm/encoder/block_0/mlp/dense_0/kernel",
    "encoder/encoderblock_0/MlpBlock_0/Dense_0/bias":
        "guiding_code_lm/encoder/block_0/mlp/dense_0/bias",
    "decoder/EmbedTargets/embedding": "guiding_code_lm/token_embedding/embeddings",
    "decoder/EncDecBlock0/SelfAttn/query/kernel":
        "guiding_code_lm/decoder_block_0/self_attention/query_kernel",
    "decoder/EncDecBlock0/SelfAttn/out/kernel":
        "guiding_code_lm/decoder_block_0/self_attention/out_kernel",
    "decoder/LogitsDense/kernel": "guiding_code_lm/logits/kernel",
    "decoder/LogitsDense/bias": "guiding_code_lm/logits/bias",
}
NAMES = list(PATHS)
CASES = ["uvim_stage2", "uvim_stage2_bv_names", "uvim_stage1", "extended"]


@pytest.fixture(scope="module")
def ref():
    data = np.load(FIXTURE)
    return data, json.loads(str(data["meta_json"]))


def _reference_case(case):
    return "uvim_stage2" if case == "uvim_stage2_bv_names" else case


def _make_optimizer(case):
    from uvim_keras.optimizers import (
        UVIM_STAGE2_LR_MULTIPLIERS,
        BigVisionAdafactor,
        CosineWarmup,
    )

    sched = dict(total_steps=60, warmup_steps=2)  # as the fixture's meta
    if case == "uvim_stage2":
        return BigVisionAdafactor(
            learning_rate=CosineWarmup(1e-3, **sched), weight_decay=1e-6,
            lr_multipliers=UVIM_STAGE2_LR_MULTIPLIERS,
        )
    if case == "uvim_stage2_bv_names":  # big_vision's patterns, verbatim
        return BigVisionAdafactor(
            learning_rate=CosineWarmup(1e-3, **sched), weight_decay=1e-6,
            lr_multipliers=[("pos_embedding_encoder.*", 0.1), ("EmbedPatches.*", 0.1),
                            ("encoder.*", 0.1), ("decoder.*", 1.0)],
            weight_decay_multipliers=[(".*/kernel$", 1.0)],
            variable_names={path: name for name, path in PATHS.items()},
        )
    if case == "uvim_stage1":
        return BigVisionAdafactor(
            learning_rate=CosineWarmup(4e-4, **sched), weight_decay=4e-5,
            global_clipnorm=1.0,
        )
    if case == "extended":
        return BigVisionAdafactor(
            learning_rate=CosineWarmup(0.01, **sched), weight_decay=0.1,
            clipping_threshold=1.0, momentum_dtype="float32", global_clipnorm=1.0,
            weight_decay_multipliers=[(".*kernel", 1.0), (".*/encoder_posemb/embedding", 0.5)],
            lr_multipliers=[
                ("guiding_code_lm/logits/.*", 0.0),  # big_vision: schedule None
                ("guiding_code_lm/encoder/.*", 0.1),
                ("guiding_code_lm/token_embedding/.*", 3.0),
            ],
        )
    raise ValueError(case)


def _variable(path, value):
    import keras

    *scopes, leaf = path.split("/")
    with contextlib.ExitStack() as stack:
        for scope in scopes:
            stack.enter_context(keras.name_scope(scope))
        return keras.Variable(np.asarray(value, "float32"), name=leaf)


def _grads(data, k):
    from keras import ops

    return [ops.convert_to_tensor(data[f"grads/{k}/{n}"].astype("float32")) for n in NAMES]


def _bf16_bits_to_float(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def _ref_state(data, case, k, slot, name):
    """big_vision's state after step k (None for k < 0: zeros)."""
    if slot == "mu":
        key = f"{case}/state/{k}/mu_bf16bits/{name}"
        if key in data:
            return _bf16_bits_to_float(data[key])
        return data[f"{case}/state/{k}/mu/{name}"]
    return data[f"{case}/state/{k}/{slot}/{name}"]


def _params(data, case, k, name):
    return data[f"init/{name}"] if k < 0 else data[f"{case}/params/{k}/{name}"]


def _check_params(got, data, case, k, name, prev_k, what):
    want = _params(data, case, k, name)
    before = _params(data, case, prev_k, name)
    scale = np.max(np.abs(want - before))
    err = np.abs(got - want) - 2 * np.spacing(np.abs(want))
    assert np.max(err) <= RTOL * max(scale, 1e-30), (
        f"{what}: {name} max err {np.max(np.abs(got - want)):.3g} vs update {scale:.3g}"
    )


@pytest.mark.multibackend
@pytest.mark.parametrize("case", CASES)
def test_step_by_step_matches_big_vision(ref, case):
    import keras

    data, meta = ref
    rcase = _reference_case(case)
    steps = list(range(meta["num_steps"])) + meta["cases"][rcase]["late_steps"]
    variables = [_variable(PATHS[n], data[f"init/{n}"]) for n in NAMES]
    opt = _make_optimizer(case)
    opt.build(variables)
    frozen = set(meta["cases"][rcase]["unchanged_params"])
    for k in steps:
        for n, v in zip(NAMES, variables):
            v.assign(_params(data, rcase, k - 1, n))
            if k and n not in frozen:
                for slot, var in opt.slot_variables(v).items():
                    if var is not None:
                        var.assign(keras.ops.cast(_ref_state(data, rcase, k - 1, slot, n), var.dtype))
        opt.iterations.assign(k)
        opt.apply(_grads(data, k), variables)
        for n, v in zip(NAMES, variables):
            got = to_numpy(v)
            if n in frozen:
                np.testing.assert_array_equal(got, data[f"init/{n}"])
                assert all(s is None for s in opt.slot_variables(v).values())
                continue
            _check_params(got, data, rcase, k, n, k - 1, f"{case} step {k}")
            for slot, var in opt.slot_variables(v).items():
                if var is None:
                    continue
                got_s = to_numpy(keras.ops.cast(var, "float32"))
                want_s = _ref_state(data, rcase, k, slot, n)
                assert got_s.shape == want_s.shape, (slot, n)
                if slot == "mu" and var.dtype == "bfloat16":
                    ulp = np.spacing(np.abs(want_s).astype(np.float32)) * 2.0**16
                    off = got_s != want_s
                    assert np.all(np.abs(got_s - want_s) <= ulp), (case, k, n)
                    assert off.sum() <= max(2, off.size // 500), (case, k, n, off.sum())
                else:
                    # Second moments: 1e-6 of the tensor's largest entry (a few
                    # float32 ulps: means over 32+ entries, t ** -0.8, in
                    # another order than XLA's) plus 2 ulps of each entry.
                    tol = STATE_RTOL * np.max(np.abs(want_s)) + 2 * np.spacing(np.abs(want_s))
                    assert np.all(np.abs(got_s - want_s) <= tol), (case, k, slot, n)


@pytest.mark.multibackend
@pytest.mark.parametrize("case", CASES)
def test_five_steps_match_big_vision(ref, case):
    data, meta = ref
    rcase = _reference_case(case)
    variables = [_variable(PATHS[n], data[f"init/{n}"]) for n in NAMES]
    opt = _make_optimizer(case)
    for k in range(meta["num_steps"]):
        opt.apply(_grads(data, k), variables)
    worst = 0.0
    for n, v in zip(NAMES, variables):
        got, want = to_numpy(v), _params(data, rcase, meta["num_steps"] - 1, n)
        scale = max(np.max(np.abs(want - data[f"init/{n}"])), 1e-30)
        err = np.maximum(np.abs(got - want) - 2 * np.spacing(np.abs(want)), 0) / scale
        assert np.mean(err <= RTOL) >= 0.99, (case, n, np.mean(err <= RTOL))
        worst = max(worst, float(np.max(err)))
    assert worst <= 1e-2, (case, worst)
    assert int(to_numpy(opt.iterations)) == meta["num_steps"]


@pytest.mark.multibackend
def test_schedule_matches_big_vision(ref):
    from uvim_keras.optimizers import CosineWarmup

    data, meta = ref
    sched = CosineWarmup(1.0, total_steps=meta["total_steps"], warmup_steps=meta["warmup_steps"])
    steps, want = zip(*meta["cases"]["uvim_stage2"]["schedule_values"])
    got = [float(to_numpy(sched(k))) for k in steps]
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
    # Closed form over a longer run, with and without a floor.
    for alpha in (0.0, 0.1):
        s = CosineWarmup(2e-3, total_steps=100, warmup_steps=10, alpha=alpha)
        steps = np.arange(0, 120)
        progress = np.clip((steps - 10) / 90, 0, 1)
        expected = 2e-3 * (alpha + (1 - alpha) * 0.5 * (1 + np.cos(np.pi * progress)))
        expected *= np.minimum(1, steps / 10)
        np.testing.assert_allclose(to_numpy(s(steps)), expected, rtol=1e-5, atol=1e-10)
    assert float(to_numpy(CosineWarmup(1.0, 10)(0))) == 1.0  # no warmup


def test_factored_dims_follow_optax():
    from uvim_keras.optimizers.adafactor import _factored_dims

    assert _factored_dims((48,), 32) is None
    assert _factored_dims((8, 6), 32) is None
    assert _factored_dims((2, 2, 3, 40), 32) is None
    assert _factored_dims((31, 64), 32) is None
    assert _factored_dims((32, 34), 32) == (0, 1)
    assert _factored_dims((34, 32), 32) == (1, 0)
    assert _factored_dims((32, 32), 32) == (0, 1)  # tie: axis order
    assert _factored_dims((34, 1, 32), 32) == (2, 0)
    assert _factored_dims((4, 40, 36), 32) == (2, 1)
    assert _factored_dims((8, 6), 4) == (1, 0)


@pytest.mark.slow
def test_default_masks_agree_with_big_vision_names():
    """On uvim_keras models, the default weight-decay pattern and
    UVIM_STAGE2_LR_MULTIPLIERS (on variable paths) select what big_vision's
    `.*/kernel$` and stage-II `lr_mults` select on big_vision names."""
    import re

    from helpers import tiny_lm, tiny_stage1

    from uvim_keras.optimizers import (
        UVIM_STAGE2_LR_MULTIPLIERS,
        BigVisionAdafactor,
        big_vision_variable_names,
    )

    bv_lr_mults = [("pos_embedding_encoder.*", 0.1), ("EmbedPatches.*", 0.1),
                   ("encoder.*", 0.1), ("decoder.*", 1.0)]
    for model in (tiny_lm(), tiny_stage1()):
        names = big_vision_variable_names(model)
        is_lm = model.name == "guiding_code_lm"
        opt = BigVisionAdafactor(lr_multipliers=UVIM_STAGE2_LR_MULTIPLIERS if is_lm else None)
        bv_opt = BigVisionAdafactor(lr_multipliers=bv_lr_mults, variable_names=names,
                                    weight_decay_multipliers=[(".*/kernel$", 1.0)])
        for v in model.trainable_weights:
            assert v.path in names, v.path
            is_kernel = re.fullmatch(".*/kernel$", names[v.path]) is not None
            assert (opt.weight_decay_multiplier(v) == 1.0) == is_kernel, v.path
            assert bv_opt.weight_decay_multiplier(v) == opt.weight_decay_multiplier(v)
            if is_lm:
                assert opt.lr_multiplier(v) == bv_opt.lr_multiplier(v), v.path


@pytest.mark.multibackend
def test_config_round_trip():
    import keras

    from uvim_keras.optimizers import BigVisionAdafactor, CosineWarmup

    opt = BigVisionAdafactor(
        learning_rate=CosineWarmup(1e-3, total_steps=100, warmup_steps=10, alpha=0.05),
        weight_decay=1e-6, lr_multipliers={"a/.*": 0.1, "b/.*": 0.0},
        weight_decay_multipliers=[(".*kernel", 2.0)], variable_names={"a/k": "x/kernel"},
        clipping_threshold=1.0, momentum_dtype="float32", beta2_cap=0.999,
        decay_offset=3, global_clipnorm=1.0,
    )
    config = opt.get_config()
    json.dumps(keras.saving.serialize_keras_object(opt))  # JSON-able
    clone = BigVisionAdafactor.from_config(config)
    assert clone.get_config() == config
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(opt))
    assert type(again) is BigVisionAdafactor and again.get_config() == config
    assert isinstance(clone._learning_rate, CosineWarmup)
    assert config["weight_decay"] == 1e-6 and clone.weight_decay is None
    sched = CosineWarmup.from_config(CosineWarmup(1.0, 10, 2).get_config())
    assert sched.get_config() == CosineWarmup(1.0, 10, 2).get_config()


def test_bad_arguments():
    from uvim_keras.optimizers import BigVisionAdafactor, CosineWarmup

    with pytest.raises(ValueError, match="negative"):
        BigVisionAdafactor(lr_multipliers={"a": -1.0})
    with pytest.raises(ValueError, match="invalid regex"):
        BigVisionAdafactor(lr_multipliers={"(": 1.0})
    with pytest.raises(ValueError, match="starts with '/'"):
        BigVisionAdafactor(lr_multipliers={"/encoder/.*": 0.1})
    with pytest.raises(ValueError, match="pairs"):
        BigVisionAdafactor(lr_multipliers=["encoder"])
    with pytest.raises(ValueError, match="base_learning_rate"):
        import keras

        BigVisionAdafactor(
            learning_rate=keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.5),
            weight_decay=1e-4,
        )
    with pytest.raises(ValueError, match="warmup_steps"):
        CosineWarmup(1e-3, total_steps=10, warmup_steps=10)


def _tiny_model(seed=0):
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((8,))
    x = keras.layers.Dense(40, activation="relu", name="encoder_dense")(inputs)
    x = keras.layers.Dense(36, activation="relu", name="decoder_dense")(x)
    outputs = keras.layers.Dense(3, name="logits")(x)
    return keras.Model(inputs, outputs, name="toy")


@pytest.mark.multibackend
def test_fit_smoke(tmp_path):
    import keras

    from uvim_keras.optimizers import BigVisionAdafactor, CosineWarmup

    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 8)).astype("float32")
    y = (x[:, :3] * 2.0 + 0.5).astype("float32")
    model = _tiny_model()
    frozen_before = to_numpy(model.get_layer("logits").bias)
    opt = BigVisionAdafactor(
        learning_rate=CosineWarmup(0.05, total_steps=40, warmup_steps=4),
        weight_decay=1e-4, global_clipnorm=1.0,
        lr_multipliers={"encoder_dense/.*": 0.1, "logits/bias": 0.0},
    )
    model.compile(optimizer=opt, loss="mse")
    first = model.evaluate(x, y, verbose=0)
    history = model.fit(x, y, batch_size=16, epochs=10, verbose=0)
    assert history.history["loss"][-1] < 0.5 * first
    np.testing.assert_array_equal(to_numpy(model.get_layer("logits").bias), frozen_before)
    assert int(to_numpy(opt.iterations)) == 40
    kernel = model.get_layer("encoder_dense").kernel  # (8, 40): unfactored
    wide = model.get_layer("decoder_dense").kernel  # (40, 36): factored
    assert opt.slot_variables(wide)["v_row"] is not None
    assert opt.slot_variables(kernel)["v"] is not None
    assert opt.slot_variables(kernel)["mu"].dtype == "bfloat16"

    # Saving and loading keep the optimizer's configuration and state.
    path = tmp_path / "toy.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded.optimizer, BigVisionAdafactor)
    assert loaded.optimizer.get_config() == opt.get_config()
    saved = {v.path: to_numpy(keras.ops.cast(v, "float32")) for v in opt.variables}
    for v in loaded.optimizer.variables:
        np.testing.assert_array_equal(to_numpy(keras.ops.cast(v, "float32")), saved[v.path])


@pytest.mark.multibackend
def test_frozen_and_overwrite_with_gradient_variables():
    import keras

    from uvim_keras.optimizers import BigVisionAdafactor

    a = _variable("m/a/kernel", np.ones((4, 3)))
    b = _variable("m/b/kernel", np.ones((4, 3)))
    c = _variable("m/c/scale", np.ones((3,)))
    c.overwrite_with_gradient = True
    opt = BigVisionAdafactor(learning_rate=0.1, weight_decay=0.1, lr_multipliers={"m/b/.*": 0.0})
    grads = [keras.ops.full((4, 3), 2.0), keras.ops.full((4, 3), 1e6), keras.ops.full((3,), 5.0)]
    opt.apply(grads, [a, b, c])
    # a: beta2 = 0 at the first step, so u = g / |g| = 1 and m = 0.1 u; the
    # weight decay is wd * p * schedule (1 for a constant rate), not wd * lr * p.
    np.testing.assert_allclose(to_numpy(a), 1.0 - 0.1 * 0.1 - 0.1 * 1.0, rtol=1e-6)
    np.testing.assert_array_equal(to_numpy(b), 1.0)  # frozen
    np.testing.assert_array_equal(to_numpy(c), 5.0)  # overwritten by Keras
    assert opt.slot_variables(b) == {"v_row": None, "v_col": None, "v": None, "mu": None}
    assert opt.weight_decay_multiplier(b) == 0.0 and opt.lr_multiplier(b) == 0.0
