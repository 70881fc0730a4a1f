"""Stage-II encoder initialised from a big_vision / AugReg ViT checkpoint.

The checkpoints are tiny synthetic `.npz` files written here in the key
layouts of big_vision ViTs (`params/` prefix, linen names), AugReg files
(pre-Linen numbering, `Transformer/posembed_input`, `pre_logits`) and scan
(stacked-block) big_vision ViTs.
"""

import re

import numpy as np
import pytest

from common import to_numpy
from helpers import tiny_lm

pytestmark = pytest.mark.multibackend

WIDTH, HEADS, MLP, PATCH, DEPTH = 16, 2, 32, 4, 2

# Our variable path suffix -> the ViT name (linen numbering), per encoder block.
BLOCK_NAMES = {
    "norm_0/gamma": "LayerNorm_0/scale",
    "norm_0/beta": "LayerNorm_0/bias",
    "norm_1/gamma": "LayerNorm_1/scale",
    "norm_1/beta": "LayerNorm_1/bias",
    "mlp/dense_0/kernel": "MlpBlock_0/Dense_0/kernel",
    "mlp/dense_0/bias": "MlpBlock_0/Dense_0/bias",
    "mlp/dense_1/kernel": "MlpBlock_0/Dense_1/kernel",
    "mlp/dense_1/bias": "MlpBlock_0/Dense_1/bias",
    **{
        f"attention/{ours}/{k}": f"MultiHeadDotProductAttention_0/{theirs}/{k}"
        for ours, theirs in (("query", "query"), ("key", "key"), ("value", "value"),
                             ("attention_output", "out"))
        for k in ("kernel", "bias")
    },
}
# AugReg / original ViT files: pre-Linen numbering inside an encoder block.
PRE_LINEN = {
    "LayerNorm_0/": "LayerNorm_0/",
    "MultiHeadDotProductAttention_0/": "MultiHeadDotProductAttention_1/",
    "LayerNorm_1/": "LayerNorm_2/",
    "MlpBlock_0/": "MlpBlock_3/",
}


def expected_names(depth=DEPTH):
    """{our variable path suffix: ViT name} for the whole encoder."""
    out = {
        "image_embedding/conv/kernel": "embedding/kernel",
        "image_embedding/conv/bias": "embedding/bias",
        "encoder/final_norm/gamma": "Transformer/encoder_norm/scale",
        "encoder/final_norm/beta": "Transformer/encoder_norm/bias",
    }
    for i in range(depth):
        for ours, theirs in BLOCK_NAMES.items():
            out[f"encoder/block_{i}/{ours}"] = f"Transformer/encoderblock_{i}/{theirs}"
    return out


def make_vit(seed=0, width=WIDTH, depth=DEPTH, heads=HEADS, mlp=MLP, patch=PATCH, grid=3,
             cls_token=True):
    """Canonical (linen-named) ViT classifier params as float32 arrays."""
    rng = np.random.default_rng(seed)
    hd = width // heads
    p = {
        "embedding/kernel": rng.normal(size=(patch, patch, 3, width)),
        "embedding/bias": rng.normal(size=(width,)),
        "cls": rng.normal(size=(1, 1, width)),
        "pos_embedding": rng.normal(size=(1, grid * grid + int(cls_token), width)),
        "Transformer/encoder_norm/scale": rng.normal(size=(width,)),
        "Transformer/encoder_norm/bias": rng.normal(size=(width,)),
        "head/kernel": rng.normal(size=(width, 7)),
        "head/bias": rng.normal(size=(7,)),
    }
    shapes = {
        "LayerNorm_0/scale": (width,), "LayerNorm_0/bias": (width,),
        "LayerNorm_1/scale": (width,), "LayerNorm_1/bias": (width,),
        "MlpBlock_0/Dense_0/kernel": (width, mlp), "MlpBlock_0/Dense_0/bias": (mlp,),
        "MlpBlock_0/Dense_1/kernel": (mlp, width), "MlpBlock_0/Dense_1/bias": (width,),
        "MultiHeadDotProductAttention_0/out/kernel": (heads, hd, width),
        "MultiHeadDotProductAttention_0/out/bias": (width,),
    }
    for part in ("query", "key", "value"):
        shapes[f"MultiHeadDotProductAttention_0/{part}/kernel"] = (width, heads, hd)
        shapes[f"MultiHeadDotProductAttention_0/{part}/bias"] = (heads, hd)
    for i in range(depth):
        for name, shape in shapes.items():
            p[f"Transformer/encoderblock_{i}/{name}"] = rng.normal(size=shape)
    return {k: v.astype("float32") for k, v in p.items()}


