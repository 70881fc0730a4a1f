"""UViM stage I: oracle + vector quantizer + code dropout + base model."""

import keras
from keras import ops

from uvim_keras.layers import CodeDropout, VectorQuantizer, patchify
from uvim_keras.layers.renamed import renamed_arguments
from uvim_keras.models.adaptable import AdaptableModel
from uvim_keras.models.checks import check_codes, check_image, check_same_batch, pair
from uvim_keras.models.oracle import BaseModel, Oracle
from uvim_keras.models.serving import CodeDecoder, check_export_backend
from uvim_keras.presets.api import load_stage1, save_stage1
from uvim_keras.presets.registry import named_presets
from uvim_keras.tasks import UViMTask, get_task


class classproperty:
    """A read-only property of the class (as keras-hub's `cls.presets`)."""

    def __init__(self, fget):
        self.fget = fget

    def __get__(self, obj, owner):
        return self.fget(owner)


def resolve_task(task):
    """A task object from a task, its name, or its serialized config."""
    if isinstance(task, UViMTask):
        return task
    if isinstance(task, str):
        return get_task(task)
    if isinstance(task, dict):
        return keras.saving.deserialize_keras_object(task)
    raise ValueError(f"task={task!r}; expected a UViMTask, a task name or a task config.")


def batch_parts(inputs, needs_labels=True):
    """(image, labels) of a batch dict {"image", "labels"}."""
    if not isinstance(inputs, dict) or "image" not in inputs:
        raise ValueError(
            "inputs must be a dict with keys 'image' and 'labels'; got "
            f"{type(inputs).__name__} with keys {list(inputs) if isinstance(inputs, dict) else '-'}."
        )
    if needs_labels and "labels" not in inputs:
        raise ValueError("inputs has no 'labels'; stage I needs the label (the oracle sees it).")
    return inputs["image"], inputs.get("labels")


@keras.saving.register_keras_serializable(package="uvim_keras")
@renamed_arguments(oracle_depth="oracle_num_layers", base_depth="base_num_layers",
                   dropout="dropout_rate")
