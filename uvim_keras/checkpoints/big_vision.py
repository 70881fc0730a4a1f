"""Load big_vision UViM checkpoints (`.npz`) into uvim_keras models.

big_vision saves a flattened pytree with '/'-joined names (see
`shared/fixtures/big_vision/README.md`): stage-I files hold `params/...` and
`state/{dictionary,counts}`; stage-II files hold `params/...` or the bare
parameter names. Most kernel layouts agree with ours (Dense (in, out),
attention (width, heads, head_dim) / (heads, head_dim, width), Conv HWIO,
stems (c, P, width), heads (width, c, P)) and convert by assignment by name
with a shape check; the transformer MLPs' kernels, which we store (out, in)
(`layers.transformer.MLP_EQUATION`), are transposed (`BigVisionLayout`).

Typical use:

>>> config = {...}  # big_vision's `config.model` kwargs of the stage-I run
>>> stage1 = stage1_from_big_vision_config(config, task_config={"min_depth": 1e-3, "max_depth": 10})
>>> load_big_vision_weights(stage1, "depth_stageI_params.npz")
"""

import os

import numpy as np

from uvim_keras.runtime.registration import registered_class
from uvim_keras.tasks import ColorizationTask, DepthTask, PanopticTask


class ConversionError(ValueError):
    """A checkpoint does not match the model it is loaded into."""


# -- configs -------------------------------------------------------------------
def task_from_big_vision_config(model_config, task_config=None):
    """The task implied by a stage-I `inputs` dict (panoptic, depth or color)."""
    task_config = dict(task_config or {})
    inputs = model_config["inputs"]
    keys = set(inputs)
    if keys == {"semantics", "instances"}:
        return PanopticTask(
            num_classes=inputs["semantics"][0], max_instances=inputs["instances"][0],
            min_fraction=task_config.get("min_fraction", 0.0),
        )
    if keys == {"depth"}:
        return DepthTask(
            bins=inputs["depth"][0],
            min_depth=task_config.get("min_depth", 1e-3),
            max_depth=task_config.get("max_depth", 10.0),
        )
    if keys == {"color"}:
        return ColorizationTask()
    raise ConversionError(
        f"model inputs {sorted(keys)} match no known task; expected "
        "['instances', 'semantics'], ['depth'] or ['color']."
    )


def stage1_from_big_vision_config(model_config, task=None, task_config=None, **kwargs):
    """A `UViMStage1` built from big_vision's `proj.uvim.vit.Model` kwargs."""
    c = dict(model_config)
    if not c.get("quantize", True):
        raise ConversionError("quantize=False stage-I models are not supported.")
    task = task or task_from_big_vision_config(c, task_config)
    patch = tuple(c.get("patch_size", (8, 8)))
    p = patch[0] * patch[1]
    for key, shape in c["inputs"].items():
        if tuple(shape)[1] != p:
            raise ConversionError(
                f"inputs[{key!r}] has {shape[1]} patch pixels; patch_size {patch} has {p}."
            )
    width = c.get("width", 768)
    return registered_class("UViMStage1")(
        task,
        input_size=tuple(c.get("input_size", (256, 256))),
        patch_size=patch,
        code_len=c.get("code_len", 256),
        dict_size=c.get("dict_size", 512),
        codeword_dim=c.get("codeword_dim") or width,
        width=width,
        oracle_num_layers=c.get("enc_depth", 6),
        base_num_layers=c.get("dec_depth", 6),
        num_heads=c.get("num_heads", 12),
        mlp_dim=c.get("mlp_dim") or 4 * width,
        posemb=c.get("posemb", "learn"),
        bottleneck_resize=c.get("bottleneck_resize", False),
        oracle_image_ctx=c.get("with_encoder_ctx", False),
        base_image_ctx=c.get("with_decoder_ctx", False),
        code_dropout=c.get("code_dropout", "none"),
        dict_momentum=c.get("dict_momentum", 0.995),
        min_count=c.get("min_count", 0.1),
        dropout_rate=c.get("dropout", 0.0),
        zero_code=c.get("zero_decoder_seq", False),
        **kwargs,
    )


def lm_from_big_vision_config(model_config, **kwargs):
    """A `GuidingCodeLM` built from big_vision's `proj.uvim.vtt.Model` kwargs."""
    c = dict(model_config)
    patches = c.get("patches", {})
    patch = tuple(patches.get("size", (16, 16)) if isinstance(patches, dict) else patches)
    return registered_class("GuidingCodeLM")(
        input_size=tuple(c.get("input_size", (256, 256))),
        patch_size=patch,
        code_len=c.get("seq_len", 256),
        dict_size=c.get("vocab_size", 32000) - 1,
        width=c.get("emb_dim", 512),
        num_layers=c.get("num_layers", 6),
        num_heads=c.get("num_heads", 8),
        mlp_dim=c.get("mlp_dim", 2048),
        posemb=c.get("posemb_type", "sincos2d"),
        dropout_rate=c.get("dropout_rate", 0.0),
        **kwargs,
    )


