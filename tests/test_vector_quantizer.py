"""VectorQuantizer: big_vision parity (EMA update, LBG splitting) and properties.

Parity cases come from every `stageI_*_io.npz` in the fixture directory that
has `train/*` entries; "light" files (no train entries) are skipped.
"""

import numpy as np
import pytest
from common import big_vision_io_files, load_io, to_numpy

IO_FILES = big_vision_io_files("stageI_*_io.npz")
TOL = 1e-5


def _train_io(path):
    io, meta = load_io(path)
    if not any(k.startswith("train/") for k in io.files):
        pytest.skip(f"{path.name} has no train/* entries (light fixture)")
    return io, meta


def _fixture_vq(io, meta, prefix):
    from uvim_keras.layers import VectorQuantizer

    dictionary = io[f"{prefix}/dictionary_before"]
    dict_size, dim = dictionary.shape
    vq = VectorQuantizer(
        dict_size, dim, momentum=meta.get("dict_momentum", 0.995),
        min_count=meta.get("min_count", 0.1), seed=0,
    )
    vq.build((None, None, dim))
    vq.dictionary.assign(dictionary)
    vq.counts.assign(io[f"{prefix}/counts_before"])
    return vq


def _np_split(dictionary, counts, min_count):
    """Noise-free LBG reference: (dictionary, counts, pairs, noise_depth, lost).

    noise_depth[r] = how many U(1 - p, 1 + p) factors row r carries;
    lost = the counts that splits overwrote (they leave the total).
    """
    d = np.array(dictionary, np.float64)
    c = np.array(counts, np.float64)
    depth = np.zeros(len(c), int)
    pairs, lost = [], 0.0
    while len(pairs) < len(c) and (c < min_count).any():
        i_max, i_min = int(np.argmax(c)), int(np.argmin(c))
        lost += c[i_min]
        d[i_min] = d[i_max]
        depth[i_min] = depth[i_max] + 1
        c[i_min] = c[i_max] = c[i_max] / 2
        d[[i_max, i_min]] /= 2
        pairs.append((i_max, i_min))
    return d, c, np.array(pairs, int).reshape(-1, 2), depth, lost


def _assert_noisy_rows(actual, expected, depth, perturb, what):
    """Rows with depth n equal `expected` times n elementwise U(1-p, 1+p) factors."""
    band = (1 + perturb) ** depth[:, None] - 1
    err = np.abs(actual - expected)
    allowed = np.abs(expected) * (band + TOL) + TOL
    assert (err <= allowed).all(), f"{what}: max excess {np.max(err - allowed)}"


# -- parity with big_vision ------------------------------------------------


@pytest.mark.multibackend
@pytest.mark.parametrize("io_path", IO_FILES, ids=lambda p: p.name)
def test_nosplit_update_matches_big_vision(io_path):
    io, meta = _train_io(io_path)
    vq = _fixture_vq(io, meta, "train/nosplit")
    out = vq(io["debug/encoder_head_out"], training=True)

    codes = to_numpy(out["codes"])
    np.testing.assert_array_equal(codes, io["train/nosplit/code"])
    np.testing.assert_array_equal(
        np.bincount(codes.ravel(), minlength=vq.dict_size), io["train/nosplit/batch_counts"]
    )
    np.testing.assert_allclose(to_numpy(out["bottleneck"]), io["eval/bottleneck"], atol=TOL)
    np.testing.assert_allclose(to_numpy(vq.counts), io["train/nosplit/counts_after"], atol=TOL)
    np.testing.assert_allclose(
        to_numpy(vq.dictionary), io["train/nosplit/dictionary_after"], atol=TOL, rtol=TOL
    )
    for k in ("codebook_max_ratio", "codebook_zeros_ratio"):
        assert float(to_numpy(out[k])) == pytest.approx(float(io[f"train/nosplit/{k}"]), abs=1e-7)


@pytest.mark.multibackend
@pytest.mark.parametrize("io_path", IO_FILES, ids=lambda p: p.name)
def test_split_loop_matches_big_vision(io_path):
    from uvim_keras.layers import split_dead_codewords

    io, meta = _train_io(io_path)
    d_mom = io["train/split/dictionary_after_momentum"]
    c_mom = io["train/split/counts_after_momentum"]
    want_pairs = io["train/split/split_pairs"].reshape(-1, 2)
    k, dim = d_mom.shape

    # The layer's function, without noise: same pairs, counts, and the
    # noise-free rows of the numpy reference.
    d, c, pairs = split_dead_codewords(
        d_mom, c_mom, np.ones(k + dim, "float32"), meta.get("min_count", 0.1), dim,
        return_pairs=True,
    )
    pairs = to_numpy(pairs)
    np.testing.assert_array_equal(pairs[: len(want_pairs)], want_pairs)
    assert (pairs[len(want_pairs):] == -1).all()
    np.testing.assert_allclose(to_numpy(c), io["train/split/counts_after"], atol=TOL)
    ref_d, ref_c, ref_pairs, depth, _ = _np_split(d_mom, c_mom, meta.get("min_count", 0.1))
    np.testing.assert_array_equal(ref_pairs, want_pairs)
    np.testing.assert_allclose(ref_c, io["train/split/counts_after"], atol=TOL)
    np.testing.assert_allclose(to_numpy(d), ref_d, atol=TOL, rtol=TOL)
    # big_vision's own result lies in the noise band of the reference.
    _assert_noisy_rows(io["train/split/dictionary_after"], ref_d, depth, 1e-3, "big_vision")


