"""Data and model parallelism for the UViM models with `keras.distribution`.

`keras.distribution` (JAX backend) places every variable by a `LayoutMap`
and shards each batch over a data axis; `fit`, `evaluate` and `predict` then
run as one SPMD program over all devices. This module has the layout for
UViM's stage-I model (`UViMStage1`), the guiding-code LM (`GuidingCodeLM`)
and the composite `UViM`, in the Megatron style on a `model` mesh axis:

* attention query/key/value kernels (width, heads, head_dim): on heads;
* attention output kernels (heads, head_dim, width): on heads;
* MLP `dense_0` kernels (width, mlp_dim): on mlp_dim (output);
* MLP `dense_1` kernels (mlp_dim, width): on mlp_dim (input);
* the VQ codebook `quantizer/dictionary` (dict_size, codeword_dim): on dict_size;
* everything else (embeddings, norms, biases, stems, heads, the VQ `counts`)
  replicated.

The batch is split over the other (`batch`) axis. Sharded sizes (heads,
mlp_dim, dict_size) must be divisible by the model-axis size: the
distribution returned by `model_parallel` checks this when each variable is
created and raises (or, with `strict=False`, replicates that variable and
warns).

Single host, all local devices:

>>> from uvim_keras.models.sharding import data_parallel, model_parallel
>>> keras.distribution.set_distribution(data_parallel())
>>> # or: 2-way data x 4-way model parallelism on 8 devices
>>> keras.distribution.set_distribution(model_parallel(shape=(2, 4)))
>>> model = UViMStage1(...)      # create the model *after* setting the distribution
>>> model.compile(...); model.fit(dataset)   # the global batch must divide by 2

Multi-host (TPU pods, several multi-GPU hosts), JAX backend: every host runs
the same script and calls `keras.distribution.initialize(...)` before any
other JAX/Keras computation, then builds the distribution over the *global*
device list (`keras.distribution.list_devices()` lists all hosts' devices
after `initialize`):

* TPU pod slice (Cloud TPU VMs): `keras.distribution.initialize()` with no
  arguments; JAX reads the coordinator, process count and id from the TPU
  environment.
* GPU hosts (e.g. 2 hosts x 8 GPUs): on each host
  `keras.distribution.initialize(job_addresses="10.0.0.1:1234",
  num_processes=2, process_id=i)` -- the address of process 0 (the
  coordinator), the same on all hosts; or set
  `KERAS_DISTRIBUTION_JOB_ADDRESSES`, `KERAS_DISTRIBUTION_NUM_PROCESSES` and
  `KERAS_DISTRIBUTION_PROCESS_ID` in the launcher and call
  `keras.distribution.initialize()` (under SLURM / Open MPI, JAX's own
  cluster detection also works with no arguments).
* Then e.g. `model_parallel(shape=(-1, 8))` over the 16 global devices: keep
  the model axis within a host (fast interconnect); the data axis spans the
  hosts. Each host feeds its own slice of the global batch: a `tf.data`
  dataset is sharded per process automatically (`auto_shard_dataset=True`),
  so give `fit` the per-process pipeline of the *global* batch size. Only
  `tf.data.Dataset`s are auto-sharded in a multi-process run.
* Set the same `keras.utils.set_random_seed` on every host, or let
  `initialize` agree on one, so that variables start equal everywhere.
"""

import math
import warnings

import keras

__all__ = [
    "DATA_AXIS",
    "MODEL_AXIS",
    "UViMModelParallel",
    "data_parallel",
    "model_parallel",
    "uvim_layout_map",
]

DATA_AXIS = "batch"
MODEL_AXIS = "model"

# Regexes (fullmatch on `variable.path`), each with the position of the sharded
# dimension and the variable's rank. Any prefix is allowed ("oracle/transformer/
# block_0/...", "guiding_code_lm/decoder_block_0/...", or models nested deeper).
_ANY = r"(?:.*/)?"
_RULES = (
    (_ANY + r"[^/]*attention/(?:query|key|value)/kernel", 1, 3),
    (_ANY + r"[^/]*attention/attention_output/kernel", 0, 3),
    # MLP kernels are (out, in): shard the mlp_dim axis of both.
    (_ANY + r"mlp/dense_0/kernel", 0, 2),
    (_ANY + r"mlp/dense_1/kernel", 1, 2),
    (_ANY + r"quantizer/dictionary", 0, 2),
)


