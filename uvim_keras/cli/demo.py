"""The built-in default: a two-stage UViM trained and evaluated on a CPU.

`run_demo("panoptic")` generates the procedural shapes dataset, trains

1. the base model without any code (the paper's "no oracle" ablation),
2. stage I (oracle + quantizer + code dropout + base model),
3. stage II (the guiding-code LM on the frozen oracle's codes),

evaluates the three on a held-out split (PQ for panoptic, RMSE & co. for
depth, MSE and colourfulness for colorization) and writes a Markdown + JSON
report, PNG figures and the trained models (`.keras`) to the output folder.

Command line: `uvim-keras demo [--task panoptic|depth|colorization] [--quick]
[--seed S] [--out DIR]`.
"""

import dataclasses
import json
import os
import time

import keras
import numpy as np

import uvim_keras  # noqa: F401  (registers the model classes .keras files name)
from uvim_keras.checkpoints.pretrained_vit import init_lm_encoder_from_base_model
from uvim_keras.code_diagnostics import code_diagnostics
from uvim_keras.data.synthetic import SYNTHETIC_TASKS, make_synthetic
from uvim_keras.layers.code_dropout import CODE_DROPOUT_MODES
from uvim_keras.metrics.host import to_numpy
from uvim_keras.models import GuidingCodeLM, UViM, UViMStage1
from uvim_keras.presets.layout import record_integrity, rewrite_h5_arrays, write_text_atomic
from uvim_keras.tasks import get_task
from uvim_keras.visualize.figures import demo_figure


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Sizes and schedule of one demo run.

    The field defaults are the paper's recipe in miniature (`PAPER_CONFIGS`;
    what `uvim-keras ablate` changes one thing of): code dropout on, an LM
    with as many encoder and decoder blocks as the base model. They came from
    a sweep (dictionary 32-256 words, code of 16 or 64 words, 8-16 stage-I and
    10-40 stage-II epochs; 3 seeds of the winner): a 64-word code (one word per
    8x8-pixel patch, so the bottleneck resize is the identity) from a 64-word
    dictionary lets the oracle carry the instance layout; with a 16-word code
    the oracle was barely better than no code at all, and with 3000 instead
    of 4000 training images the LM did not learn to predict the code. Width
    96 with a 1-block oracle and a 2-block base model gave the same ordering
    at a third of the compute of width 128 with 2 + 3 blocks. The demo's own
    recipes (`TASK_CONFIGS`) change this for its time budget.

    Fields: image `size`, `patch_size`; the guiding code (`code_len` words
    from `dict_size`, `codeword_dim`-d codewords, `code_dropout` mode); the
    stage-I ViTs (`width`, `num_heads`, `mlp_dim`, `oracle_num_layers`,
    `base_num_layers`, `oracle_image_ctx`: whether the oracle also sees the
    image); the LM (`lm_layers` encoder and decoder blocks, `lm_width`,
    `lm_mlp_dim`); data (`train_examples`, `eval_examples`); schedule
    (`batch_size`, `learning_rate`, and the epochs of the no-code model,
    stage I and stage II); `lm_init_from_no_code` / `base_init_from_no_code`
    start the LM's image encoder / stage I's base model from the trained
    no-code model (as the paper starts from pretrained ViTs).

    Example:
    >>> config = dataclasses.replace(demo_config("panoptic"), stage2_epochs=10)
    >>> # run_demo("panoptic", config=config)
    """

    size: int = 64
    patch_size: int = 8
    code_len: int = 64
    dict_size: int = 64
    codeword_dim: int = 32
    width: int = 96
    num_heads: int = 4
    mlp_dim: int = 192
    oracle_num_layers: int = 1
    base_num_layers: int = 2
    lm_layers: int = 2
    lm_width: int = 96
    lm_mlp_dim: int = 192
    train_examples: int = 4000
    eval_examples: int = 200
    batch_size: int = 32
    no_code_epochs: int = 12
    stage1_epochs: int = 12
    stage2_epochs: int = 20
    learning_rate: float = 2e-3
    code_dropout: str = "random"
    oracle_image_ctx: bool = True
    base_image_ctx: bool = True
    lm_init_from_no_code: bool = False
    base_init_from_no_code: bool = False

    def quick(self):
        return dataclasses.replace(
            self, size=32, code_len=16, dict_size=32, width=64, mlp_dim=128,
            base_num_layers=1, lm_layers=1, lm_width=64, lm_mlp_dim=128, train_examples=256,
            eval_examples=32, no_code_epochs=2, stage1_epochs=2, stage2_epochs=2,
        )


DEFAULT_CONFIG = DemoConfig()

#: The paper's recipe in miniature per task (`uvim-keras ablate`'s `default`
#: column): panoptic `DEFAULT_CONFIG`; depth with 3000 images, 10 no-code and
#: stage-I epochs and the LM's encoder and stage I's base model started from
#: the no-code model; colorization with the LM's encoder started from the
#: no-code model. Why (the proxy runs behind each choice):
#: benchmarks/README.md, "The demo's recipes".
PAPER_CONFIGS = {
    "panoptic": DEFAULT_CONFIG,
    "depth": dataclasses.replace(
        DEFAULT_CONFIG, train_examples=3000, no_code_epochs=10, stage1_epochs=10,
        lm_init_from_no_code=True, base_init_from_no_code=True),
    "colorization": dataclasses.replace(DEFAULT_CONFIG, lm_init_from_no_code=True),
}

#: The recipe of `uvim-keras demo --task NAME`: `PAPER_CONFIGS` fitted to
#: about five minutes on 2 CPU cores. Panoptic trains stage I without code
#: dropout (the ablations measured UViM 13 PQ better without it on these
#: shapes), the no-code model and stage I for 10 epochs each, and a 1-block
#: LM (encoder and decoder; a step costs 0.4 of the 2-block LM's, for about
#: 4 PQ less) for 16;
#: depth trains stage I for 8 epochs and the LM for 16 (UViM's RMSE 0.745
#: instead of 0.740 on seed 0). Measurements: benchmarks/README.md, "The
#: demo's time and recipe" and "The demo's recipes".
TASK_CONFIGS = {
    **PAPER_CONFIGS,
    "panoptic": dataclasses.replace(
        PAPER_CONFIGS["panoptic"], code_dropout="none", no_code_epochs=10, stage1_epochs=10,
        stage2_epochs=16, lm_layers=1),
    "depth": dataclasses.replace(PAPER_CONFIGS["depth"], stage1_epochs=8, stage2_epochs=16),
}


def _recipe(configs, task, quick):
    config = configs.get(task, DEFAULT_CONFIG)
    return config.quick() if quick else config


def demo_config(task="panoptic", quick=False):
    """The default DemoConfig of `task` (its `quick()` smoke version if `quick`)."""
    return _recipe(TASK_CONFIGS, task, quick)


def paper_config(task="panoptic", quick=False):
    """The paper's recipe in miniature for `task` (`PAPER_CONFIGS`; its
    `quick()` smoke version if `quick`)."""
    return _recipe(PAPER_CONFIGS, task, quick)


def check_args(task, seed, out, config):
    if task not in SYNTHETIC_TASKS:
        raise ValueError(f"task={task!r}; expected one of {sorted(SYNTHETIC_TASKS)}.")
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed={seed!r}; expected a non-negative int.")
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, (bool, str)):
            continue
        if value <= 0:
            raise ValueError(f"{field.name}={value!r}; expected a positive value.")
    if config.code_dropout not in CODE_DROPOUT_MODES:
        raise ValueError(f"code_dropout={config.code_dropout!r}; expected one of "
                         f"{CODE_DROPOUT_MODES}.")
    if config.lm_init_from_no_code and (config.lm_layers, config.lm_width, config.lm_mlp_dim) != (
            config.base_num_layers, config.width, config.mlp_dim):
        raise ValueError(
            "lm_init_from_no_code needs the LM's encoder shaped as the base model: "
            f"(lm_layers, lm_width, lm_mlp_dim) = {(config.lm_layers, config.lm_width, config.lm_mlp_dim)}"
            f" and (base_num_layers, width, mlp_dim) = "
            f"{(config.base_num_layers, config.width, config.mlp_dim)}.")
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, ".write_test")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise ValueError(f"out={out!r} cannot be written ({e.strerror or e}).") from None


def optimizer(config, epochs):
    """Adam with a warm-up + cosine schedule over `epochs` of the recipe's data."""
    steps = epochs * (config.train_examples // config.batch_size)
    lr = keras.optimizers.schedules.CosineDecay(
        0.0, steps, warmup_target=config.learning_rate, warmup_steps=max(steps // 20, 1),
    )
    return keras.optimizers.Adam(lr, global_clipnorm=1.0)


def make_task(task_name, **options):
    """The task object of the synthetic data `task_name`; `options` override
    the dataset's task arguments (e.g. `output="mean"` for depth)."""
    return get_task(task_name, **{**SYNTHETIC_TASKS[task_name]["task_kwargs"], **options})


def build_stage1(task, config, seed, zero_code=False):
    """The recipe's stage-I model (`zero_code`: the no-code model), seeded."""
    keras.utils.set_random_seed(seed)
    return UViMStage1(
        task, input_size=config.size, patch_size=config.patch_size, code_len=config.code_len,
        dict_size=config.dict_size, codeword_dim=config.codeword_dim, width=config.width,
        oracle_num_layers=config.oracle_num_layers, base_num_layers=config.base_num_layers,
        num_heads=config.num_heads, mlp_dim=config.mlp_dim, zero_code=zero_code, seed=seed,
        code_dropout=config.code_dropout, oracle_image_ctx=config.oracle_image_ctx,
        base_image_ctx=config.base_image_ctx,
    )


def build_lm(config, seed, autoregressive=True):
    """The recipe's guiding-code LM, seeded (`autoregressive=False`: the
    paper's "no Autoreg." LM)."""
    keras.utils.set_random_seed(seed)
    return GuidingCodeLM(
        input_size=config.size, patch_size=config.patch_size, code_len=config.code_len,
        dict_size=config.dict_size, width=config.lm_width, num_layers=config.lm_layers,
        num_heads=config.num_heads, mlp_dim=config.lm_mlp_dim, autoregressive=autoregressive,
    )


def batched(fn, arrays, batch_size):
    """`fn` over `arrays` ({name: array}) in batches, outputs concatenated."""
    outs = [fn({k: v[i:i + batch_size] for k, v in arrays.items()})
            for i in range(0, len(next(iter(arrays.values()))), batch_size)]
    return np.concatenate(outs, axis=0)


def train_no_code(task, config, seed, train, plan, stage="no code"):
    """The base model without a code (the paper's "no oracle"), trained."""
    baseline = build_stage1(task, config, seed, zero_code=True)
    baseline.compile(optimizer=optimizer(config, config.no_code_epochs))
    plan.fit(baseline, train, stage, config.no_code_epochs, config.batch_size)
    return baseline


def train_stage1(task, config, seed, train, plan, baseline, stage="stage I"):
    """(stage-I model, its fit history), seeded `seed + 1`; its base model
    starts from `baseline`'s when the recipe says so and both see the image."""
    stage1 = build_stage1(task, config, seed + 1)
    if config.base_init_from_no_code and config.base_image_ctx:
        stage1.base_model.set_weights(baseline.base_model.get_weights())
    stage1.compile(optimizer=optimizer(config, config.stage1_epochs))
    return stage1, plan.fit(stage1, train, stage, config.stage1_epochs, config.batch_size)


def oracle_codes(stage1, data):
    """The oracle's guiding codes of `data` ({"image", "labels"})."""
    return batched(lambda b: to_numpy(stage1.encode(b)), data, 256)


def train_lm(config, seed, images, codes, plan, baseline, stage="stage II", autoregressive=True):
    """(guiding-code LM, its fit history), seeded `seed + 2`, trained on
    (images, codes); its encoder starts from `baseline`'s base model when
    the recipe says so (`lm_init_from_no_code`)."""
    lm = build_lm(config, seed + 2, autoregressive=autoregressive)
    if config.lm_init_from_no_code:
        init_lm_encoder_from_base_model(lm, baseline.base_model)
    lm.compile(optimizer=optimizer(config, config.stage2_epochs))
    return lm, plan.fit(lm, {"image": images, "codes": codes}, stage, config.stage2_epochs,
                        config.batch_size)


#: Tasks whose demo also reports two estimates of the posterior mean, which
#: a squared error (depth's RMSE) rewards: UViM's outputs averaged over this
#: many codes sampled at T=1 (one greedy code is one guess), and the no-code
#: model's expected depth over its bins (`DepthTask(output="mean")`); why:
#: benchmarks/README.md, "Depth under a squared error".
MEAN_OF_SAMPLES = {"depth": 8}


def mean_of_samples(uvim, images, num_samples, seed, batch_size=25):
    """`uvim`'s outputs for `images` averaged over `num_samples` codes
    sampled at T=1 (batches of `batch_size` images, each batch seeded from
    (`seed`, its index), so that no two images share a sampling seed)."""
    return np.concatenate([
        uvim.sample(images[i:i + batch_size], num_samples=num_samples, temperature=1.0,
                    seed=seed * 100_003 + i).mean(axis=1)
        for i in range(0, len(images), batch_size)])


# -- metrics and pictures (what the task says) ------------------------------------
def held_out_metrics(task_name, task, labels, prediction):
    """The task's metric values ({name: float}, `task.metric_values`) of
    `prediction` on the demo's held-out `labels` of synthetic `task_name`
    (whose metric options, e.g. panoptic categories, the dataset gives)."""
    metric = task.metric(**SYNTHETIC_TASKS[task_name].get("metric_options", {}))
    task.update_metric(metric, labels, prediction)
    return task.metric_values(metric.result())


def _figure(path, task_name, task, data, columns, *, seed, metrics, rows=6):
    """The held-out examples: input, truth and each model's output, with the
    models' scores over their columns and the task's key."""
    head, better = task.headline_metric
    scores = {name: values[head] for name, values in metrics.items() if name in columns}
    truth = next(iter(metrics.values())).get(f"{head}_ground_truth")
    if truth is not None:
        scores["truth"] = truth
    notes = [f"Scores: {head} on all {len(data['image'])} held-out images ({better} is better).",
             "no code: the base model alone; oracle code: the code made from the ground truth; "
             "UViM: the code the language model predicts; T=1 samples: sampled codes."]
    if any(name.startswith("UViM (mean of") for name in columns):
        notes.append("UViM (mean of N): the outputs of N codes sampled at T=1, averaged; "
                     "no code (expected depth): the no-code model's mean over its depth bins.")
    demo_figure(data["image"], data["labels"], columns, task,
                title=f"UViM demo: synthetic {task_name}, held-out images, seed {seed}",
                scores=scores, metric=head, notes=notes, rows=rows).save(path)


# -- progress -----------------------------------------------------------------------
#: Cost of one training step of each stage relative to one step of the no-code
#: model, measured on the panoptic runs (JAX, CPU; stage II per block of the
#: LM's encoder and decoder); used only to estimate the time left before a
#: stage has run.
STEP_COST = {"no code": 1.0, "stage I": 1.75, "stage II": 0.9}


def step_costs(config):
    """`STEP_COST` for `config`'s models: {kind: cost of a step}."""
    return {**STEP_COST, "stage II": STEP_COST["stage II"] * config.lm_layers}


def _clock(seconds):
    seconds = int(round(max(seconds, 0)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class Plan:
    """The training runs of a command, with a running estimate of the time left.

    Args:
      stages: (name, steps, kind) per training run, in order; `kind` ("no
        code", "stage I", "stage II") prices its steps (`costs`). A dict
        {name: steps} names runs by their kind.
      say: print-like callable for the progress lines.
      costs: {kind: cost of a step relative to a no-code step}; defaults to
        `step_costs(DEFAULT_CONFIG)`.

    The estimate takes the measured time per step of the run under way (from
    its second epoch on, so compilation does not count) and scales it by
    `costs` for the runs still to come; before any epoch has been timed
    it says nothing."""

    def __init__(self, stages, say, costs=None):
        if isinstance(stages, dict):
            stages = [(name, steps, name) for name, steps in stages.items()]
        self.steps = {name: steps for name, steps, _ in stages}
        self.kind = {name: kind for name, _, kind in stages}
        self.say = say
        self.costs = costs or step_costs(DEFAULT_CONFIG)
        self.start = time.time()
        self.per_unit = None  # seconds per no-code-step equivalent

    def remaining(self, stage, steps_done):
        if self.per_unit is None:
            return None
        names = list(self.steps)
        later = names[names.index(stage) + 1:]
        units = (self.steps[stage] - steps_done) * self.costs[self.kind[stage]]
        units += sum(self.steps[s] * self.costs[self.kind[s]] for s in later)
        return units * self.per_unit

    def begin(self, stage):
        """Says which run starts, with the time elapsed and the estimate of
        what remains."""
        names = list(self.steps)
        left = self.remaining(stage, 0)
        eta = "" if left is None else f", about {_clock(left)} left"
        self.say(f"[run {names.index(stage) + 1}/{len(names)}] {stage} "
                 f"[{_clock(time.time() - self.start)} elapsed{eta}]", flush=True)

    def fit(self, model, data, stage, epochs, batch_size):
        """`model.fit` of run `stage` with its progress lines; the history."""
        return model.fit(data, batch_size=batch_size, epochs=epochs, verbose=0, shuffle=True,
                         callbacks=[self.callback(stage, epochs)]).history

    def callback(self, stage, epochs):
        """A Keras callback printing a progress line after each epoch of `stage`."""
        plan = self

        class Progress(keras.callbacks.Callback):
            last_end = None

            def on_epoch_end(self, epoch, logs=None):
                steps_per_epoch = plan.steps[stage] // epochs
                now = time.time()
                if self.last_end is not None:  # not the first epoch: it pays the compilation
                    per_step = (now - self.last_end) / max(steps_per_epoch, 1)
                    plan.per_unit = per_step / plan.costs[plan.kind[stage]]
                self.last_end = now
                left = plan.remaining(stage, (epoch + 1) * steps_per_epoch)
                eta = "" if left is None else f", about {_clock(left)} left"
                loss = f"loss {logs['loss']:.3f}, " if logs and "loss" in logs else ""
                plan.say(f"    {stage}: epoch {epoch + 1}/{epochs}, {loss}"
                         f"{_clock(time.time() - plan.start)} elapsed{eta}", flush=True)

        return Progress()


# -- the run ------------------------------------------------------------------------
def run_demo(task="panoptic", out="uvim_demo", seed=0, quick=False, config=None, verbose=1,
             save_models=True):
    """Trains and evaluates the demo; returns the report dict (also written)."""
    config = config or demo_config(task, quick)
    check_args(task, seed, out, config)
    t0 = time.time()

    def say(*args, **kwargs):
        if verbose:
            print(*args, **kwargs)

    def headline(text):
        say(f"{text} [{_clock(time.time() - t0)} elapsed]")

    timings = {}
    steps = {name: epochs * (config.train_examples // config.batch_size) for name, epochs in (
        ("no code", config.no_code_epochs), ("stage I", config.stage1_epochs),
        ("stage II", config.stage2_epochs))}
    plan = Plan(steps, say, step_costs(config))

    say(f"[1/5] generating {config.train_examples} + {config.eval_examples} synthetic "
        f"{task} examples at {config.size}x{config.size}")
    train = make_synthetic(task, config.train_examples, size=config.size, seed=seed)
    held_out = make_synthetic(task, config.eval_examples, size=config.size, seed=seed + 10_000)
    task_obj = make_task(task)

    headline("[2/5] training the base model without a code (the 'no oracle' ablation)")
    t = time.time()
    baseline = train_no_code(task_obj, config, seed, train, plan)
    timings["no_code_train_s"] = time.time() - t

    dropout = "" if config.code_dropout == "none" else " + code dropout"
    headline(f"[3/5] training stage I: oracle + vector quantizer{dropout} + base model")
    t = time.time()
    stage1, hist1 = train_stage1(task_obj, config, seed, train, plan, baseline)
    timings["stage1_train_s"] = time.time() - t

    headline("[4/5] training stage II: the guiding-code LM on the frozen oracle's codes")
    t = time.time()
    lm, hist2 = train_lm(config, seed, train["image"], oracle_codes(stage1, train), plan,
                         baseline)
    timings["stage2_train_s"] = time.time() - t

    headline("[5/5] evaluating on the held-out split")
    t = time.time()
    uvim = UViM.from_stage1(lm, stage1)
    greedy = batched(lambda b: uvim.predict(b["image"], verbose=0, temperature=0.0), held_out, 64)
    predictions = {
        "no code": batched(lambda b: to_numpy(baseline.predict_outputs(b)), held_out, 64),
        "oracle code": batched(lambda b: to_numpy(stage1.predict_outputs(b)), held_out, 64),
        "UViM (T=0)": greedy,
    }
    num_samples = MEAN_OF_SAMPLES.get(task)
    if num_samples:  # both models' estimates of the posterior mean, side by side
        mean_task = make_task(task, output="mean")
        predictions["no code (expected depth)"] = batched(
            lambda b: to_numpy(mean_task.predict_outputs(baseline(b)["logits"])), held_out, 64)
        predictions[f"UViM (mean of {num_samples}, T=1)"] = mean_of_samples(
            uvim, held_out["image"], num_samples, seed)
    temperature = uvim.default_temperature
    if temperature > 0:  # colorization: the task samples its code (T=1) by default
        predictions[f"UViM (T={temperature:g})"] = uvim.predict(
            held_out["image"], batch_size=64, verbose=0, temperature=temperature, seed=seed)
    metrics = {name: held_out_metrics(task, task_obj, held_out["labels"], p)
               for name, p in predictions.items()}
    samples = uvim.sample(held_out["image"][:6], num_samples=2, temperature=1.0, seed=seed)
    diagnostics = code_diagnostics(lm, held_out["image"], oracle_codes(stage1, held_out))
    timings["evaluate_s"] = time.time() - t
    timings["total_s"] = time.time() - t0

    figure = os.path.join(out, f"{task}_examples.png")
    columns = dict(predictions)
    columns["T=1 sample a"] = samples[:, 0]
    columns["T=1 sample b"] = samples[:, 1]
    _figure(figure, task, task_obj, held_out, columns, seed=seed, metrics=metrics)
    report = {
        "task": task,
        "seed": seed,
        "quick": bool(quick),
        "config": dataclasses.asdict(config),
        "backend": keras.backend.backend(),
        "metrics": metrics,
        "headline": task_obj.headline_metric[0],
        "headline_better": task_obj.headline_metric[1],
        "final_train_loss": {"stage1": float(hist1["loss"][-1]), "stage2": float(hist2["loss"][-1])},
        "codebook_zeros_ratio": float(hist1["codebook_zeros_ratio"][-1]),
        "code_diagnostics": diagnostics,
        "timings_s": {k: round(v, 1) for k, v in timings.items()},
        "figure": os.path.basename(figure),
    }
    if save_models:
        stage1.save(os.path.join(out, f"{task}_stage1.keras"))
        uvim.save(os.path.join(out, f"{task}_uvim.keras"))
        report["models"] = [f"{task}_stage1.keras", f"{task}_uvim.keras"]
    _write_report(out, report)
    say(_markdown(report))
    return report


def _markdown(report):
    task, head = report["task"], report["headline"]
    names = list(next(iter(report["metrics"].values())))
    lines = [
        f"# UViM demo: synthetic {task}",
        "",
        f"Held-out split, {report['config']['eval_examples']} images at "
        f"{report['config']['size']}x{report['config']['size']}; seed {report['seed']}; "
        f"backend {report['backend']}; total {report['timings_s']['total_s']} s.",
        f"Headline metric: {head} ({report.get('headline_better', 'see the task')} is better).",
        "",
        "| model | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
    ]
    for model, values in report["metrics"].items():
        lines.append(f"| {model} | " + " | ".join(f"{values[n]:.3f}" for n in names) + " |")
    lines += _diagnostics_lines(report.get("code_diagnostics"))
    lines += ["", f"![examples]({report['figure']})", ""]
    return "\n".join(lines)


def _diagnostics_lines(stats):
    """The LM's figures on the held-out oracle codes (`code_diagnostics`)."""
    if not stats:
        return []
    return [
        "",
        "The LM on the held-out images' oracle codes: its greedy code (UViM, T=0) matches "
        f"{stats['greedy_accuracy']:.0%} of the oracle's words; teacher-forced it gets "
        f"{stats['teacher_forced_accuracy']:.0%} right (repeating the previous word: "
        f"{stats['previous_word_accuracy']:.0%}), {stats['nll']:.2f} nats a word; distinct "
        f"words per code: oracle {stats['oracle_distinct_words']:.1f}, greedy "
        f"{stats['greedy_distinct_words']:.1f}.",
    ]


def _write_report(out, report):
    task = report["task"]
    for name, text in ((f"{task}_report.json", json.dumps(report, indent=2)),
                       (f"{task}_report.md", _markdown(report))):
        write_text_atomic(os.path.join(out, name), text)


# -- bundled presets ------------------------------------------------------------------
def _half_precision_h5(path):
    """Rewrites a Keras .weights.h5 file with its float32 arrays stored as
    float16 (Keras casts them back to the variables' float32 on load)."""
    rewrite_h5_arrays(path, lambda name, data: data.astype(np.float16)
                      if getattr(data, "dtype", None) == np.float32 else data)


def preset_metrics(uvim, task, seed=0, size=64, eval_examples=200):
    """The metrics a bundled preset records (`uvim_preset.json`, its model
    card): `uvim` at its default temperature on the demo's held-out split
    (`eval_examples` images, seed `seed + 10000`), predicted with
    `predict(images, batch_size=64, seed=seed)` (the seed matters only when
    sampling); the task's headline metric (and for colorization MSE and the
    ground truth's colourfulness), rounded to 3 decimals: the dataset's
    `card_metrics` (`data.synthetic.SYNTHETIC_TASKS`)."""
    held_out = make_synthetic(task, eval_examples, size=size, seed=seed + 10_000)
    pred = uvim.predict(held_out["image"], batch_size=64, verbose=0, seed=seed)
    row = held_out_metrics(task, uvim.task, held_out["labels"], pred)
    return {name: round(row[name], 3) for name in SYNTHETIC_TASKS[task]["card_metrics"]}


def save_demo_preset(out, task, preset_dir, half_precision=True):
    """Writes the UViM of a finished demo run (folder `out`) as a keras-hub
    preset; this is how `weights/shapes_*` were made.

    With `half_precision` the weights are rounded to float16 and stored so
    (half the size; loaded as float32). The recorded metrics are measured on
    the stored weights: UViM at the preset's default temperature on the demo's
    held-out split (`eval_examples` images, seed + 10000), with
    `predict(images, batch_size=64, seed=run seed)` (the seed only matters
    when sampling). Returns the preset folder."""
    with open(os.path.join(out, f"{task}_report.json")) as f:
        report = json.load(f)
    uvim = keras.saving.load_model(os.path.join(out, f"{task}_uvim.keras"))
    config, seed, head = report["config"], report["seed"], report["headline"]
    if half_precision:
        uvim.set_weights([w.astype(np.float16).astype(np.float32) if w.dtype == np.float32
                          else w for w in uvim.get_weights()])
    metrics = preset_metrics(uvim, task, seed=seed, size=config["size"],
                             eval_examples=config["eval_examples"])
    size = config["size"]
    stored = " Weights stored as float16." if half_precision else ""
    uvim.save_to_preset(
        preset_dir,
        description=f"UViM trained by uvim-keras demo on the synthetic {task} data "
                    f"({size}x{size}), seed {seed}.{stored}",
        dataset=f"uvim_keras.data.{SYNTHETIC_TASKS[task]['generator'].__name__}: "
                f"{config['train_examples']} training "
                f"images (seed {seed}); {head} on {config['eval_examples']} held-out images "
                f"(seed {seed + 10_000})",
        metrics=metrics,
    )
    if half_precision:
        for name in ("model.weights.h5", "task.weights.h5"):
            _half_precision_h5(os.path.join(preset_dir, name))
        record_integrity(preset_dir)  # the files just rewritten
    return preset_dir