@pytest.mark.multibackend
@pytest.mark.parametrize("io_path", IO_FILES, ids=lambda p: p.name)
def test_split_update_through_layer_matches_big_vision(io_path):
    io, meta = _train_io(io_path)
    vq = _fixture_vq(io, meta, "train/split")
    out = vq(io["debug/encoder_head_out"], training=True)
    # Codewords are normalised rows of dictionary / counts: counts do not
    # change them, so the codes are those of the nosplit case (same batch).
    if np.array_equal(io["train/split/dictionary_before"], io["train/nosplit/dictionary_before"]):
        np.testing.assert_array_equal(to_numpy(out["codes"]), io["train/nosplit/code"])

    want_d = io["train/split/dictionary_after"]
    np.testing.assert_allclose(to_numpy(vq.counts), io["train/split/counts_after"], atol=TOL)
    ref_d, _, _, depth, _ = _np_split(
        io["train/split/dictionary_after_momentum"],
        io["train/split/counts_after_momentum"],
        vq.min_count,
    )
    got_d = to_numpy(vq.dictionary)
    clean = depth == 0
    np.testing.assert_allclose(got_d[clean], want_d[clean], atol=TOL, rtol=TOL)
    _assert_noisy_rows(got_d, ref_d, depth, vq.perturb, "keras")
    # ... and the noise is really applied to the written rows.
    rel = np.abs(got_d[~clean] / ref_d[~clean] - 1)
    assert (rel.max(axis=-1) > 1e-5).all()


# -- properties --------------------------------------------------------------


@pytest.mark.multibackend
def test_split_invariants_on_random_counts():
    from uvim_keras.layers import split_dead_codewords

    rng = np.random.default_rng(0)
    k, dim, min_count = 32, 8, 0.1
    for trial in range(3):
        counts = rng.uniform(0.5, 5.0, k).astype("float32")
        dead = rng.choice(k, size=5 + 3 * trial, replace=False)
        counts[dead] = rng.uniform(0.0, min_count * 0.9, len(dead))
        dictionary = rng.normal(size=(k, dim)).astype("float32")
        noise = rng.uniform(0.999, 1.001, k + dim).astype("float32")
        d, c, pairs = split_dead_codewords(
            dictionary, counts, noise, min_count, dim, return_pairs=True
        )
        c, pairs = to_numpy(c), to_numpy(pairs)
        ref_d, ref_c, ref_pairs, depth, lost = _np_split(dictionary, counts, min_count)
        np.testing.assert_array_equal(pairs[: len(ref_pairs)], ref_pairs)
        assert (pairs[len(ref_pairs):] == -1).all()
        assert (c >= min_count).all()
        np.testing.assert_allclose(c, ref_c, rtol=1e-6)
        # The total is conserved except for the dead counts the splits overwrite.
        assert c.sum() == pytest.approx(counts.sum() - lost, rel=1e-6)
        assert lost < len(ref_pairs) * min_count
        _assert_noisy_rows(to_numpy(d), ref_d, depth, 1e-3, "random")


@pytest.mark.multibackend
def test_split_loop_is_bounded_for_a_degenerate_dictionary():
    from uvim_keras.layers import split_dead_codewords

    k, dim = 8, 4
    counts = np.full(k, 1e-3, "float32")
    counts[0] = 0.01
    d, c, pairs = split_dead_codewords(
        np.ones((k, dim), "float32"), counts, np.ones(k + dim, "float32"), 0.1, dim,
        return_pairs=True,
    )
    assert (to_numpy(pairs) >= 0).all()  # exactly k splits, then it stops
    assert np.isfinite(to_numpy(d)).all() and np.isfinite(to_numpy(c)).all()


def _cluster_stream(rng, centers, n, noise=0.3):
    idx = rng.integers(0, len(centers), n)
    return (centers[idx] + noise * rng.normal(size=(n, centers.shape[1]))).astype("float32")