def uvim_layout_map(device_mesh, model_axis=MODEL_AXIS):
    """A `keras.distribution.LayoutMap` sharding UViM's large kernels on `model_axis`.

    Covers `UViMStage1` (oracle and base model transformers, the VQ codebook),
    `GuidingCodeLM` (encoder and decoder self/cross attention and MLPs) and
    `UViM` (both); all other variables are replicated (the map returns None
    for them). Keys are regexes matched with `re.fullmatch` against variable
    paths, whatever their prefix. Optimizer slots follow their variable.

    Args:
      device_mesh: a `keras.distribution.DeviceMesh` with an axis named
        `model_axis`.
      model_axis: the mesh axis the kernels are sharded over.
    """
    if model_axis not in device_mesh.axis_names:
        raise ValueError(
            f"model_axis={model_axis!r} is not an axis of the device mesh "
            f"{tuple(device_mesh.axis_names)}."
        )
    layout_map = keras.distribution.LayoutMap(device_mesh)
    for pattern, dim, rank in _RULES:
        spec = [None] * rank
        spec[dim] = model_axis
        layout_map[pattern] = tuple(spec)
    return layout_map


def data_parallel(devices=None):
    """`keras.distribution.DataParallel` over `devices` (default: all devices,
    global ones after `keras.distribution.initialize`)."""
    devices = list(devices) if devices is not None else keras.distribution.list_devices()
    return keras.distribution.DataParallel(devices=devices)


class UViMModelParallel(keras.distribution.ModelParallel):
    """`ModelParallel` that checks each sharded dimension divides the mesh axis.

    JAX cannot place a variable whose sharded size does not divide the axis
    (e.g. 12 heads on a 8-way model axis). With `strict=True` the variable's
    creation raises a ValueError naming it; with `strict=False` that variable
    is replicated instead, with a warning.
    """

    def __init__(self, *, layout_map, batch_dim_name=None, strict=True, **kwargs):
        super().__init__(layout_map=layout_map, batch_dim_name=batch_dim_name, **kwargs)
        self.strict = strict

    def get_variable_layout(self, variable):
        layout = super().get_variable_layout(variable)
        if getattr(variable, "_layout", None) is not None or not isinstance(
            layout, keras.distribution.TensorLayout
        ):
            return layout
        mesh = self.device_mesh
        sizes = dict(zip(mesh.axis_names, mesh.shape))
        shape = tuple(variable.shape)
        axes = tuple(layout.axes)
        bad = [
            (dim, axis) for dim, axis in enumerate(axes)
            if axis is not None and (dim >= len(shape) or shape[dim] % sizes[axis])
        ]
        if len(axes) != len(shape) or bad:
            message = (
                f"variable '{variable.path}' of shape {shape} cannot be sharded as {axes} on "
                f"mesh {sizes}: " + (
                    ", ".join(f"dim {d} ({shape[d]}) is not divisible by {a!r} ({sizes[a]})"
                              for d, a in bad if d < len(shape))
                    or "rank mismatch"
                )
            )
            if self.strict:
                raise ValueError(message + " (model_parallel(strict=False) replicates it instead).")
            warnings.warn(message + "; replicating it.", stacklevel=2)
            return keras.distribution.TensorLayout([None] * len(shape), mesh)
        return layout


def model_parallel(shape=(2, 4), devices=None, axis_names=(DATA_AXIS, MODEL_AXIS),
                   strict=True):
    """Data x model parallelism with `uvim_layout_map`.

    Args:
      shape: (data, model) mesh shape; product = number of devices. One entry
        may be -1 (inferred), e.g. `(-1, 4)`.
      devices: devices to use (default: all, global after
        `keras.distribution.initialize`).
      axis_names: (data axis, model axis) names; the batch is split on the first.
      strict: raise (True) or replicate with a warning (False) when a sharded
        dimension is not divisible by the model-axis size.
    Returns:
      a `UViMModelParallel` (a `keras.distribution.ModelParallel`) to pass to
      `keras.distribution.set_distribution` before the model is created.
    """
    devices = list(devices) if devices is not None else keras.distribution.list_devices()
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2 or len(axis_names) != 2:
        raise ValueError(f"shape={shape} and axis_names={axis_names} must both have 2 entries.")
    if shape.count(-1) == 1:
        known = math.prod(s for s in shape if s != -1)
        if known <= 0 or len(devices) % known:
            raise ValueError(f"cannot infer shape={shape} for {len(devices)} devices.")
        shape = tuple(len(devices) // known if s == -1 else s for s in shape)
    if any(s <= 0 for s in shape) or math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh shape {shape} needs {math.prod(shape)} devices; {len(devices)} given."
        )
    mesh = keras.distribution.DeviceMesh(shape=shape, axis_names=list(axis_names), devices=devices)
    return UViMModelParallel(
        layout_map=uvim_layout_map(mesh, model_axis=axis_names[1]),
        batch_dim_name=axis_names[0],
        strict=strict,
    )
