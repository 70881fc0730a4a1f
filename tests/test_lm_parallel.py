"""The non-autoregressive guiding-code LM (`GuidingCodeLM(autoregressive=False)`,
the paper's Table 2 "no Autoreg." ablation): structure, training, one-pass
generation, seeds, serialization, adaptation and the UViM pipeline."""

import numpy as np
import pytest

from common import to_numpy
from helpers import TINY_LM, panoptic_batch, randomize, tiny_lm, tiny_stage1

pytestmark = pytest.mark.multibackend

L, V = TINY_LM["code_len"], TINY_LM["dict_size"] + 1


def parallel_lm(seed=0, randomized=True, **overrides):
    lm = tiny_lm(seed=seed, autoregressive=False, **overrides)
    if randomized:  # the logits layer is zero-initialised
        randomize(lm, seed + 1)
    return lm


def images(n=3, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 16, 16, 3)).astype("float32")


def masked_argmax_codes(logits):
    """What greedy decoding of independent tokens gives: argmax with token 0
    (BOS) excluded, as codes (token - 1)."""
    logits = np.array(logits, "float32")
    logits[..., 0] = -np.inf
    return logits.argmax(-1).astype("int32") - 1


# -- structure ----------------------------------------------------------------------
@pytest.mark.slow
def test_parallel_lm_has_queries_and_non_causal_blocks_only():
    lm = parallel_lm(randomized=False)
    paths = [v.path for v in lm.weights]
    assert not any("token_embedding" in p or "decoder_posemb" in p for p in paths), paths
    queries = [v for v in lm.weights if "decoder_queries" in v.path]
    assert [tuple(v.shape) for v in queries] == [(1, L, TINY_LM["width"])]
    assert lm.token_embedding is None and lm.decoder_posemb is None
    assert all(not b.causal for b in lm.decoder_blocks)
    # Same vocabulary (BOS kept) and logits layer as the autoregressive LM.
    ar = tiny_lm()
    assert lm.vocab_size == ar.vocab_size == V
    assert tuple(lm.logits_dense.kernel.shape) == tuple(ar.logits_dense.kernel.shape)
    # One (1, L, W) table instead of the token embedding and the decoder posemb.
    assert len(ar.weights) == len(lm.weights) + 1


def test_default_is_the_autoregressive_lm():
    from uvim_keras import GuidingCodeLM

    lm = tiny_lm()
    assert lm.autoregressive is True and lm.get_config()["autoregressive"] is True
    assert lm.decoder_queries is None and lm.token_embedding is not None
    assert all(b.causal for b in lm.decoder_blocks)
    # A config saved before the option existed builds the autoregressive LM.
    config = lm.get_config()
    del config["autoregressive"]
    assert GuidingCodeLM.from_config(config).autoregressive is True


@pytest.mark.parametrize("value", ["no", 0, None])
def test_bad_autoregressive_and_causal_values(value):
    from uvim_keras.layers import DecoderBlock

    with pytest.raises(ValueError, match=r"autoregressive=.*expected True or False"):
        tiny_lm(autoregressive=value)
    with pytest.raises(ValueError, match=r"causal=.*expected True or False"):
        DecoderBlock(num_heads=2, mlp_dim=32, causal=value)


def test_decoder_block_causal_flag():
    """A causal block's position 0 ignores the later positions; a
    non-causal one sees all of them. The flag round-trips."""
    import keras

    from uvim_keras.layers import DecoderBlock

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 4, 16)).astype("float32")
    x2 = x.copy()
    x2[:, 3] = rng.normal(size=(2, 16))  # change the last position only
    encoded = rng.normal(size=(2, 5, 16)).astype("float32")
    outs = {}
    for causal in (True, False):
        keras.utils.set_random_seed(0)
        block = DecoderBlock(num_heads=2, mlp_dim=32, causal=causal)
        a, b = (to_numpy(block(v, encoded)) for v in (x, x2))
        outs[causal] = np.abs(a[:, :3] - b[:, :3]).max()
        assert block.get_config()["causal"] is causal
        assert DecoderBlock.from_config(block.get_config()).causal is causal
    assert outs[True] == 0.0 and outs[False] > 1e-4, outs
    with pytest.raises(ValueError, match="decode_step needs a causal block"):
        block.decode_step(x[:, :1], 0, None, None, None)


# -- training -------------------------------------------------------------------------
@pytest.mark.slow
def test_parallel_lm_fit_lowers_loss_and_learns_the_codes():
    import keras

    lm = parallel_lm(randomized=False)
    lm.compile(optimizer=keras.optimizers.Adam(1e-2))
    codes = np.tile(np.array([[1, 5, 5, 2]], "int32"), (8, 1))
    data = {"image": images(8), "codes": codes}
    before = float(lm.evaluate(data, batch_size=8, verbose=0, return_dict=True)["loss"])
    np.testing.assert_allclose(before, np.log(V), rtol=1e-5)  # zero logits: uniform
    lm.fit(data, epochs=30, batch_size=8, verbose=0)
    after = float(lm.evaluate(data, batch_size=8, verbose=0, return_dict=True)["loss"])
    assert after < 0.5 * before, (before, after)
    np.testing.assert_array_equal(to_numpy(lm.generate(data["image"][:2])), codes[:2])