def _compiled_train_step(vq):
    """x -> codebook_zeros_ratio of a training call, compiled on jax / tf.

    Eager jax re-traces the split while_loop at every call (~0.3 s); a stream
    of steps needs the compiled form. Call `sync()` before reading weights.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        @jax.jit
        def step(trainable, non_trainable, x):
            out, non_trainable = vq.stateless_call(trainable, non_trainable, x, training=True)
            return out["codebook_zeros_ratio"], non_trainable

        trainable = [v.value for v in vq.trainable_variables]
        state = [[v.value for v in vq.non_trainable_variables]]

        def run(x):
            zeros, state[0] = step(trainable, state[0], x)
            return zeros

        def sync():
            for v, value in zip(vq.non_trainable_variables, state[0]):
                v.assign(value)

        return run, sync
    if backend == "tensorflow":
        import tensorflow as tf

        fn = tf.function(lambda x: vq(x, training=True)["codebook_zeros_ratio"])
        return fn, lambda: None
    return (lambda x: vq(x, training=True)["codebook_zeros_ratio"]), (lambda: None)


@pytest.mark.multibackend
def test_dead_words_are_revived_on_a_toy_stream():
    from uvim_keras.layers import VectorQuantizer

    rng = np.random.default_rng(0)
    k, dim, num_clusters = 16, 8, 4
    base = rng.normal(size=dim)
    centers = base + 0.8 * rng.normal(size=(num_clusters, dim))
    vq = VectorQuantizer(k, dim, momentum=0.7, min_count=0.1, seed=1)
    vq.build((None, None, dim))
    # Word 0 sits on the data; the others point away from it, so every input
    # picks word 0 and the rest die (their counts decay below min_count).
    data_dir = (base - base.mean()) / base.std()
    dictionary = np.tile(-data_dir, (k, 1)) + 0.01 * rng.normal(size=(k, dim))
    dictionary[0] = data_dir
    vq.dictionary.assign(dictionary.astype("float32"))

    def used(x):
        return len(np.unique(to_numpy(vq(x[None], training=False)["codes"])))

    probe = _cluster_stream(np.random.default_rng(1), centers, 512)
    start = used(probe)
    step, sync = _compiled_train_step(vq)
    zeros = [
        float(to_numpy(step(_cluster_stream(rng, centers, 64)[None]))) for _ in range(50)
    ]
    sync()
    end = used(probe)
    counts = to_numpy(vq.counts)
    assert start == 1
    assert zeros[0] == (k - 1) / k
    assert end >= 2 * num_clusters, (start, end)
    assert np.mean(zeros[-10:]) < 0.5, zeros
    assert (counts >= vq.min_count).all()
    assert np.isfinite(to_numpy(vq.dictionary)).all()


def _grad_of_sum(fn, x, w):
    """d/dx sum(w * fn(x)) on the active backend."""
    import keras

    backend = keras.backend.backend()
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        return np.asarray(jax.grad(lambda v: jnp.sum(w * fn(v)))(jnp.asarray(x)))
    if backend == "tensorflow":
        import tensorflow as tf

        v = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(v)
            loss = tf.reduce_sum(w * fn(v))
        return tape.gradient(loss, v).numpy()
    if backend == "torch":
        import torch

        v = torch.tensor(x, requires_grad=True)
        loss = torch.sum(torch.as_tensor(w) * fn(v))
        loss.backward()
        return v.grad.detach().cpu().numpy()
    pytest.skip(f"no gradient helper for {backend}")


@pytest.mark.multibackend
def test_straight_through_gradient():
    from uvim_keras.layers import VectorQuantizer, standardize

    rng = np.random.default_rng(0)
    vq = VectorQuantizer(16, 8, seed=0)
    vq.build((None, None, 8))
    x = rng.normal(size=(2, 5, 8)).astype("float32") * 3 + 1
    w = rng.normal(size=(2, 5, 8)).astype("float32")  # linear loss: same dL/dy everywhere
    out = vq(x)
    q, s = to_numpy(out["quantized"]), to_numpy(out["bottleneck"])
    assert np.abs(q - s).max() > 0.1  # the forward value is the codeword, not x
    np.testing.assert_allclose(q, to_numpy(vq.lookup(out["codes"])), atol=1e-6)

    g_q = _grad_of_sum(lambda v: vq(v)["quantized"], x, w)
    g_s = _grad_of_sum(standardize, x, w)
    assert np.abs(g_q).max() > 1e-3
    np.testing.assert_allclose(g_q, g_s, atol=1e-5, rtol=1e-4)


@pytest.mark.multibackend
def test_mixed_precision_keeps_float32_distances_and_state():
    import keras

    from uvim_keras.layers import VectorQuantizer

    rng = np.random.default_rng(0)
    k, dim = 256, 16
    dictionary = rng.normal(size=(k, dim)).astype("float32")
    counts = rng.uniform(0.5, 3.0, k).astype("float32")
    x = rng.normal(size=(8, 256, dim)).astype("float32")
    # Both layers see the same bfloat16-representable input.
    x = to_numpy(keras.ops.cast(keras.ops.cast(x, "bfloat16"), "float32"))

    def run(policy):
        old = keras.mixed_precision.global_policy()
        keras.mixed_precision.set_global_policy(policy)
        try:
            vq = VectorQuantizer(k, dim, seed=0)
            vq.build((None, None, dim))
            vq.dictionary.assign(dictionary)
            vq.counts.assign(counts)
            out = vq(x, training=True)
        finally:
            keras.mixed_precision.set_global_policy(old)
        return vq, out

    vq32, out32 = run("float32")
    vq16, out16 = run("mixed_bfloat16")
    assert keras.mixed_precision.global_policy().name == "float32"
    assert "bfloat16" in str(out16["quantized"].dtype)
    assert vq16.dictionary.dtype == "float32" and vq16.counts.dtype == "float32"
    np.testing.assert_array_equal(to_numpy(out16["codes"]), to_numpy(out32["codes"]))
    np.testing.assert_allclose(to_numpy(vq16.counts), to_numpy(vq32.counts), rtol=1e-6)
    np.testing.assert_allclose(
        to_numpy(vq16.dictionary), to_numpy(vq32.dictionary), rtol=1e-5, atol=1e-5
    )


@pytest.mark.multibackend
def test_inference_and_frozen_layer_never_update_state():
    from uvim_keras.layers import VectorQuantizer

    rng = np.random.default_rng(0)
    vq = VectorQuantizer(16, 8, min_count=0.5, seed=0)
    vq.build((None, None, 8))
    counts = rng.uniform(1, 3, 16).astype("float32")
    counts[[2, 5]] = 0.01  # splits pending
    vq.counts.assign(counts)
    d0 = to_numpy(vq.dictionary).copy()
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    for training in (None, False):
        vq(x, training=training)
        np.testing.assert_array_equal(to_numpy(vq.counts), counts)
        np.testing.assert_array_equal(to_numpy(vq.dictionary), d0)
    vq.trainable = False
    vq(x, training=True)
    np.testing.assert_array_equal(to_numpy(vq.counts), counts)
    np.testing.assert_array_equal(to_numpy(vq.dictionary), d0)
    vq.trainable = True
    vq(x, training=True)
    assert not np.array_equal(to_numpy(vq.counts), counts)


@pytest.mark.multibackend
def test_commitment_loss_only_in_training_with_positive_weight():
    from uvim_keras.layers import VectorQuantizer

    x = np.random.default_rng(0).normal(size=(2, 5, 8)).astype("float32")
    vq = VectorQuantizer(16, 8, commitment_weight=0.25, seed=0)
    vq.build((None, None, 8))
    out = vq(x, training=True)
    assert len(vq.losses) == 1
    s, q = to_numpy(out["bottleneck"]), to_numpy(out["quantized"])
    want = 0.25 * np.mean((s - q) ** 2)
    assert want > 0
    assert float(to_numpy(vq.losses[0])) == pytest.approx(want, rel=1e-5)
    vq(x, training=False)
    assert len(vq.losses) == 0

    vq0 = VectorQuantizer(16, 8, commitment_weight=0.0, seed=0)
    vq0(x, training=True)
    assert len(vq0.losses) == 0


@pytest.mark.multibackend
def test_config_round_trip_and_weights():
    import keras

    from uvim_keras.layers import VectorQuantizer

    vq = VectorQuantizer(
        16, 8, momentum=0.9, min_count=0.2, perturb=0.01, commitment_weight=0.5, seed=3,
        name="vq",
    )
    vq.build((None, None, 8))
    assert vq.trainable_weights == []
    assert {w.path.split("/")[-1] for w in vq.non_trainable_weights} == {"dictionary", "counts"}
    assert tuple(vq.dictionary.shape) == (16, 8) and tuple(vq.counts.shape) == (16,)
    cfg = vq.get_config()
    clone = VectorQuantizer.from_config(cfg)
    assert clone.get_config() == cfg
    for key, value in dict(dict_size=16, codeword_dim=8, momentum=0.9, min_count=0.2,
                           perturb=0.01, commitment_weight=0.5, seed=3).items():
        assert getattr(clone, key) == value and cfg[key] == value
    again = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(vq))
    assert isinstance(again, VectorQuantizer) and again.get_config() == cfg


@pytest.mark.multibackend
def test_wrong_codeword_dim_raises():
    from uvim_keras.layers import VectorQuantizer

    with pytest.raises(ValueError, match="codeword_dim"):
        VectorQuantizer(8, 4)(np.zeros((1, 2, 5), "float32"))