def stored(params, layout, depth=DEPTH):
    """`params` under the key layout of a checkpoint file."""
    if layout == "big_vision":
        return {f"params/{k}": v for k, v in params.items()}
    if layout == "augreg":
        out = {}
        for k, v in params.items():
            if k == "pos_embedding":
                k = "Transformer/posembed_input/pos_embedding"
            for new, old in PRE_LINEN.items():
                k = k.replace(f"/{new}", f"/{old}")
            out[k] = v
        width = params["embedding/bias"].shape[0]
        out["pre_logits/kernel"] = np.ones((width, width), "float32")
        out["pre_logits/bias"] = np.ones((width,), "float32")
        return out
    if layout == "scan":
        out = {k: v for k, v in params.items() if not k.startswith("Transformer/encoderblock_")}
        blocks = [k for k in params if k.startswith("Transformer/encoderblock_")]
        for name in {k.split("/", 2)[2] for k in blocks}:
            out[f"Transformer/encoderblock/{name}"] = np.stack(
                [params[f"Transformer/encoderblock_{i}/{name}"] for i in range(depth)]
            )
        return out
    raise AssertionError(layout)


def write(tmp_path, arrays, name="vit.npz"):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def reference_resample(posemb, gh, gw):
    """Linear, corner-aligned resampling of a (1, k*k, D) grid, point by point."""
    k = int(round(np.sqrt(posemb.shape[1])))
    grid = posemb.reshape(k, k, -1).astype("float64")
    out = np.zeros((gh, gw, grid.shape[-1]))

    def where(i, n):
        pos = i * (k - 1) / (n - 1) if n > 1 else 0.0
        lo = min(int(np.floor(pos)), k - 1)
        return lo, min(lo + 1, k - 1), pos - lo

    for i in range(gh):
        y0, y1, wy = where(i, gh)
        for j in range(gw):
            x0, x1, wx = where(j, gw)
            out[i, j] = ((1 - wy) * (1 - wx) * grid[y0, x0] + (1 - wy) * wx * grid[y0, x1]
                         + wy * (1 - wx) * grid[y1, x0] + wy * wx * grid[y1, x1])
    return out.reshape(1, gh * gw, -1)


def weights_by_suffix(lm):
    """{path suffix: value} in the checkpoint's layout: the MLP kernels, which
    `Linear` stores (out, in), transposed back to flax's (in, out)."""
    prefix = lm.name + "/"
    out = {}
    for v in lm.weights:
        name, value = v.path[len(prefix):], to_numpy(v)
        out[name] = value.T if re.search(r"mlp/dense_[01]/kernel$", name) else value
    return out


def lm_runs(lm):
    rng = np.random.default_rng(1)
    h, w = lm.input_size
    image = rng.uniform(-1, 1, (2, h, w, 3)).astype("float32")
    codes = rng.integers(0, lm.dict_size, (2, lm.code_len)).astype("int32")
    logits = to_numpy(lm({"image": image, "codes": codes}))
    assert logits.shape == (2, lm.code_len, lm.vocab_size)
    assert np.all(np.isfinite(logits))


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["big_vision", "augreg", "scan"])
def test_encoder_loaded_posemb_resampled_decoder_untouched(tmp_path, layout):
    from uvim_keras.checkpoints.pretrained_vit import init_lm_encoder_from_vit

    params = make_vit(grid=3)  # 3x3 + class token -> the LM's 4x4 grid
    path = write(tmp_path, stored(params, layout))
    lm = tiny_lm(seed=0, num_layers=DEPTH)
    before = weights_by_suffix(lm)
    assert init_lm_encoder_from_vit(lm, path) is lm
    after = weights_by_suffix(lm)

    names = expected_names()
    for ours, theirs in names.items():
        np.testing.assert_array_equal(after[ours], params[theirs], err_msg=ours)
    want = reference_resample(params["pos_embedding"][:, 1:], 4, 4)
    np.testing.assert_allclose(after["encoder_posemb/embedding"], want, rtol=0, atol=1e-6)
    touched = set(names) | {"encoder_posemb/embedding"}
    assert set(after) - touched, "the LM has a decoder"
    for name in set(after) - touched:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    lm_runs(lm)


@pytest.mark.parametrize("cls_token", [True, False])
def test_posemb_unchanged_when_grids_match(tmp_path, cls_token):
    from uvim_keras.checkpoints.pretrained_vit import init_lm_encoder_from_vit

    params = make_vit(grid=4, cls_token=cls_token)
    lm = init_lm_encoder_from_vit(tiny_lm(num_layers=DEPTH), write(tmp_path, params))
    np.testing.assert_array_equal(
        to_numpy(lm.encoder_posemb.embedding), params["pos_embedding"][:, int(cls_token):]
    )


@pytest.mark.parametrize("grid,input_size", [(6, (16, 16)), (3, (16, 28)), (5, (8, 24))])
def test_posemb_resampled_to_other_grids(tmp_path, grid, input_size):
    """Downsampling and non-square LM grids (one zoom factor per axis)."""
    from uvim_keras.checkpoints.pretrained_vit import init_lm_encoder_from_vit

    params = make_vit(grid=grid)
    lm = tiny_lm(num_layers=DEPTH, input_size=input_size)
    init_lm_encoder_from_vit(lm, write(tmp_path, params))
    gh, gw = lm.grid_size
    want = reference_resample(params["pos_embedding"][:, 1:], gh, gw)
    np.testing.assert_allclose(to_numpy(lm.encoder_posemb.embedding), want, rtol=0, atol=1e-6)
    lm_runs(lm)


