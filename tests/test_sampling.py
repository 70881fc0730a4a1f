"""GuidingCodeLM.generate and sampling.select_tokens: greedy, seeds, top-k,
top-p, the BOS token and argument checks, checked against teacher forcing."""

import numpy as np
import pytest
from common import to_numpy

pytestmark = pytest.mark.multibackend

CFG = dict(input_size=16, patch_size=8, code_len=6, dict_size=9, width=16, num_layers=1,
           num_heads=2, mlp_dim=32)
VOCAB = CFG["dict_size"] + 1
NUM_IMAGES = 3
S = 40  # samples per image


def _init_weights(model, seed=0):
    """Deterministic numpy weights, identical on every backend (no global seed:
    `keras.utils.set_random_seed` would import TensorFlow). The zero-initialised
    logits Dense gets random weights too: logits of std ~1 on the
    unit-variance LayerNorm output, neither flat nor peaked."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        shape, name = tuple(v.shape), v.path.split("/")[-1]
        z = rng.normal(size=shape)
        if name == "gamma":
            value = 1 + 0.1 * z
        elif name == "beta" or name.endswith("bias"):
            value = 0.1 * z
        elif "embedding" in name:
            value = 0.5 * z
        else:
            value = z / np.sqrt(np.prod(shape[:-1]))
        v.assign(value.astype("float32"))


@pytest.fixture(scope="module")
def lm():
    from uvim_keras.runtime.backend import compile_stateless
    from uvim_keras.models import GuidingCodeLM

    model = GuidingCodeLM(**CFG)
    _init_weights(model)
    # Compiled teacher forcing (eager jax compiles every op on first use).
    model.test_teacher_forcing = compile_stateless(
        model, lambda image, codes: model({"image": image, "codes": codes})
    )
    return model


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(1)
    size = CFG["input_size"]
    return rng.uniform(-1, 1, (NUM_IMAGES, size, size, 3)).astype("float32")


class _Bias0:
    """Temporarily sets the token-0 logit bias."""

    def __init__(self, lm, value):
        self.lm, self.value = lm, value

    def __enter__(self):
        self.saved = to_numpy(self.lm.logits_dense.bias).copy()
        bias = self.saved.copy()
        bias[0] = self.value
        self.lm.logits_dense.bias.assign(bias)

    def __exit__(self, *exc):
        self.lm.logits_dense.bias.assign(self.saved)


def _sample(lm, images, **kwargs):
    """All sampling calls share one shape (fewer compilations)."""
    out = to_numpy(lm.generate(images, num_samples=S, temperature=1.0, **kwargs))
    assert out.shape == (NUM_IMAGES, S, CFG["code_len"]) and out.dtype == np.int32
    return out


def _tf_logits(lm, images, codes, mask_bos=True):
    """Teacher-forced logits (N, L, V) on codes (N, L) or (B, S, L); LM tokens (N, L)."""
    codes = np.asarray(codes)
    if codes.ndim == 3:
        images = np.repeat(images, codes.shape[1], axis=0)
        codes = codes.reshape(-1, codes.shape[-1])
    logits = to_numpy(lm.test_teacher_forcing(images, codes)).astype("float64")
    if mask_bos:
        logits[..., 0] = -np.inf
    return logits, codes + 1


def _topk_ok(logits, tokens, k, slack=1e-4):
    kth = np.sort(logits, axis=-1)[..., -k]
    chosen = np.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
    return chosen >= kth - slack


def _nucleus(logits, tokens, top_p, slack=1e-4):
    """(token's preceding probability mass < top_p, nucleus sizes)."""
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    chosen = np.take_along_axis(p, tokens[..., None], axis=-1)
    mass_before = np.where(p > chosen, p, 0).sum(-1)
    ordered = np.sort(p, -1)[..., ::-1]
    sizes = ((ordered.cumsum(-1) - ordered) < top_p).sum(-1)
    return mass_before < top_p + slack, sizes


def _tile(codes):
    return np.repeat(codes[:, None], S, axis=1)


def test_greedy_is_argmax_of_teacher_forced_logits(lm, images):
    codes = to_numpy(lm.generate(images))
    assert codes.shape == (NUM_IMAGES, CFG["code_len"]) and codes.dtype == np.int32
    assert ((codes >= 0) & (codes < CFG["dict_size"])).all()
    logits, tokens = _tf_logits(lm, images, codes)
    np.testing.assert_array_equal(logits.argmax(-1), tokens)
    top2 = np.sort(logits, -1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0]).min() > 1e-4  # not a tie
    assert len(np.unique(codes)) > 1


def test_greedy_codes_of_one_image_equal_its_row_in_a_batch(lm, images):
    """A batch of one decodes with the MLP kernels as stored (no transposed
    copies, `MlpBlock.decoding_kernels`); its codes are the batch's."""
    batch = to_numpy(lm.generate(images))
    for i in range(NUM_IMAGES):
        np.testing.assert_array_equal(to_numpy(lm.generate(images[i:i + 1]))[0], batch[i])


