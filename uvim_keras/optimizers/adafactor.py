"""big_vision's Adafactor variant (`big_vision.scale_by_adafactor`) for Keras 3.

UViM trains both stages with big_vision's optimizer stack
(`big_vision.optax.make`): optional global gradient-norm clipping, Adafactor
with a capped second-moment decay and a bfloat16 first moment, the base
learning rate times per-parameter multipliers, decoupled weight decay on
kernels, all multiplied by the learning-rate schedule. `BigVisionAdafactor`
reproduces that stack as one Keras optimizer that runs on jax, tensorflow
and torch (checked against numbers from big_vision's code in
`tests/test_optimizers.py`).
"""

import re

import keras
import numpy as np
from keras import ops

from uvim_keras.checkpoints.big_vision import variable_map

#: big_vision's stage-II `config.lr_mults` (encoder, its patch embedding and
#: its position embedding at 0.1 x the learning rate) for uvim_keras'
#: `GuidingCodeLM` variable paths.
UVIM_STAGE2_LR_MULTIPLIERS = (
    (r"(.*/)?guiding_code_lm/(image_embedding|encoder_posemb|encoder)/.*", 0.1),
)

#: Default weight-decay mask: big_vision's `wd_mults=[(".*/kernel$", 1.0)]`.
#: In uvim_keras every variable that big_vision calls `.../kernel` has a path
#: ending in `kernel` (`.../kernel`, `.../query_kernel`, ...) and no other.
DEFAULT_WEIGHT_DECAY_MULTIPLIERS = ((r".*kernel", 1.0),)


def _pairs(value, what):
    """Normalises a {regex: multiplier} dict or [(regex, multiplier)] list."""
    if value is None:
        return ()
    items = value.items() if isinstance(value, dict) else value
    out = []
    for item in items:
        try:
            pattern, mult = item
        except (TypeError, ValueError):
            raise ValueError(
                f"{what} must be a dict {{regex: multiplier}} or a list of "
                f"(regex, multiplier) pairs; got the entry {item!r}."
            ) from None
        if not isinstance(pattern, str):
            raise ValueError(f"{what}: pattern {pattern!r} is not a string.")
        if pattern.startswith("/"):
            raise ValueError(
                f"{what}: pattern {pattern!r} starts with '/'; variable paths "
                "do not (e.g. 'guiding_code_lm/encoder/...')."
            )
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"{what}: invalid regex {pattern!r}: {e}") from None
        mult = float(mult)
        if mult < 0:
            raise ValueError(f"{what}: multiplier {mult} for {pattern!r} is negative.")
        out.append((pattern, mult))
    return tuple(out)


def _first_match(pairs, name, default):
    """Multiplier of the first pattern that fully matches `name` (as
    big_vision's `utils.make_mask_trees`), else `default`."""
    for pattern, mult in pairs:
        if re.fullmatch(pattern, name):
            return mult
    return default


def _numpy_dtype(name):
    if name == "bfloat16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    return np.dtype(name)


def _factored_dims(shape, min_dim_size_to_factor):
    """(d1, d0): the second-largest and the largest axis, or None.

    As optax's `scale_by_factored_rms`: rank >= 2 and the second-largest
    dimension >= `min_dim_size_to_factor`. Ties keep axis order (a stable
    sort), so (32, 32) gives (0, 1).
    """
    if len(shape) < 2:
        return None
    order = sorted(range(len(shape)), key=lambda i: shape[i])
    if shape[order[-2]] < min_dim_size_to_factor:
        return None
    return order[-2], order[-1]