# -- name maps -------------------------------------------------------------------
class BigVisionLayout:
    """A 2-D variable seen in big_vision's (in, out) layout: an MLP kernel,
    stored (out, in). `shape` is big_vision's, `assign` takes a
    big_vision array and `numpy()` returns one; the name maps below use it in
    place of the variable, so loaders need not know the difference."""

    def __init__(self, variable):
        self.variable = variable

    @property
    def shape(self):
        return tuple(reversed(tuple(self.variable.shape)))

    @property
    def dtype(self):
        return self.variable.dtype

    @property
    def path(self):
        return self.variable.path

    def assign(self, value):
        self.variable.assign(np.transpose(np.asarray(value)))

    def numpy(self):
        return np.transpose(np.asarray(self.variable.numpy()))


def dense_map(prefix, layer, transposed=False):
    kernel = BigVisionLayout(layer.kernel) if transposed else layer.kernel
    return {f"{prefix}/kernel": kernel, f"{prefix}/bias": layer.bias}


def _norm(prefix, layer):
    return {f"{prefix}/scale": layer.gamma, f"{prefix}/bias": layer.beta}


def _attention(prefix, att):
    out = {}
    layers = (("query", att.query), ("key", att.key), ("value", att.value),
              ("out", att.attention_output))
    for part, layer in layers:
        out[f"{prefix}/{part}/kernel"] = layer.kernel
        if layer.bias is not None:
            out[f"{prefix}/{part}/bias"] = layer.bias
    return out


def _mlp(prefix, mlp):
    return {**dense_map(f"{prefix}/Dense_0", mlp.dense_0, transposed=True),
            **dense_map(f"{prefix}/Dense_1", mlp.dense_1, transposed=True)}


def vit_encoder_map(prefix, encoder):
    out = _norm(f"{prefix}/encoder_norm", encoder.final_norm)
    for i, blk in enumerate(encoder.blocks):
        p = f"{prefix}/encoderblock_{i}"
        out.update(_norm(f"{p}/LayerNorm_0", blk.norm_0))
        out.update(_attention(f"{p}/MultiHeadDotProductAttention_0", blk.attention))
        out.update(_norm(f"{p}/LayerNorm_1", blk.norm_1))
        out.update(_mlp(f"{p}/MlpBlock_0", blk.mlp))
    return out


def _posemb(name, posemb):
    return {name: posemb.embedding} if posemb.posemb == "learn" else {}


def stage1_variable_map(model):
    """{big_vision name: variable} for every weight of a `UViMStage1`."""
    oracle, base = model.oracle, model.base_model
    out = {}
    for key, stem in zip(oracle.label_channels, oracle.stems):
        out.update(dense_map(f"params/embedding_{key}", stem))
    if oracle.image_embedding is not None:
        out.update(dense_map("params/ctx_enc_embedding", oracle.image_embedding.conv))
    out.update(_posemb("params/pos_embedding_encoder", oracle.position_embedding))
    out.update(vit_encoder_map("params/encoder", oracle.encoder))
    if not oracle.bottleneck_resize:
        out["params/bottleneck_downsample"] = oracle.bottleneck.matrix
        out["params/bottleneck_upsample"] = base.unbottleneck.matrix
    out.update(dense_map("params/encoder_head", oracle.head))
    out["state/dictionary"] = model.quantizer.dictionary
    out["state/counts"] = model.quantizer.counts
    out.update(dense_map("params/decoder_stem", base.stem))
    if base.image_embedding is not None:
        out.update(dense_map("params/ctx_dec_embedding", base.image_embedding.conv))
    out.update(_posemb("params/pos_embedding_decoder", base.position_embedding))
    out.update(vit_encoder_map("params/decoder", base.encoder))
    for key, head in zip(base.label_channels, base.heads):
        out.update(dense_map(f"params/head_{key}", head))
    return out


def lm_variable_map(lm):
    """{big_vision name: variable} for every weight of a `GuidingCodeLM`."""
    if not getattr(lm, "autoregressive", True):
        raise ValueError(
            "lm has autoregressive=False; big_vision's checkpoints (and their variable "
            "names) exist for the autoregressive guiding-code LM only.")
    out = dense_map("params/EmbedPatches", lm.image_embedding.conv)
    out.update(_posemb("params/pos_embedding_encoder", lm.encoder_posemb))
    out.update(vit_encoder_map("params/encoder", lm.encoder))
    out["params/decoder/EmbedTargets/embedding"] = lm.token_embedding.embeddings
    out.update(_posemb("params/pos_embedding_decoder", lm.decoder_posemb))
    for i, blk in enumerate(lm.decoder_blocks):
        p = f"params/decoder/EncDecBlock{i}"
        for j, norm in enumerate((blk.norm_1, blk.norm_2, blk.norm_3), start=1):
            out.update(_norm(f"{p}/LayerNorm{j}", norm))
        out.update(_attention(f"{p}/SelfAttn", blk.self_attention))
        out.update(_attention(f"{p}/CrossAttn", blk.cross_attention))
        out.update(_mlp(f"{p}/MLP", blk.mlp))
    out.update(_norm("params/decoder/LayerNorm", lm.decoder_norm))
    out.update(dense_map("params/decoder/LogitsDense", lm.logits_dense))
    return out