def test_parallel_lm_loss_is_mean_token_cross_entropy():
    lm = parallel_lm()
    x = {"image": images(2), "codes": np.array([[0, 3, 7, 1], [2, 2, 5, 6]], "int32")}
    logits = to_numpy(lm(x))
    assert logits.shape == (2, L, V)
    shifted = logits - logits.max(-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    expected = -np.take_along_axis(logp, x["codes"][..., None] + 1, -1).mean()
    loss = float(to_numpy(lm.compute_loss(x=x, y_pred=lm(x))))
    np.testing.assert_allclose(loss, expected, rtol=1e-5)


# -- generation -----------------------------------------------------------------------
@pytest.mark.slow
def test_greedy_generate_is_the_masked_argmax_of_one_pass_whatever_the_codes():
    lm = parallel_lm()
    imgs = images(3)
    rng = np.random.default_rng(5)
    logits = [to_numpy(lm({"image": imgs, "codes": rng.integers(0, V - 1, (3, L))}))
              for _ in range(2)]
    np.testing.assert_array_equal(logits[0], logits[1])  # queries, not tokens
    codes = to_numpy(lm.generate(imgs))
    assert codes.shape == (3, L) and codes.dtype == np.int32
    np.testing.assert_array_equal(codes, masked_argmax_codes(logits[0]))


@pytest.mark.slow
def test_mask_bos_is_honoured():
    lm = parallel_lm()
    bias = to_numpy(lm.logits_dense.bias).copy()
    bias[0] = 1e3  # BOS wins every position unmasked
    lm.logits_dense.bias.assign(bias)
    imgs = images(2)
    masked = to_numpy(lm.generate(imgs))
    assert masked.min() >= 0 and masked.max() < V - 1
    np.testing.assert_array_equal(to_numpy(lm.generate(imgs, mask_bos=False)),
                                  np.full((2, L), V - 2))  # big_vision: code -1 -> last
    sampled = to_numpy(lm.generate(imgs, temperature=1.0, seed=0, mask_bos=False))
    np.testing.assert_array_equal(sampled, np.full((2, L), V - 2))
    sampled = to_numpy(lm.generate(imgs, temperature=1.0, seed=0))
    assert sampled.min() >= 0 and sampled.max() < V - 1


def test_generate_is_one_decoder_pass():
    """Every decoder block is called once per traced generate call, for any
    num_samples; the token-by-token path (`decode_step`) is never used."""
    lm = parallel_lm()
    calls = {"decode": 0}
    decode = lm.decode

    def counting_decode(*args, **kwargs):
        calls["decode"] += 1
        return decode(*args, **kwargs)

    lm.decode = counting_decode

    def no_loop(*args, **kwargs):
        raise AssertionError("the non-autoregressive LM decoded token by token")

    lm._sample_autoregressive = no_loop
    out = to_numpy(lm.generate(images(2), num_samples=3, temperature=1.0, seed=1))
    assert out.shape == (2, 3, L)
    assert calls["decode"] == 1, calls


@pytest.mark.slow
def test_sampling_shapes_ranges_and_seeds():
    lm = parallel_lm()
    imgs = images(3)
    for kwargs in ({}, {"top_k": 3}, {"top_p": 0.5}, {"top_k": 4, "top_p": 0.9}):
        a = to_numpy(lm.generate(imgs, num_samples=4, temperature=1.0, seed=7, **kwargs))
        assert a.shape == (3, 4, L) and a.dtype == np.int32
        assert a.min() >= 0 and a.max() < V - 1
        b = to_numpy(lm.generate(imgs, num_samples=4, temperature=1.0, seed=7, **kwargs))
        np.testing.assert_array_equal(a, b)
    c = to_numpy(lm.generate(imgs, num_samples=4, temperature=1.0, seed=8))
    assert not np.array_equal(a, c)
    # top_k=1 (and a tiny nucleus) sample the greedy code.
    greedy = to_numpy(lm.generate(imgs))
    for kwargs in ({"top_k": 1}, {"top_p": 1e-6}):
        s = to_numpy(lm.generate(imgs, num_samples=2, temperature=1.0, seed=3, **kwargs))
        np.testing.assert_array_equal(s, np.repeat(greedy[:, None], 2, axis=1))
    # A high temperature gives different samples of one image.
    hot = to_numpy(lm.generate(imgs[:1], num_samples=8, temperature=5.0, seed=0))[0]
    assert len({tuple(r) for r in hot}) > 1


def test_top_k_restricts_every_position():
    lm = parallel_lm()
    imgs = images(2)
    logits = to_numpy(lm({"image": imgs, "codes": np.zeros((2, L), "int32")}))
    logits[..., 0] = -np.inf
    allowed = np.argsort(-logits, axis=-1)[..., :2] - 1  # (B, L, 2) codes
    s = to_numpy(lm.generate(imgs, num_samples=16, temperature=3.0, top_k=2, seed=0))
    for b in range(2):
        for t in range(L):
            assert set(s[b, :, t]) <= set(allowed[b, t]), (b, t, s[b, :, t], allowed[b, t])


@pytest.mark.slow
def test_per_image_seeds_make_images_independent():
    lm = parallel_lm()
    imgs = images(3)
    seeds = [11, 22, 33]
    full = to_numpy(lm.generate(imgs, num_samples=2, temperature=1.0, seed=seeds))
    for i in range(3):
        alone = to_numpy(lm.generate(imgs[i:i + 1], num_samples=2, temperature=1.0,
                                     seed=[seeds[i]]))
        np.testing.assert_array_equal(alone[0], full[i])
    # Another image (and seed) beside image 1 does not change its samples.
    other = np.stack([images(1, seed=9)[0], imgs[1]])
    pair = to_numpy(lm.generate(other, num_samples=2, temperature=1.0, seed=[5, seeds[1]]))
    np.testing.assert_array_equal(pair[1], full[1])
    with pytest.raises(ValueError, match="sequence of 3 ints"):
        lm.generate(imgs, temperature=1.0, seed=[1, 2])


# -- serialization and adaptation ----------------------------------------------------------
@pytest.mark.slow
def test_config_and_keras_file_round_trip(tmp_path):
    import keras

    from uvim_keras import GuidingCodeLM

    lm = parallel_lm()
    config = lm.get_config()
    assert config["autoregressive"] is False
    clone = GuidingCodeLM.from_config(config)
    assert clone.get_config() == config and clone.autoregressive is False
    clone.set_weights(lm.get_weights())
    imgs = images(2)
    x = {"image": imgs, "codes": np.zeros((2, L), "int32")}
    np.testing.assert_array_equal(to_numpy(clone(x)), to_numpy(lm(x)))
    lm.save(tmp_path / "lm.keras")
    loaded = keras.saving.load_model(tmp_path / "lm.keras")
    assert isinstance(loaded, GuidingCodeLM) and loaded.autoregressive is False
    np.testing.assert_array_equal(to_numpy(loaded(x)), to_numpy(lm(x)))
    for kwargs in ({}, {"num_samples": 3, "temperature": 1.0, "seed": 4}):
        np.testing.assert_array_equal(to_numpy(loaded.generate(imgs, **kwargs)),
                                      to_numpy(lm.generate(imgs, **kwargs)))


@pytest.mark.slow
def test_int8_and_lora(tmp_path):
    import keras

    lm = parallel_lm()
    imgs = images(2)
    lm.quantize("int8")
    codes = to_numpy(lm.generate(imgs))
    assert codes.shape == (2, L) and codes.min() >= 0 and codes.max() < V - 1
    lm.save(tmp_path / "int8.keras")
    loaded = keras.saving.load_model(tmp_path / "int8.keras")
    np.testing.assert_array_equal(to_numpy(loaded.generate(imgs)), codes)

    lora = parallel_lm()
    paths = lora.enable_lora(2)
    assert any("decoder_block_0/self_attention/query" in p for p in paths), paths
    lora.compile(optimizer=keras.optimizers.Adam(1e-2))
    lora.fit({"image": imgs, "codes": np.ones((2, L), "int32")}, epochs=2, batch_size=2,
             verbose=0)
    assert to_numpy(lora.generate(imgs)).shape == (2, L)


# -- the whole UViM ----------------------------------------------------------------------
@pytest.mark.slow
def test_uvim_from_stage1_with_a_parallel_lm(tmp_path):
    import keras

    from uvim_keras import UViM

    lm = parallel_lm()
    stage1 = tiny_stage1()
    randomize(stage1, 3)
    uvim = UViM.from_stage1(lm, stage1)
    imgs = panoptic_batch(3)["image"]
    out = uvim.predict(imgs, verbose=0)
    assert out.shape == (3, 16, 16, 2)
    expected = to_numpy(uvim.decode_codes(lm.generate(imgs), imgs))
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(uvim.sample(imgs, 1, temperature=0.0)[:, 0], out)
    a = uvim.sample(imgs, num_samples=2, temperature=1.0, seed=7)
    assert a.shape == (3, 2, 16, 16, 2)
    np.testing.assert_array_equal(a, uvim.sample(imgs, num_samples=2, temperature=1.0, seed=7))
    runs = [uvim.predict(imgs, batch_size=bs, temperature=1.0, seed=3, verbose=0)
            for bs in (1, 3)]
    np.testing.assert_array_equal(runs[0], runs[1])
    uvim.save(tmp_path / "uvim.keras")
    loaded = keras.saving.load_model(tmp_path / "uvim.keras")
    assert loaded.lm.autoregressive is False
    np.testing.assert_array_equal(loaded.predict(imgs, verbose=0), out)