@keras.saving.register_keras_serializable(package="uvim_keras")
class BigVisionAdafactor(keras.optimizers.Optimizer):
    """big_vision's Adafactor variant with UViM's optimizer recipe.

    One step, for a variable `p` with gradient `g` (after the optional global
    norm clipping of all non-frozen gradients, `global_clipnorm`):

        t     = step - decay_offset + 1
        beta2 = min(beta2_cap, 1 - t ** -decay_rate)            # 0 at t = 1
        g2    = g ** 2 + epsilon
        factored (two largest axes d1, d0 both >= min_dim_size_to_factor):
            r = beta2 r + (1 - beta2) mean(g2, d0)
            c = beta2 c + (1 - beta2) mean(g2, d1)
            u = g * (r / mean(r over d1)) ** -0.5 * c ** -0.5
        otherwise:
            v = beta2 v + (1 - beta2) g2;   u = g * v ** -0.5
        u     = u / max(1, rms(u) / clipping_threshold)        # if threshold set
        m     = (1 - momentum) u + momentum * m;   u = m       # if momentum set
        p     = p - lr(step) * lr_mult * u
                  - weight_decay * wd_mult * lr(step) / base_learning_rate * p

    which is big_vision's `optax.make` chain: `clip_by_global_norm`,
    `scale_by_adafactor` (`scale_by_factored_rms` with the capped decay,
    `clip_by_block_rms`, `ema(debias=False)`), `scale(config.lr)`,
    `lr_mults`, `add_decayed_weights(config.wd * wd_mult)` and the schedule
    multiplier. Worth knowing:

    * weight decay is *not* multiplied by the learning rate or by
      `lr_multipliers`, only by the schedule's shape
      `lr(step) / base_learning_rate` (in [0, 1]); UViM's `wd=1e-6` removes
      1e-6 of a kernel per step at the peak of the schedule;
    * the first moment is stored in `momentum_dtype` (bfloat16 in
      big_vision). As in optax under `jax.jit` on CPU, the momentum constant
      is first rounded to that dtype (0.9 -> 0.8984375 in bfloat16, jax's
      weak typing), the decayed old moment and the sum are float32, and the
      update uses the float32 sum before it is rounded for storage;
    * frozen variables (multiplier 0) are dropped before clipping, so, as in
      big_vision, they do not count in the global gradient norm.

    Differences to big_vision that remain: eager (un-jitted) jax would also
    round `momentum * m` to bfloat16 (at most one bfloat16 ulp); on
    tensorflow and torch a last-bit float32 difference (rsqrt, reduction
    order) occasionally rounds one first-moment element to the neighbouring
    bfloat16 value; Keras' `global_clipnorm` gives NaN (optax: 0) when the
    gradient norm is infinite; only one schedule (big_vision allows a
    different schedule per regex), no `grad_clip_per_example`.

    Args:
        learning_rate: float or schedule: big_vision's `config.lr` times its
            schedule, e.g. `CosineWarmup(1e-3, total_steps, 4_000)`.
        weight_decay: big_vision's `config.wd` (decoupled, see above).
        lr_multipliers: `{regex: multiplier}` (or a list of pairs, first full
            match wins, unmatched variables get 1.0), matched against
            variable paths such as `guiding_code_lm/encoder/block_0/mlp/
            dense_0/kernel` (or against `variable_names`). A multiplier of 0
            freezes the variables: no optimizer state, no weight decay, and
            their gradients are left out of the global norm, as big_vision's
            `schedule=[(regex, None), ...]`.
        weight_decay_multipliers: `{regex: multiplier}` like big_vision's
            `wd_mults`; variables matching none are not decayed. Default:
            every variable whose path ends in `kernel`.
        variable_names: optional `{variable path: name}` used instead of the
            path for matching, e.g. `big_vision_variable_names(model)`, so
            that big_vision's own patterns can be used verbatim.
        base_learning_rate: the learning rate at which the schedule
            multiplier is 1. Defaults to `learning_rate` when it is a float
            and to `learning_rate.base_learning_rate` for `CosineWarmup`;
            required for other schedules when `weight_decay` is set.
        min_dim_size_to_factor, decay_rate, decay_offset, beta2_cap,
            clipping_threshold, momentum, epsilon: as
            `big_vision.optax.scale_by_adafactor`; the defaults are UViM's
            configs (`beta2_cap=0.95`, big_vision's own default is 0.999;
            no update clipping, as `clipping_threshold=None` there).
        momentum_dtype: dtype of the first moment ("bfloat16" as big_vision,
            or "float32").
        global_clipnorm: big_vision's `grad_clip_norm` (UViM stage I: 1.0).
        **kwargs: other `keras.optimizers.Optimizer` arguments (`clipnorm`,
            `clipvalue`, `use_ema`, `loss_scale_factor`, ...). Note that with
            `gradient_accumulation_steps`, Keras counts micro-steps in
            `iterations`, which also drives the schedule and `beta2` here.

    Example (UViM stage II; big_vision's `train_coco_panoptic_pretrained`:
    lr 1e-3, wd 1e-6, encoder x 0.1, cosine with 4k warmup steps):
    >>> from uvim_keras.optimizers import CosineWarmup, UVIM_STAGE2_LR_MULTIPLIERS
    >>> total_steps = 200 * 114_191 // 512  # epochs * train images // batch size
    >>> model.compile(  # doctest: +SKIP
    ...     optimizer=BigVisionAdafactor(
    ...         learning_rate=CosineWarmup(1e-3, total_steps, warmup_steps=4_000),
    ...         weight_decay=1e-6,
    ...         lr_multipliers={
    ...             r"guiding_code_lm/(image_embedding|encoder_posemb|encoder)/.*": 0.1},
    ...     ),
    ...     loss=...)

    (`lr_multipliers=UVIM_STAGE2_LR_MULTIPLIERS` is the same.) Stage I
    (`vqvae_*` configs: lr 4e-4 or 1e-3, wd 4e-5 or 1e-5, gradient clipping):
    >>> optimizer = BigVisionAdafactor(
    ...     learning_rate=CosineWarmup(4e-4, total_steps, warmup_steps=4_000),
    ...     weight_decay=4e-5, global_clipnorm=1.0)

    big_vision's own patterns on big_vision names, with the encoder frozen:
    >>> optimizer = BigVisionAdafactor(  # doctest: +SKIP
    ...     learning_rate=1e-3,
    ...     lr_multipliers=[("pos_embedding_encoder.*", 0.1), ("EmbedPatches.*", 0.1),
    ...                     ("encoder.*", 0.0)],
    ...     weight_decay_multipliers=[(".*/kernel$", 1.0)],
    ...     variable_names=big_vision_variable_names(lm))
    """

    def __init__(
        self,
        learning_rate=1e-3,
        weight_decay=0.0,
        lr_multipliers=None,
        weight_decay_multipliers=None,
        variable_names=None,
        base_learning_rate=None,
        min_dim_size_to_factor=32,
        decay_rate=0.8,
        decay_offset=0,
        beta2_cap=0.95,
        clipping_threshold=None,
        momentum=0.9,
        momentum_dtype="bfloat16",
        epsilon=1e-30,
        name="big_vision_adafactor",
        **kwargs,
    ):
        super().__init__(learning_rate=learning_rate, weight_decay=None, name=name, **kwargs)
        # `self.weight_decay` is read by Keras' own (coupled-to-lr) decay in
        # `_apply_weight_decay`; keep it None and store big_vision's wd apart.
        self.bv_weight_decay = float(weight_decay or 0.0)
        if self.bv_weight_decay < 0:
            raise ValueError(f"weight_decay={weight_decay} must be >= 0.")
        self.lr_multipliers = _pairs(lr_multipliers, "lr_multipliers")
        self.weight_decay_multipliers = (
            DEFAULT_WEIGHT_DECAY_MULTIPLIERS
            if weight_decay_multipliers is None
            else _pairs(weight_decay_multipliers, "weight_decay_multipliers")
        )
        self.variable_names = dict(variable_names or {})
        if base_learning_rate is None:
            if isinstance(learning_rate, (int, float)):
                base_learning_rate = float(learning_rate)
            else:
                base_learning_rate = getattr(learning_rate, "base_learning_rate", None)
        if base_learning_rate is None and self.bv_weight_decay:
            raise ValueError(
                "weight_decay is scaled by learning_rate(step) / base_learning_rate "
                "(big_vision multiplies it by the schedule, not by the learning "
                f"rate); pass base_learning_rate for the schedule {learning_rate!r}."
            )
        if base_learning_rate is not None and float(base_learning_rate) <= 0:
            raise ValueError(f"base_learning_rate={base_learning_rate} must be > 0.")
        self.base_learning_rate = (
            None if base_learning_rate is None else float(base_learning_rate)
        )
        if momentum is not None and not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum={momentum} must lie in [0, 1) or be None.")
        if clipping_threshold is not None and clipping_threshold <= 0:
            raise ValueError(f"clipping_threshold={clipping_threshold} must be > 0.")
        self.min_dim_size_to_factor = int(min_dim_size_to_factor)
        self.decay_rate = float(decay_rate)
        self.decay_offset = int(decay_offset)
        self.beta2_cap = float(beta2_cap)
        self.clipping_threshold = (
            None if clipping_threshold is None else float(clipping_threshold)
        )
        self.momentum = None if not momentum else float(momentum)
        self.momentum_dtype = keras.backend.standardize_dtype(momentum_dtype)
        self._momentum_in_dtype = (
            None if self.momentum is None
            else float(np.asarray(self.momentum, _numpy_dtype(self.momentum_dtype)))
        )
        self.epsilon = float(epsilon)

    # -- per-variable settings -------------------------------------------------
    def _name_of(self, variable):
        path = variable.path
        return self.variable_names.get(path, path)

    def lr_multiplier(self, variable):
        """The learning-rate multiplier of a model variable (0: frozen)."""
        return _first_match(self.lr_multipliers, self._name_of(variable), 1.0)

    def weight_decay_multiplier(self, variable):
        """The weight-decay multiplier of a model variable (0 if frozen)."""
        if self.lr_multiplier(variable) == 0.0:
            return 0.0
        return _first_match(self.weight_decay_multipliers, self._name_of(variable), 0.0)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._lr_mults, self._wd_mults, self._factored = [], [], []
        self._v_row, self._v_col, self._v, self._mu = [], [], [], []
        for var in var_list:
            lr_mult = self.lr_multiplier(var)
            frozen = lr_mult == 0.0 or self._overwrite_variable_with_gradient(var)
            self._lr_mults.append(lr_mult)
            self._wd_mults.append(0.0 if frozen else self.weight_decay_multiplier(var))
            dims = None if frozen else _factored_dims(tuple(var.shape), self.min_dim_size_to_factor)
            self._factored.append(dims)
            stem = var.path.replace("/", "_")
            row = col = v = mu = None
            if not frozen:
                if dims is not None:
                    d1, d0 = dims
                    shape = tuple(var.shape)
                    row = self.add_variable(
                        shape=shape[:d0] + shape[d0 + 1:], dtype=var.dtype,
                        name=f"{stem}_v_row",
                    )
                    col = self.add_variable(
                        shape=shape[:d1] + shape[d1 + 1:], dtype=var.dtype,
                        name=f"{stem}_v_col",
                    )
                else:
                    v = self.add_variable_from_reference(var, "v")
                if self.momentum:
                    mu = self.add_variable(
                        shape=var.shape, dtype=self.momentum_dtype, name=f"{stem}_mu",
                        layout=getattr(var, "_layout", None),
                    )
            self._v_row.append(row)
            self._v_col.append(col)
            self._v.append(v)
            self._mu.append(mu)

    def slot_variables(self, variable):
        """`{"v_row", "v_col", "v", "mu"}` -> optimizer variable (or None) of
        a model variable: the factored second-moment statistics (optax's
        `v_row`: `variable`'s shape without its largest axis, `v_col`:
        without its second largest), the unfactored one, the first moment."""
        i = self._get_variable_index(variable)
        return {
            "v_row": self._v_row[i],
            "v_col": self._v_col[i],
            "v": self._v[i],
            "mu": self._mu[i],
        }

    def _has_no_slots(self, index):
        # Frozen (multiplier 0) or `overwrite_with_gradient` variables.
        return self._v[index] is None and self._v_row[index] is None

    def _filter_empty_gradients(self, grads, vars):
        # Frozen variables leave the step here, before gradient clipping, so
        # that (as big_vision's masked `clip_by_global_norm`) their gradients
        # do not count in the global norm and they get no update.
        grads, vars = super()._filter_empty_gradients(grads, vars)
        if not self.built or not any(m == 0.0 for m in self._lr_mults):
            return grads, vars
        kept = [
            (g, v) for g, v in zip(grads, vars)
            if self._lr_mults[self._get_variable_index(v)] != 0.0
        ]
        if not kept:
            return [], []
        grads, vars = zip(*kept)
        return list(grads), list(vars)

    # -- the step ----------------------------------------------------------------
    def update_step(self, gradient, variable, learning_rate):
        # On tensorflow `variable` is the backend tf.Variable (no `.path`); all
        # per-variable settings are looked up by index.
        i = self._get_variable_index(variable)
        if self._has_no_slots(i):
            return
        dtype = variable.dtype
        g = ops.cast(gradient, dtype)
        lr = ops.cast(learning_rate, dtype)

        t = ops.cast(self.iterations - self.decay_offset, "float32") + 1.0
        beta2 = ops.minimum(self.beta2_cap, 1.0 - ops.power(t, -self.decay_rate))
        beta2 = ops.cast(beta2, dtype)
        one_minus = 1.0 - beta2
        g2 = ops.square(g) + ops.cast(self.epsilon, dtype)

        dims = self._factored[i]
        if dims is not None:
            d1, d0 = dims
            row_var, col_var = self._v_row[i], self._v_col[i]
            row = beta2 * row_var + one_minus * ops.mean(g2, axis=d0)
            col = beta2 * col_var + one_minus * ops.mean(g2, axis=d1)
            self.assign(row_var, row)
            self.assign(col_var, col)
            reduced_d1 = d1 - 1 if d1 > d0 else d1
            row_col_mean = ops.mean(row, axis=reduced_d1, keepdims=True)
            row_factor = ops.rsqrt(row / row_col_mean)
            col_factor = ops.rsqrt(col)
            u = g * ops.expand_dims(row_factor, d0) * ops.expand_dims(col_factor, d1)
        else:
            v = beta2 * self._v[i] + one_minus * g2
            self.assign(self._v[i], v)
            u = g * ops.rsqrt(v)

        if self.clipping_threshold is not None:
            rms = ops.sqrt(ops.mean(ops.square(u)))
            u = u / ops.maximum(1.0, rms / self.clipping_threshold)

        if self.momentum:
            mu_var = self._mu[i]
            # optax.ema: (1 - d) * u + d * m; `d` is rounded to m's dtype (jax
            # weak typing), the product is float32 (XLA under jit).
            decayed = ops.cast(mu_var, dtype) * ops.cast(self._momentum_in_dtype, dtype)
            u = ops.cast(1.0 - self.momentum, dtype) * u + decayed
            self.assign(mu_var, ops.cast(u, self.momentum_dtype))

        delta = lr * ops.cast(self._lr_mults[i], dtype) * u
        wd = self.bv_weight_decay * self._wd_mults[i]
        if wd:
            sched = lr / ops.cast(self.base_learning_rate, dtype)
            delta = delta + sched * ops.cast(wd, dtype) * variable
        self.assign_sub(variable, delta)

    # -- serialization -----------------------------------------------------------
    @classmethod
    def from_config(cls, config, custom_objects=None):
        # Keras' from_config replaces the schedule in the dict it is given.
        return super().from_config(dict(config), custom_objects=custom_objects)

    def get_config(self):
        config = super().get_config()
        config.pop("weight_decay", None)
        config.update(
            {
                "weight_decay": self.bv_weight_decay,
                "lr_multipliers": [list(p) for p in self.lr_multipliers],
                "weight_decay_multipliers": [list(p) for p in self.weight_decay_multipliers],
                "variable_names": dict(self.variable_names),
                "base_learning_rate": self.base_learning_rate,
                "min_dim_size_to_factor": self.min_dim_size_to_factor,
                "decay_rate": self.decay_rate,
                "decay_offset": self.decay_offset,
                "beta2_cap": self.beta2_cap,
                "clipping_threshold": self.clipping_threshold,
                "momentum": self.momentum,
                "momentum_dtype": self.momentum_dtype,
                "epsilon": self.epsilon,
            }
        )
        return config


def big_vision_variable_names(model):
    """`{variable path: big_vision parameter name}` for a uvim_keras model
    (`UViMStage1` or `GuidingCodeLM`), without the `params/` prefix, e.g.
    `guiding_code_lm/encoder/block_0/mlp/dense_0/kernel` ->
    `encoder/encoderblock_0/MlpBlock_0/Dense_0/kernel`. Pass it as
    `BigVisionAdafactor(variable_names=...)` to use big_vision's `lr_mults`
    and `wd_mults` patterns unchanged."""
    out = {}
    for name, var in variable_map(model).items():
        if name.startswith("params/"):
            out[var.path] = name[len("params/"):]
    return out