def test_sampling_is_reproducible_with_a_seed(lm, images):
    a, b, c = _sample(lm, images, seed=3), _sample(lm, images, seed=3), _sample(lm, images, seed=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert len({row.tobytes() for row in a.reshape(-1, CFG["code_len"])}) > 5


def test_samples_equal_decoding_repeated_images(lm, images):
    """num_samples encodes each image once; the codes are those of decoding
    the image repeated num_samples times (same noise, same seed)."""
    once = _sample(lm, images, seed=5)
    repeated = to_numpy(lm.generate(np.repeat(images, S, axis=0), temperature=1.0, seed=5))
    np.testing.assert_array_equal(once.reshape(-1, CFG["code_len"]), repeated)


def test_per_image_seeds_make_samples_independent_of_the_batch(lm, images):
    seeds = [11 + i for i in range(NUM_IMAGES)]
    together = _sample(lm, images, seed=seeds)
    # the same images in another order, with their own seeds, give the same codes
    order = np.arange(NUM_IMAGES)[::-1]
    shuffled = _sample(lm, images[order], seed=[seeds[i] for i in order])
    np.testing.assert_array_equal(shuffled, together[order])
    assert not np.array_equal(_sample(lm, images, seed=seeds[::-1]), together)


@pytest.mark.parametrize("seed", [[1, 2], [1.0] * NUM_IMAGES, "abc"])
def test_bad_per_image_seeds_raise(lm, images, seed):
    with pytest.raises(ValueError, match=rf"seed=.*expected None, an int or a sequence of "
                                         rf"{NUM_IMAGES} ints"):
        lm.generate(images, temperature=1.0, seed=seed)


def test_top_k_one_equals_greedy(lm, images):
    greedy = to_numpy(lm.generate(images))
    for seed in (0, 1):
        np.testing.assert_array_equal(_sample(lm, images, top_k=1, seed=seed), _tile(greedy))


def test_top_k_restricts_the_support(lm, images):
    k = 2
    samples = _sample(lm, images, top_k=k, seed=0)
    logits, tokens = _tf_logits(lm, images, samples)
    assert _topk_ok(logits, tokens, k).all()
    assert len(np.unique(tokens)) > k  # the top k differ between prefixes
    assert not (tokens == logits.argmax(-1)).all()  # and it does sample
    # The check can fail: unrestricted samples leave the top k.
    free = _sample(lm, images, seed=0)
    logits, tokens = _tf_logits(lm, images, free)
    assert not _topk_ok(logits, tokens, k).all()


def test_top_p_restricts_to_the_nucleus(lm, images):
    top_p = 0.6
    samples = _sample(lm, images, top_p=top_p, seed=0)
    logits, tokens = _tf_logits(lm, images, samples)
    ok, sizes = _nucleus(logits, tokens, top_p)
    assert ok.all()
    assert (sizes < VOCAB - 1).mean() > 0.5  # the nucleus is a real restriction
    assert (sizes > 1).any() and not (tokens == logits.argmax(-1)).all()
    # The check can fail: unrestricted samples leave the nucleus.
    free = _sample(lm, images, seed=0)
    logits, tokens = _tf_logits(lm, images, free)
    assert not _nucleus(logits, tokens, top_p)[0].all()


def test_token_zero_is_masked_unless_asked(lm, images):
    dict_size = CFG["dict_size"]
    greedy = to_numpy(lm.generate(images))
    sampled = _sample(lm, images, seed=2)
    with _Bias0(lm, 100.0):
        logits, _ = _tf_logits(lm, images, greedy, mask_bos=False)
        assert (logits.argmax(-1) == 0).all()
        # Token 0 dominates every step, yet it is never emitted: the result
        # is exactly what the other logits choose.
        np.testing.assert_array_equal(to_numpy(lm.generate(images)), greedy)
        np.testing.assert_array_equal(_sample(lm, images, seed=2), sampled)
        # big_vision behaviour: token 0 -> code -1 -> the last codeword.
        raw = to_numpy(lm.generate(images, mask_bos=False))
        assert (raw == dict_size - 1).all()
    assert not (greedy == dict_size - 1).all()
    np.testing.assert_array_equal(to_numpy(lm.generate(images)), greedy)  # bias restored


@pytest.mark.parametrize(
    "kwargs, name",
    [
        (dict(num_samples=0), "num_samples"),
        (dict(num_samples=1.5), "num_samples"),
        (dict(temperature=-1.0), "temperature"),
        (dict(temperature=float("nan")), "temperature"),
        (dict(temperature=1.0, top_k=VOCAB), "top_k"),
        (dict(temperature=1.0, top_k=-1), "top_k"),
        (dict(temperature=1.0, top_p=1.5), "top_p"),
        (dict(temperature=1.0, top_p=-0.1), "top_p"),
    ],
)
def test_bad_arguments_raise(lm, images, kwargs, name):
    with pytest.raises(ValueError, match=name):
        lm.generate(images, **kwargs)


def test_select_tokens_directly():
    from uvim_keras.models.sampling import gumbel_noise, select_tokens

    logits = np.array([[5.0, 1.0, 3.0, 2.9, -1.0], [0.0, 0.1, 0.2, 4.0, 3.9]], "float32")
    np.testing.assert_array_equal(to_numpy(select_tokens(logits, None, 0.0)), [2, 3])
    np.testing.assert_array_equal(
        to_numpy(select_tokens(logits, None, 0.0, mask_bos=False)), [0, 3]
    )
    noise = to_numpy(gumbel_noise((8000, 5), seed=0))
    assert np.isfinite(noise).all()
    both = np.tile(logits, (4000, 1))
    draws = to_numpy(select_tokens(both, noise, 1.0, top_k=2)).reshape(-1, 2)
    assert set(np.unique(draws[:, 0])) == {2, 3} and set(np.unique(draws[:, 1])) == {3, 4}
    # Gumbel-max gives the softmax frequencies ...
    row = np.repeat(logits[1:], 8000, 0)
    many = to_numpy(select_tokens(row, noise, 1.0, mask_bos=False))
    p = np.exp(logits[1] - logits[1].max())
    p /= p.sum()
    np.testing.assert_allclose(np.bincount(many, minlength=5) / len(many), p, atol=0.02)
    # ... of softmax(logits / T).
    hot = to_numpy(select_tokens(row, noise, 4.0, mask_bos=False))
    p = np.exp((logits[1] - logits[1].max()) / 4.0)
    p /= p.sum()
    np.testing.assert_allclose(np.bincount(hot, minlength=5) / len(hot), p, atol=0.02)
    # top_p keeps the smallest prefix whose mass reaches top_p: here {3, 4}.
    probs = np.exp(logits[1] - logits[1].max())
    probs /= probs.sum()
    assert probs[3] < 0.55 < probs[3] + probs[4]
    nucleus = to_numpy(select_tokens(row, noise, 1.0, top_p=0.55, mask_bos=False))
    assert set(np.unique(nucleus)) == {3, 4}


@pytest.mark.slow
def test_per_image_noise_is_keras_noise_of_each_seed_also_when_compiled():
    """In-graph per-image noise (what `UViM.predict` uses) equals Keras' own
    draw for each int seed, in eager code and inside a compiled function."""
    import keras

    from uvim_keras.runtime.backend import compile_stateless
    from uvim_keras.models.sampling import gumbel_noise, per_image_noise

    seeds = np.array([7, 2**31 - 5, 0], "int32")
    expected = np.concatenate(
        [to_numpy(gumbel_noise((4, 2, VOCAB), int(s))) for s in seeds], axis=1)
    np.testing.assert_array_equal(to_numpy(per_image_noise(seeds, 4, 2, VOCAB)), expected)
    compiled = compile_stateless(keras.layers.Identity(),
                                 lambda s: per_image_noise(s, 4, 2, VOCAB))
    got = to_numpy(compiled(seeds)).reshape(4, 3, 2, VOCAB)
    reversed_seeds = to_numpy(compiled(seeds[::-1])).reshape(4, 3, 2, VOCAB)
    np.testing.assert_array_equal(reversed_seeds[:, ::-1], got)  # its own seed only
    assert not np.array_equal(got[:, 0], got[:, 2])
    if keras.backend.backend() != "tensorflow":  # XLA draws another Philox stream there
        np.testing.assert_allclose(got.reshape(4, 6, VOCAB), expected, rtol=1e-6)


def test_large_models_skip_xla_on_tensorflow_cpu_with_the_same_codes(lm, images, monkeypatch):
    """TensorFlow on the CPU XLA-compiles decoding only for small models;
    both paths give the same greedy and sampled codes (other backends: no
    switch, the same codes trivially)."""
    import keras

    from uvim_keras.models import GuidingCodeLM
    from uvim_keras.runtime import backend

    def codes():
        fresh = GuidingCodeLM(**CFG)  # new compiled functions
        fresh.set_weights(lm.get_weights())
        return (to_numpy(fresh.generate(images)),
                to_numpy(fresh.generate(images, temperature=1.0, seed=3)))

    xla = codes()
    monkeypatch.setattr(backend, "TF_CPU_XLA_MAX_BYTES", 0)
    kernels = codes()
    np.testing.assert_array_equal(kernels[0], xla[0])
    np.testing.assert_array_equal(kernels[1], xla[1])
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        on_gpu = bool(tf.config.list_logical_devices("GPU"))
        assert backend._tf_xla(lm.variables) == on_gpu
        monkeypatch.setattr(backend, "TF_CPU_XLA_MAX_BYTES", 2**40)
        assert backend._tf_xla(lm.variables)