def variable_map(model):
    if isinstance(model, registered_class("UViMStage1")):
        return stage1_variable_map(model)
    if isinstance(model, registered_class("GuidingCodeLM")):
        return lm_variable_map(model)
    raise TypeError(f"no big_vision layout for {type(model).__name__}.")


# -- loading ---------------------------------------------------------------------
def _normalise_name(name, stage1):
    """Adds the `params/` prefix stage-II files may lack and renames the old
    `Encoder`/`Decoder` scopes."""
    if not stage1 and not name.startswith("params/"):
        name = "params/" + name
    for old, new in (("params/Encoder/", "params/encoder/"), ("params/Decoder/", "params/decoder/")):
        if name.startswith(old):
            name = new + name[len(old):]
    return name


def stored_shape(source, key):
    """Shape of one array without reading it when `source` is an `.npz`."""
    if isinstance(source, np.lib.npyio.NpzFile):
        with source.zip.open(key + ".npy") as f:
            major, _ = np.lib.format.read_magic(f)
            read_header = (
                np.lib.format.read_array_header_1_0 if major == 1
                else np.lib.format.read_array_header_2_0
            )
            shape, _, _ = read_header(f)
        return tuple(shape)
    return tuple(np.shape(source[key]))


def _checked_array(key, raw, dtype):
    """`raw` as `dtype`, refusing what is not a checkpoint array: non-real
    dtypes (complex, bool, strings, objects) and non-finite values (NaN,
    inf, or values the model's dtype cannot hold)."""
    raw = np.asarray(raw)
    if raw.dtype.kind not in "fiu":
        what = "complex" if raw.dtype.kind == "c" else "not real numbers"
        raise ConversionError(f"checkpoint array {key!r} has dtype {raw.dtype} ({what}); "
                              "a UViM checkpoint holds real numbers only.")
    if raw.dtype.kind == "f":
        bad = raw.size - int(np.count_nonzero(np.isfinite(raw)))
        if bad:
            raise ConversionError(f"checkpoint array {key!r} has {bad} non-finite values (NaN or "
                                  f"inf) of {raw.size}: the file is damaged.")
    value = raw.astype(dtype, copy=False)
    if value.dtype.kind == "f" and raw.size and not np.isfinite(value).all():
        raise ConversionError(f"checkpoint array {key!r} has values outside the range of "
                              f"{np.dtype(dtype).name}.")
    return value


def load_big_vision_weights(model, checkpoint):
    """Assigns a big_vision checkpoint (path or name->array mapping) to `model`.

    Every model variable must be present with the same shape and the
    checkpoint must hold nothing else; otherwise `ConversionError` lists the
    missing, unexpected and mis-shaped names. Arrays are read and assigned one
    at a time, so peak memory stays near one copy of the weights plus the model.
    """
    stage1 = isinstance(model, registered_class("UViMStage1"))
    targets = variable_map(model)
    if isinstance(checkpoint, (str, os.PathLike)):
        if not os.path.exists(checkpoint):
            raise ConversionError(f"checkpoint {os.fspath(checkpoint)!r} does not exist.")
        try:
            source = np.load(checkpoint, allow_pickle=False)
        except Exception as e:  # zip errors, truncated files, ...
            raise ConversionError(
                f"checkpoint {os.fspath(checkpoint)!r} is not a readable .npz file ({e})."
            ) from e
    else:
        source = checkpoint
    names = {_normalise_name(k, stage1): k for k in source.keys()}
    missing = sorted(set(targets) - set(names))
    unexpected = sorted(set(names) - set(targets))
    wrong = []
    for name in sorted(set(targets) & set(names)):
        shape = stored_shape(source, names[name])
        if shape != tuple(targets[name].shape):
            wrong.append(f"{name}: checkpoint {shape}, model {tuple(targets[name].shape)}")
    if missing or unexpected or wrong:
        raise ConversionError(
            f"checkpoint does not match {type(model).__name__}:"
            + (f"\n  missing: {missing}" if missing else "")
            + (f"\n  unexpected: {unexpected}" if unexpected else "")
            + (f"\n  wrong shapes: {wrong}" if wrong else "")
        )
    for name, var in targets.items():
        value = _checked_array(names[name], source[names[name]], var.dtype)
        if tuple(value.shape) != tuple(var.shape):
            raise ConversionError(
                f"{name}: checkpoint shape {value.shape}, model {tuple(var.shape)}."
            )
        var.assign(value)
    return model