class UViMStage1(AdaptableModel):
    """Stage I of UViM: learns the guiding code with a restricted oracle.

    The oracle Ω sees the label (and, with `oracle_image_ctx`, the image) and
    emits `code_len` vectors; the `VectorQuantizer` snaps them to a
    `dict_size`-word EMA dictionary (the guiding code); `CodeDropout` zeroes a
    random subset of code words in training; the base model f reconstructs the
    label from the code and the image. Trained with `fit` on batches
    `{"image": (B, H, W, 3) in [-1, 1], "labels": (B, H, W, ...)}`; the loss
    is the task's reconstruction loss (+ commitment loss when
    `commitment_weight` > 0). Logged metrics: `reconstruction_loss`,
    `codebook_max_ratio`, `codebook_zeros_ratio`. `predict` returns the
    call's outputs: per example `logits` ({key: (B, H, W, c)}),
    `patch_logits`, `codes` and `quantized`, and the codebook statistics
    once per batch.

    `zero_code=True` is the paper's "no oracle" ablation: the base model only
    ever sees an all-zero code, i.e. it is a plain image-to-label ViT.

    Defaults are the released UViM stage-I configs (ViT-B width, 6 oracle
    blocks, 12 base-model blocks, 256-word code from a 4096-word dictionary).

    Args:
      task: a `UViMTask` (e.g. `PanopticTask(...)`), a task name
        ("panoptic", "depth", "colorization") or a serialized task config.
        It encodes the labels, gives the loss and the outputs.
      input_size: int or (int, int). Image and label size (H, W). Defaults
        to `512`.
      patch_size: int or (int, int). Patch (ph, pw) of both ViTs; H and W
        must divide by it. Defaults to `16`.
      code_len: int. Words in the guiding code (a square number with
        `bottleneck_resize`). Defaults to `256`.
      dict_size: int. Words in the quantizer's dictionary. Defaults to
        `4096`.
      codeword_dim: int. Dimension of a codeword. Defaults to `768`.
      width: int. Width of both ViTs. Defaults to `768`.
      oracle_num_layers: int. Encoder blocks of the oracle. Defaults to `6`.
        Formerly `oracle_depth` (still accepted).
      base_num_layers: int. Encoder blocks of the base model. Defaults to
        `12`. Formerly `base_depth` (still accepted).
      num_heads: int. Attention heads of both ViTs. Defaults to `12`.
      mlp_dim: int. Hidden width of the MLPs. Defaults to `3072`.
      posemb: str. `"learn"` or `"sincos2d"` position embeddings. Defaults
        to `"learn"`.
      bottleneck_resize: bool. Token grid <-> code grid by a fixed linear
        resize (True) or learned matrices (False). Defaults to `True`.
      oracle_image_ctx: bool. Whether the oracle also sees the image.
        Defaults to `True`.
      base_image_ctx: bool. Whether the base model sees the image. Defaults
        to `True`.
      code_dropout: str. `CodeDropout` mode in training: `"none"`,
        `"linear"` or `"random"`. Defaults to `"random"`.
      dict_momentum: float. EMA momentum of the dictionary. Defaults to
        `0.995`.
      min_count: float. EMA count below which a word is replaced (LBG
        splitting). Defaults to `0.1`.
      commitment_weight: float. Weight of the commitment loss. Defaults to
        `0.0`.
      dropout_rate: float. Dropout rate of the oracle's encoder blocks (the
        base model's encoder runs without dropout, as in big_vision).
        Defaults to `0.0`. Formerly `dropout` (still accepted).
      zero_code: bool. The "no oracle" ablation (see above). Defaults to
        `False`.
      seed: int or None. Seed of the quantizer's splitting noise (and,
        plus one, of code dropout). Defaults to `None`.
      **kwargs: `keras.Model` arguments (`name`, `dtype`, ...).

    Example:
    >>> model = UViMStage1(PanopticTask(num_classes=7, max_instances=5),
    ...                    input_size=32, patch_size=8, code_len=16, dict_size=16,
    ...                    codeword_dim=16, width=32, oracle_num_layers=1,
    ...                    base_num_layers=1, num_heads=2, mlp_dim=64)
    >>> model.compile(optimizer="adam")
    >>> # model.fit(dataset_of_dicts)
    >>> codes = model.encode({"image": images, "labels": labels})  # (B, 16) int32
    """

    def __init__(
        self,
        task,
        input_size=512,
        patch_size=16,
        code_len=256,
        dict_size=4096,
        codeword_dim=768,
        width=768,
        oracle_num_layers=6,
        base_num_layers=12,
        num_heads=12,
        mlp_dim=3072,
        posemb="learn",
        bottleneck_resize=True,
        oracle_image_ctx=True,
        base_image_ctx=True,
        code_dropout="random",
        dict_momentum=0.995,
        min_count=0.1,
        commitment_weight=0.0,
        dropout_rate=0.0,
        zero_code=False,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.task = resolve_task(task)
        self.zero_code = bool(zero_code)
        self.input_size = pair(input_size, "input_size")
        self.patch_size = pair(patch_size, "patch_size")
        self.code_len = int(code_len)
        self.dict_size = int(dict_size)
        self.codeword_dim = int(codeword_dim)
        self.width = int(width)
        self.oracle_num_layers = int(oracle_num_layers)
        self.base_num_layers = int(base_num_layers)
        self.num_heads = int(num_heads)
        self.mlp_dim = int(mlp_dim)
        self.posemb = posemb
        self.bottleneck_resize = bool(bottleneck_resize)
        self.oracle_image_ctx = bool(oracle_image_ctx)
        self.base_image_ctx = bool(base_image_ctx)
        self.code_dropout_mode = code_dropout
        self.dict_momentum = float(dict_momentum)
        self.min_count = float(min_count)
        self.commitment_weight = float(commitment_weight)
        self.dropout_rate = float(dropout_rate)
        self.seed = seed
        common = dict(
            input_size=self.input_size, patch_size=self.patch_size, code_len=self.code_len,
            codeword_dim=self.codeword_dim, width=self.width, num_heads=self.num_heads,
            mlp_dim=self.mlp_dim, posemb=posemb, bottleneck_resize=self.bottleneck_resize,
            dropout_rate=self.dropout_rate,
        )
        channels = self.task.label_channels
        policy = self.dtype_policy
        self.oracle = Oracle(
            channels, num_layers=self.oracle_num_layers, with_image_ctx=self.oracle_image_ctx,
            name="oracle", dtype=policy, **common,
        )
        self.quantizer = VectorQuantizer(
            self.dict_size, self.codeword_dim, momentum=self.dict_momentum,
            min_count=self.min_count, commitment_weight=self.commitment_weight,
            seed=seed, name="quantizer", dtype=policy,
        )
        self.quantizer.build((None, self.code_len, self.codeword_dim))
        self.code_dropout = CodeDropout(
            code_dropout, seed=None if seed is None else seed + 1, name="code_dropout",
            dtype=policy,
        )
        self.base_model = BaseModel(
            channels, num_layers=self.base_num_layers, with_image_ctx=self.base_image_ctx,
            name="base_model", dtype=policy, **common,
        )
        self.reconstruction_loss_tracker = keras.metrics.Mean(name="reconstruction_loss")
        if self.zero_code:  # the ablation never uses the oracle
            self.oracle.trainable = False
        # The no-code ablation has no codebook usage to log.
        self.codebook_trackers = {} if self.zero_code else {
            key: keras.metrics.Mean(name=key)
            for key in ("codebook_max_ratio", "codebook_zeros_ratio")
        }
        self.built = True

    # -- forward ------------------------------------------------------------
    def _check(self, image, labels):
        check_image(image, self.input_size)
        if labels is not None:
            self.task.check_labels(labels, self.input_size)
            check_same_batch(image, labels, "image", "labels")

    # Labels and logits stay in patch layout (B, G, c, P) inside the model:
    # the oracle's stems and the base model's heads work per patch, and the
    # task encodes labels and takes its loss in that layout (`axis=-2`), so a
    # train step never transposes one-hot labels or logits (about 20% of a
    # stage-I step on XLA:CPU, benchmarks/README.md). Only the raw labels are
    # cut into patches, and image-layout logits are made for outputs.
    def _label_patches(self, labels):
        return patchify(labels, self.patch_size)  # (B, G, label_depth, P)

    def _oracle_code(self, image, labels, training):
        encoded = self.task.encode_labels(self._label_patches(labels), axis=-2)
        z = self.oracle(encoded, image=image, training=training, layout="patches")
        return self.quantizer(z, training=training)

    def call(self, inputs, training=None):
        """{"logits": image layout, "patch_logits": (B, G, c, P), "codes", ...}."""
        image, labels = batch_parts(inputs)
        self._check(image, labels)
        if self.zero_code:  # the ablation never runs the oracle
            batch = ops.shape(image)[0]
            code = ops.zeros((batch, self.code_len, self.codeword_dim), self.compute_dtype)
            out = {"codes": ops.zeros((batch, self.code_len), "int32")}
        else:
            out = self._oracle_code(image, labels, training)
            code = self.code_dropout(out["quantized"], training=training)
        patch_logits = self.base_model(code, image=image, training=training, layout="patches")
        logits = self.base_model.image_layout(patch_logits)
        # The codebook statistics describe the batch: shape (1,), so that
        # `predict` can concatenate them (one value per batch).
        stats = {key: ops.reshape(out.pop(key), (1,)) for key in self.codebook_trackers}
        return {"logits": logits, "patch_logits": patch_logits, **out, **stats}

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        reconstruction = self.task.loss(
            self._label_patches(x["labels"]), y_pred["patch_logits"], axis=-2
        )
        loss = reconstruction
        if self.losses:
            loss = loss + ops.sum(self.losses)
        self.reconstruction_loss_tracker.update_state(reconstruction)
        for key, tracker in self.codebook_trackers.items():
            tracker.update_state(y_pred[key])
        return loss

    # -- inference helpers ----------------------------------------------------
    def encode(self, inputs):
        """The oracle's guiding code (B, code_len) int32 for a labelled batch."""
        image, labels = batch_parts(inputs)
        self._check(image, labels)
        return self._oracle_code(image, labels, training=False)["codes"]

    def decode(self, codes, image=None):
        """Base-model logits {key: (B, H, W, c)} for integer codes (B, code_len)."""
        check_codes(codes, self.code_len, self.dict_size)
        if image is not None:
            check_image(image, self.input_size)
            check_same_batch(image, codes, "image", "codes")
        return self.base_model(codes, image=image, codewords=self.quantizer.codewords())

    def predict_outputs(self, inputs):
        """The task's outputs when decoding the oracle's own code."""
        return self.task.predict_outputs(self(inputs, training=False)["logits"])

    def export_base_model(self, filepath, format="onnx", outputs="predictions", verbose=None,
                          input_signature=None, **kwargs):
        """Exports the base model as a decoder of guiding codes: integer codes
        (B, code_len) int32 ("codes") + images (B, H, W, 3) float32 in
        [-1, 1] ("images") -> the task's outputs (`outputs="predictions"`,
        e.g. panoptic ids (B, H, W, 2) int32) or the base model's logits
        (`outputs="logits"`: one output per key of
        `base_model.label_channels`, (B, H, W, c) each), any batch size.

        The quantizer's codewords are stored as a constant. `format` and
        `kwargs` are Keras' `Model.export`'s: "onnx" (run it with
        onnxruntime: `session.run(None, {"codes": codes, "images": images})`;
        outputs named "predictions" or the logits' keys), "tf_saved_model",
        ... Returns the exported `keras.Model`
        (`uvim_keras.models.serving.CodeDecoder`, called as
        `decoder(codes, images)`).
        """
        check_export_backend(format)
        decoder = CodeDecoder(self.base_model, self.quantizer.codewords(), self.task,
                              outputs=outputs, dtype=self.dtype_policy, name="code_decoder")
        decoder.export(filepath, format=format, verbose=verbose, input_signature=input_signature,
                       **kwargs)
        return decoder

    # -- presets (keras-hub layout; keras-hub is imported only here) ---------------
    @classproperty
    def presets(cls):
        """Named presets that load as a stage-I model: {name: description}.

        Every named preset qualifies: a complete UViM preset holds its
        stage-I model as the keras-hub backbone."""
        return named_presets()

    @classmethod
    def from_preset(cls, preset, load_weights=True, **kwargs):
        """The stage-I model of a preset.

        `preset` is a named preset (`UViMStage1.presets`, e.g.
        "panoptic_coco_stage1": downloaded from big_vision, converted and
        cached on first use), a local preset directory, `hf://org/name`,
        `kaggle://...` or any handle keras-hub understands. Complete UViM
        presets work too (their backbone is the stage-I model). `kwargs`:
        `dtype`, `progress` (download progress bar, default True).
        """
        return load_stage1(preset, load_weights=load_weights, **kwargs)

    def save_to_preset(self, preset_dir, max_shard_size=10, **card):
        """Writes keras-hub's preset layout (`config.json` + `model.weights.h5`
        of the stage-I backbone, EMA dictionary included, `metadata.json`)
        and a model card `README.md`. `card` (optional): `description`,
        `metrics` (dict), `dataset`."""
        return save_stage1(self, preset_dir, max_shard_size=max_shard_size, **card)

    def get_config(self):
        return {
            **super().get_config(),
            "task": keras.saving.serialize_keras_object(self.task),
            "input_size": self.input_size,
            "patch_size": self.patch_size,
            "code_len": self.code_len,
            "dict_size": self.dict_size,
            "codeword_dim": self.codeword_dim,
            "width": self.width,
            "oracle_num_layers": self.oracle_num_layers,
            "base_num_layers": self.base_num_layers,
            "num_heads": self.num_heads,
            "mlp_dim": self.mlp_dim,
            "posemb": self.posemb,
            "bottleneck_resize": self.bottleneck_resize,
            "oracle_image_ctx": self.oracle_image_ctx,
            "base_image_ctx": self.base_image_ctx,
            "code_dropout": self.code_dropout_mode,
            "dict_momentum": self.dict_momentum,
            "min_count": self.min_count,
            "commitment_weight": self.commitment_weight,
            "dropout_rate": self.dropout_rate,
            "zero_code": self.zero_code,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["task"] = resolve_task(config["task"])
        return cls(**config)