def _drop(key):
    def edit(p):
        del p[key]
    return edit


def _set(key, value):
    def edit(p):
        p[key] = value
    return edit


BAD = {
    "width": (dict(width=24, heads=2, mlp=MLP), None, ["embedding/kernel", "width 24"]),
    "depth": (dict(depth=3), None, ["encoderblock", "3 encoder blocks", "encoderblock_2"]),
    "patch": (dict(patch=8), None, ["embedding/kernel", "patch size (8, 8)"]),
    "heads": (dict(heads=4), None, ["query/kernel", "4 heads"]),
    "mlp": (dict(mlp=48), None, ["MlpBlock_0/Dense_0/kernel", "mlp_dim 48"]),
    "missing": ({}, _drop("Transformer/encoderblock_1/LayerNorm_1/bias"),
                ["missing", "Transformer/encoderblock_1/LayerNorm_1/bias"]),
    "unexpected": ({}, _set("Transformer/extra/kernel", np.ones((2, 2), "float32")),
                   ["unexpected", "Transformer/extra/kernel"]),
    "no_posemb": ({}, _drop("pos_embedding"), ["missing", "pos_embedding"]),
    "posemb_not_square": ({}, _set("pos_embedding", np.ones((1, 7, WIDTH), "float32")),
                          ["pos_embedding", "7 tokens"]),
    "posemb_width": ({}, _set("pos_embedding", np.ones((1, 10, 8), "float32")),
                     ["pos_embedding", "(1, 10, 8)"]),
    "int_dtype": ({}, _set("Transformer/encoder_norm/scale", np.ones((WIDTH,), "int32")),
                  ["Transformer/encoder_norm/scale", "int32"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_checkpoint_raises_naming_the_key(tmp_path, case):
    from uvim_keras.checkpoints.pretrained_vit import init_lm_encoder_from_vit

    kwargs, edit, words = BAD[case]
    params = make_vit(**kwargs)
    if edit is not None:
        edit(params)
    lm = tiny_lm(num_layers=DEPTH)
    before = weights_by_suffix(lm)
    with pytest.raises(ValueError) as info:
        init_lm_encoder_from_vit(lm, write(tmp_path, stored(params, "big_vision")))
    for word in words:
        assert word in str(info.value), (word, str(info.value))
    after = weights_by_suffix(lm)  # nothing was assigned
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)


def test_unreadable_files_raise(tmp_path):
    from uvim_keras.checkpoints.pretrained_vit import init_lm_encoder_from_vit

    lm = tiny_lm(num_layers=DEPTH)
    with pytest.raises(ValueError, match="does not exist"):
        init_lm_encoder_from_vit(lm, tmp_path / "nope.npz")
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match="not a readable .npz"):
        init_lm_encoder_from_vit(lm, junk)


def test_mapping_input_and_fixed_posemb_lm():
    """A name -> array dict works too; a sincos2d LM keeps its fixed posemb (warning)."""
    from uvim_keras.checkpoints.pretrained_vit import init_lm_encoder_from_vit

    params = make_vit(grid=3)
    lm = tiny_lm(num_layers=DEPTH, posemb="sincos2d")
    with pytest.warns(UserWarning, match="pos_embedding"):
        init_lm_encoder_from_vit(lm, params)
    np.testing.assert_array_equal(
        weights_by_suffix(lm)["encoder/block_1/attention/query/kernel"],
        params["Transformer/encoderblock_1/MultiHeadDotProductAttention_0/query/kernel"],
    )
    lm_runs(lm)


def test_lm_encoder_from_a_base_model():
    """The demo's recipe: the LM's encoder starts from a stage-I base model's
    trunk (same ViT geometry); the decoder is untouched; mismatches raise."""
    from helpers import TINY, tiny_stage1

    from uvim_keras.checkpoints.pretrained_vit import init_lm_encoder_from_base_model

    stage1 = tiny_stage1(zero_code=True, base_num_layers=2)
    base = stage1.base_model
    lm = tiny_lm(num_layers=2, width=TINY["width"], mlp_dim=TINY["mlp_dim"])
    decoder_before = [to_numpy(w).copy() for w in lm.decoder_blocks[0].weights]
    init_lm_encoder_from_base_model(lm, base)
    for mine, theirs in ((lm.image_embedding, base.image_embedding),
                         (lm.encoder_posemb, base.position_embedding),
                         (lm.encoder, base.encoder)):
        for a, b in zip(mine.weights, theirs.weights):
            np.testing.assert_array_equal(to_numpy(a), to_numpy(b))
    for a, b in zip(lm.decoder_blocks[0].weights, decoder_before):
        np.testing.assert_array_equal(to_numpy(a), b)
    with pytest.raises(ValueError, match="transformer"):
        init_lm_encoder_from_base_model(tiny_lm(num_layers=1), base)
