"""big_vision's side of bench_real_scale.py (the reference), run by it in the
reference venv (`--reference-python`, big_vision on PYTHONPATH).

Builds big_vision's own UViM models from the configs it is given (`--spec`:
bench_real_scale.model_configs as JSON): the stage-II LM
(`proj.uvim.vtt.Model`) and the whole stage-I model (`proj.uvim.vit.Model`,
oracle included, as big_vision's trainer holds it), float32, random weights
(flax's initialisers; the LM's zero-initialised logits kernel gets N(0, 0.02)
values as ours does). Then answers bench_real_scale's timing requests
(`bench_real_scale.serve`) for

* predict: the trainer's `predict_fn` (big_vision/trainers/proj/uvim/train.py)
  jitted: greedy `decode.temperature_sampling` (T=1e-7), the stage-I
  `decode` of the code, the task module's `predict_outputs`;
* generate: the jitted greedy `temperature_sampling` alone (as
  bench_big_vision.py);
* encode: the LM's `encode` (the image encoder) jitted.

big_vision's imports (and its stub of tensorflow's gfile) come from
bench_big_vision.py (`--bench-dir`).

Usage: not by hand; see bench_real_scale.py.
"""

import argparse
import importlib
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--spec", required=True, help="model configs (JSON)")
    ap.add_argument("--bench-dir", required=True, help="folder of bench_big_vision.py")
    ap.add_argument("--max-batch", type=int, default=8)
    args = ap.parse_args()

    sys.path.insert(0, HERE)
    import bench_real_scale as brs  # numpy only at import (no keras)

    stream = brs.protocol_stream()
    spec = json.loads(args.spec)
    sys.path.insert(0, args.bench_dir)
    import bench_big_vision as bbv  # big_vision's models, tensorflow stubbed

    import flax
    import jax
    import jax.numpy as jnp
    import ml_collections
    import numpy as np

    task = importlib.import_module(f"big_vision.trainers.proj.uvim.{spec['task']}_task")
    t0 = time.perf_counter()
    s1c, lmc = dict(spec["stage1"]), dict(spec["lm"])
    stage1 = bbv.bv_vit.Model(**s1c, statistics_axis_name=None)
    lm_kwargs = {k: v for k, v in lmc.items() if k != "patches"}
    lm = bbv.bv_vtt.Model(patches=ml_collections.ConfigDict(
        {"size": tuple(lmc["patches"]["size"])}), **lm_kwargs)
    task_config = ml_collections.ConfigDict({"model": s1c, **spec["task_config"]})

    key = jax.random.PRNGKey(0)
    h, w = lmc["input_size"]
    ctx = jnp.zeros((1, h, w, 3), jnp.float32)
    # One label patch is enough to create every stage-I parameter (its
    # embedding broadcasts over the image's tokens), so init needs no
    # full-size one-hot labels.
    x = {k: jnp.zeros((1, 1) + tuple(shape), jnp.float32) for k, shape in s1c["inputs"].items()}
    s1_vars = stage1.init({"params": key, "state": key, "vqvae": key, "dropout": key}, x, ctx=ctx)
    s1_vars = {"params": s1_vars["params"], "state": s1_vars["state"]}
    seq_len = lmc["seq_len"]
    lm_params = lm.init({"params": key}, ctx, jnp.zeros((1, seq_len), jnp.int32))["params"]
    lm_params = flax.core.unfreeze(lm_params)
    logits = lm_params["decoder"]["LogitsDense"]["kernel"]
    lm_params["decoder"]["LogitsDense"]["kernel"] = jnp.asarray(
        np.random.default_rng(1).normal(0, 0.02, logits.shape).astype("float32"))
    jax.block_until_ready((s1_vars, lm_params))
    build_s = time.perf_counter() - t0
    images = brs.bench_images(spec, args.max_batch)

    def greedy_codes(p, images):
        seqs, _, _ = bbv.bv_decode.temperature_sampling(
            {"params": p}, images, jnp.zeros((images.shape[0], seq_len), jnp.int32),
            jax.random.PRNGKey(0), model=lm, num_samples=1, eos_token=-1, prefill=False,
            temperature=1e-7)
        return seqs

    @jax.jit
    def predict_fn(p, task_params, images):
        # trainers/proj/uvim/train.py predict_fn (seed 0, no image/id): the
        # sampling key from the images, greedy code, stage-I decode, outputs.
        key = images.sum(axis=[1, 2, 3]).astype(jnp.int32)
        local_rng = jax.lax.scan(lambda k, x: (jax.random.fold_in(k, x), None),
                                 jax.random.PRNGKey(0), key)[0]
        seqs, _, _ = bbv.bv_decode.temperature_sampling(
            params={"params": p}, model=lm, seed=local_rng, inputs=images,
            prompts=jnp.zeros((images.shape[0], seq_len), jnp.int32), num_samples=1,
            eos_token=-1, prefill=False, temperature=1e-7)
        code = jnp.squeeze(seqs, 1) - 1  # decode_labels
        logits, _ = stage1.apply(task_params, code, ctx=images, discrete_input=True,
                                 method=stage1.decode)
        return task.predict_outputs(logits, config=task_config)

    generate_fn = jax.jit(greedy_codes)
    encode_fn = jax.jit(lambda p, images: lm.apply({"params": p}, images, method=lm.encode))

    def predict(b):
        return lambda: jax.block_until_ready(predict_fn(lm_params, s1_vars, images[:b]))

    def generate(b):
        return lambda: jax.block_until_ready(generate_fn(lm_params, images[:b]))

    def encode(b):
        return lambda: jax.block_until_ready(encode_fn(lm_params, images[:b]))

    def nbytes(tree):
        return int(sum(leaf.nbytes for leaf in jax.tree_util.tree_leaves(tree)))

    decoder = lm_params["decoder"]  # every step re-reads all of it (cross K/V too)
    step = nbytes({k: v for k, v in decoder.items()
                   if k.startswith("EncDecBlock") or k in ("LayerNorm", "LogitsDense")})
    info = {"versions": {"jax": jax.__version__, "flax": flax.__version__,
                         "numpy": np.__version__},
            "precision": "float32", "build_s": build_s,
            "weights_bytes": nbytes(lm_params) + nbytes(s1_vars),
            "lm_weights_bytes": nbytes(lm_params), "decode_step_bytes": step,
            "decoder_bytes": step, "code_len": seq_len}
    brs.serve({"predict": predict, "generate": generate, "encode": encode}, info, stream)


if __name__ == "__main__":
    main()
