"""Serving: what `UViM.export` and `UViMStage1.export_base_model` need.

* `image_signature(input_size)`: the default input signature of an exported
  UViM, a float32 image batch (None, H, W, 3) with any batch size (a
  subclassed model that was never called has none Keras could infer).
* `CodeDecoder`: a small `keras.Model` over a trained stage-I base model that
  decodes integer guiding codes (B, code_len) and images (B, H, W, 3) into
  the task's outputs (or the base model's logits). It shares the base
  model's weights and holds the quantizer's codewords as a constant, so
  Keras' `export(format="onnx")` gives a self-contained ONNX graph.

Where Keras' exporters run (Keras 3.15):

* TF SavedModel (`format="tf_saved_model"`): JAX (through jax2tf) and
  TensorFlow. Keras exports a torch model through `torch_xla`'s StableHLO
  bridge only, which this project does not install.
* ONNX (`format="onnx"`): TensorFlow (`tf2onnx`), JAX (`jax2onnx`) and torch
  (`torch.onnx`: for a dynamic batch Keras takes its TorchScript exporter,
  which needs `onnx` only; `onnxscript` for a fixed batch's dynamo
  exporter); all need `onnx`, and `onnxruntime` runs the file.
"""

import importlib.util
import warnings

import keras
import numpy as np
from keras import ops

from uvim_keras.runtime.backend import onnx_compatible_ops
from uvim_keras.models.checks import check_image, check_same_batch

#: What `CodeDecoder` returns: the task's outputs or the base model's logits.
DECODER_OUTPUTS = ("predictions", "logits")


def image_signature(input_size, batch_size=None):
    """[InputSpec (batch_size, H, W, 3) float32]: an exported UViM's input."""
    return [keras.InputSpec(shape=(batch_size, *input_size, 3), dtype="float32", name="images")]


def check_export_backend(format):
    """Raises a clear error where Keras cannot export `format` from the
    current backend with what is installed."""
    backend = keras.backend.backend()
    if format == "tf_saved_model":
        if backend not in ("jax", "tensorflow", "torch"):
            raise ValueError(f"Keras exports a TF SavedModel from jax, tensorflow and torch; "
                             f"the backend is {backend}.")
        if importlib.util.find_spec("tensorflow") is None:
            raise ImportError("exporting a TF SavedModel needs tensorflow: "
                              "pip install 'uvim-keras[tensorflow]'.")
        if backend == "torch" and importlib.util.find_spec("torch_xla") is None:
            raise ImportError(
                "Keras exports a TF SavedModel from the torch backend through torch_xla's "
                "StableHLO bridge, which is not installed. Export from the jax or tensorflow "
                "backend instead (KERAS_BACKEND=jax; the preset or .keras file loads there), or "
                "export ONNX (format='onnx').")


class CodeDecoder(keras.Model):
    """Integer guiding codes (B, code_len) + images (B, H, W, 3) in [-1, 1]
    -> the task's outputs (`outputs="predictions"`, e.g. panoptic ids
    (B, H, W, 2) int32) or the base model's logits (`outputs="logits"`: a
    tuple of (B, H, W, c) float32, one per key of `exported_output_names`).

    The base model's weights are shared with the stage-I model; the
    quantizer's codewords are taken once, as a constant. Call it as
    `decoder(codes, images)`. `UViMStage1.export_base_model` builds and
    exports one.

    Args:
      base_model: the stage-I `BaseModel` (weights shared, not copied).
      codewords: (dict_size, codeword_dim) float array, the quantizer's
        `codewords()`; stored as a float32 constant.
      task: the `UViMTask` whose `predict_outputs` turn logits into outputs.
      outputs: str. `"predictions"` (the task's outputs) or `"logits"`.
        Defaults to `"predictions"`.
      **kwargs: `keras.Model` arguments (`name`, `dtype`, ...).

    Example:
    >>> decoder = CodeDecoder(stage1.base_model, stage1.quantizer.codewords(), stage1.task)
    >>> panoptic = decoder(codes, images)  # codes (B, code_len) int32
    >>> decoder.export("decoder.onnx", format="onnx")
    """

    def __init__(self, base_model, codewords, task, outputs="predictions", **kwargs):
        super().__init__(**kwargs)
        if outputs not in DECODER_OUTPUTS:
            raise ValueError(f"outputs={outputs!r}; expected one of {DECODER_OUTPUTS}.")
        self.base_model = base_model
        self.task = task
        self.outputs_kind = outputs
        self._codewords = np.asarray(keras.ops.convert_to_numpy(codewords), "float32")
        self.input_size = tuple(base_model.input_size)
        self.code_len = int(base_model.code_len)
        self.built = True

    def call(self, codes, images):
        check_image(images, self.input_size, name="images")
        check_same_batch(codes, images, "codes", "images")
        codewords = ops.convert_to_tensor(self._codewords)
        logits = self.base_model(ops.cast(codes, "int32"), image=images, codewords=codewords)
        if self.outputs_kind == "logits":  # a tuple: the same order on every backend
            return tuple(ops.cast(logits[key], "float32") for key in self.exported_output_names)
        return self.task.predict_outputs(logits)

    @property
    def exported_output_names(self):
        """The names of the exported outputs, in order."""
        if self.outputs_kind == "logits":
            return tuple(self.base_model.label_channels)
        return ("predictions",)

    def export(self, filepath, format="tf_saved_model", verbose=None, input_signature=None,
               **kwargs):
        """Keras' `Model.export`; the default input signature is
        `input_signature()`. ONNX files get the inputs "codes" and "images"
        and the outputs `exported_output_names`."""
        if input_signature is None:
            input_signature = self.input_signature()
        if format != "onnx":
            return super().export(filepath, format=format, verbose=verbose,
                                  input_signature=input_signature, **kwargs)
        with onnx_compatible_ops(), warnings.catch_warnings():
            if keras.backend.backend() == "torch":
                import torch

                # Tracing reads the fixed image size and code length as
                # constants, which torch warns about; the batch stays dynamic.
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
            super().export(filepath, format=format, verbose=verbose,
                           input_signature=input_signature, **kwargs)
        name_onnx_outputs(filepath, self.exported_output_names)

    def input_signature(self, batch_size=None):
        """[codes (batch, code_len) int32, images (batch, H, W, 3) float32]."""
        return [
            keras.InputSpec(shape=(batch_size, self.code_len), dtype="int32", name="codes"),
            keras.InputSpec(shape=(batch_size, *self.input_size, 3), dtype="float32",
                            name="images"),
        ]


def name_onnx_outputs(filepath, names):
    """Renames the graph outputs of the ONNX file at `filepath` to `names`
    (the exporters name them after internal ops, differently per backend)."""
    import onnx

    model = onnx.load(str(filepath))
    graph = model.graph
    if len(graph.output) != len(names):
        raise ValueError(f"the ONNX graph has {len(graph.output)} outputs; expected {len(names)}.")
    renames = {out.name: new for out, new in zip(graph.output, names) if out.name != new}
    if not renames:
        return
    taken = {v for node in graph.node for v in node.output} | {i.name for i in graph.input}
    clashes = (set(renames.values()) & taken) - set(renames)
    if clashes:
        raise ValueError(f"cannot name ONNX outputs {sorted(clashes)}: names already used.")

    def rename(values):
        for i, value in enumerate(values):
            if value in renames:
                values[i] = renames[value]

    for node in graph.node:
        rename(node.input)
        rename(node.output)
    for info in list(graph.output) + list(graph.value_info):
        info.name = renames.get(info.name, info.name)
    onnx.save(model, str(filepath))
