"""`uvim-keras ablate`: the paper's ablations (UViM, Table 2) in miniature.

Each column of Table 2 changes one thing of the default UViM, measured on
the demo's synthetic data (held-out split) as stage I (the base model with
the oracle's code) and stage II (UViM: the LM's greedy code):

* `default`: the paper's recipe in miniature (`demo.PAPER_CONFIGS`: code
  dropout on, unlike the demo's panoptic recipe), the LM's image encoder
  started from the trained no-code model (the paper starts it from a pretrained ViT);
* `from_scratch`: the LM's encoder not started from the no-code model;
* `no_dropout`: stage I trained without code dropout;
* `no_oracle`: the base model alone (no code; stage II does not apply);
* `no_autoregression`: a non-autoregressive LM (all code words in one
  pass, `GuidingCodeLM(autoregressive=False)`), otherwise the default;
* `no_image`: stage I's oracle and base model without the image (the
  label is compressed into the code and decoded back).

Runs are shared where columns agree: per seed one no-code model, three
stage-I models (default, no dropout, no image) and five LMs. Writes
`ablations.json` (per column and stage: the metric per seed, mean and
standard deviation), `ablations.md` (the table beside the paper's) and
`ablations_examples.png` (the paper's Figure 5: input, base model only,
base model with the oracle's code, UViM).

>>> from uvim_keras.cli.ablate import run_ablations
>>> report = run_ablations("panoptic", out="ablations", seeds=(0, 1, 2))
"""

import dataclasses
import os
import time

import keras
import numpy as np

from uvim_keras.cli import demo
from uvim_keras.code_diagnostics import code_diagnostics
from uvim_keras.data.synthetic import make_synthetic
from uvim_keras.metrics.host import to_numpy
from uvim_keras.models import UViM
from uvim_keras.presets.layout import write_json_atomic, write_text_atomic
from uvim_keras.visualize.figures import demo_figure

COLUMNS = ("default", "from_scratch", "no_dropout", "no_oracle", "no_autoregression", "no_image")

#: What the paper reports (Table 2: panoptic PQ on its holdout split; depth
#: RMSE where the text gives it), for the table beside ours.
PAPER = {
    "panoptic": {"metric": "PQ", "stage1": {
        "default": 75.7, "from_scratch": 75.7, "no_dropout": 85.8, "no_oracle": 19.6,
        "no_autoregression": 75.7, "no_image": 66.1}, "stage2": {
        "default": 43.7, "from_scratch": 41.4, "no_dropout": 42.2, "no_oracle": None,
        "no_autoregression": 33.3, "no_image": 39.1}},
    "depth": {"metric": "RMSE", "stage1": {}, "stage2": {
        "default": 0.47, "no_oracle": None, "no_autoregression": 0.55}},
}

#: Stage-I models: {name: DemoConfig changes}.
STAGE1_VARIANTS = {
    "default": {},
    "no_dropout": {"code_dropout": "none"},
    "no_image": {"oracle_image_ctx": False, "base_image_ctx": False},
}
#: LMs: {column: (stage-I model, LM encoder from the no-code model, autoregressive)}.
LM_VARIANTS = {
    "default": ("default", True, True),
    "from_scratch": ("default", False, True),
    "no_autoregression": ("default", True, False),
    "no_dropout": ("no_dropout", True, True),
    "no_image": ("no_image", True, True),
}


def ablation_config(task="panoptic", quick=False):
    """The paper's recipe in miniature of `task` (`demo.paper_config`) with
    the LM's encoder shaped as the base model (so `default` can start it
    from the no-code model)."""
    config = demo.paper_config(task, quick)
    return dataclasses.replace(config, lm_layers=config.base_num_layers, lm_width=config.width,
                               lm_mlp_dim=config.mlp_dim, lm_init_from_no_code=True)


def _plan(config, seeds):
    steps = config.train_examples // config.batch_size
    stages = []
    for seed in seeds:
        stages.append((f"seed {seed}: no code", steps * config.no_code_epochs, "no code"))
        stages += [(f"seed {seed}: stage I {name}", steps * config.stage1_epochs, "stage I")
                   for name in STAGE1_VARIANTS]
        stages += [(f"seed {seed}: stage II {name}", steps * config.stage2_epochs, "stage II")
                   for name in LM_VARIANTS]
    return stages


def _run_seed(task, config, seed, train, held_out, plan, say):
    """The metrics of every column for one seed, and the predictions of the
    Figure-5 columns."""
    task_obj = demo.make_task(task)
    predict = {}

    def outputs(model):
        return demo.batched(lambda b: to_numpy(model.predict_outputs(b)), held_out, 64)

    stage = f"seed {seed}: no code"
    plan.begin(stage)
    baseline = demo.train_no_code(task_obj, config, seed, train, plan, stage)
    predict["no_code"] = outputs(baseline)

    stage1_models, codes, held_out_codes, diagnostics = {}, {}, {}, {}
    for name, changes in STAGE1_VARIANTS.items():
        stage = f"seed {seed}: stage I {name}"
        plan.begin(stage)
        stage1_models[name], _ = demo.train_stage1(
            task_obj, dataclasses.replace(config, **changes), seed, train, plan, baseline, stage)
        predict[f"stage1 {name}"] = outputs(stage1_models[name])

    temperature = task_obj.default_temperature
    for column, (stage1_name, init, autoregressive) in LM_VARIANTS.items():
        stage1 = stage1_models[stage1_name]
        if stage1_name not in codes:  # (columns sharing a stage I share its codes)
            codes[stage1_name] = demo.oracle_codes(stage1, train)
            held_out_codes[stage1_name] = demo.oracle_codes(stage1, held_out)
        stage = f"seed {seed}: stage II {column}"
        plan.begin(stage)
        lm, _ = demo.train_lm(dataclasses.replace(config, lm_init_from_no_code=init), seed,
                              train["image"], codes[stage1_name], plan, baseline, stage,
                              autoregressive=autoregressive)
        uvim = UViM.from_stage1(lm, stage1)
        predict[f"stage2 {column}"] = uvim.predict(held_out["image"], batch_size=64, verbose=0,
                                                   temperature=temperature, seed=seed)
        diagnostics[column] = code_diagnostics(lm, held_out["image"], held_out_codes[stage1_name])
        say(f"  seed {seed}: {column} done")

    def score(prediction):
        values = demo.held_out_metrics(task, task_obj, held_out["labels"], prediction)
        return values[task_obj.headline_metric[0]]

    row = {"no_oracle": {"stage1": score(predict["no_code"]), "stage2": None}}
    for column, (stage1_name, _, _) in LM_VARIANTS.items():
        row[column] = {"stage1": score(predict[f"stage1 {stage1_name}"]),
                       "stage2": score(predict[f"stage2 {column}"]), "lm": diagnostics[column]}
    figure_columns = {"base model only": predict["no_code"],
                      "base model + oracle code": predict["stage1 default"],
                      "UViM": predict["stage2 default"]}
    return row, figure_columns, task_obj


def _summary(rows):
    """{column: {stage: {per_seed, mean, std}}} over the seeds' rows."""
    out = {}
    for column in COLUMNS:
        out[column] = {}
        for stage in ("stage1", "stage2"):
            values = [r[column][stage] for r in rows]
            if any(v is None for v in values):
                out[column][stage] = None
                continue
            out[column][stage] = {"per_seed": [round(float(v), 4) for v in values],
                                  "mean": round(float(np.mean(values)), 4),
                                  "std": round(float(np.std(values)), 4)}
        if all("lm" in r[column] for r in rows):  # the LM's figures, mean over the seeds
            out[column]["lm"] = {key: round(float(np.mean([r[column]["lm"][key] for r in rows])), 4)
                                 for key in rows[0][column]["lm"]}
    return out


def _cell(entry, digits):
    if entry is None:
        return "n/a"
    if len(entry["per_seed"]) == 1:
        return f"{entry['mean']:.{digits}f}"
    return f"{entry['mean']:.{digits}f} ± {entry['std']:.{digits}f}"


def markdown(report):
    """`ablations.md`: our table (mean ± std over the seeds) and the paper's."""
    metric, better = report["metric"], report["better"]
    digits = 1 if metric == "PQ" else 3
    head = "| | " + " | ".join(COLUMNS) + " |"
    rule = "|---|" + "---|" * len(COLUMNS)
    lines = [f"# UViM ablations in miniature: synthetic {report['task']}", "",
             f"{metric} on {report['config']['eval_examples']} held-out images ({better} is "
             f"better), seeds {', '.join(map(str, report['seeds']))}: mean ± standard deviation "
             f"over the seeds; stage I: the base model with the oracle's code, stage II: UViM "
             f"(the LM's code). Backend {report['backend']}, {report['timings_s']['total_s']} s.",
             "", head, rule]
    for stage, name in (("stage1", "stage I (oracle code)"), ("stage2", "stage II (UViM)")):
        lines.append(f"| {name} | " + " | ".join(
            _cell(report["columns"][c][stage], digits) for c in COLUMNS) + " |")
    lm_columns = [c for c in COLUMNS if report["columns"][c].get("lm")]
    if lm_columns:
        lines += ["", "The LMs on the held-out images' oracle codes (mean over the seeds; "
                  "`uvim_keras.code_diagnostics`): nats a word teacher-forced, and the share of "
                  "the oracle's words the greedy code matches / teacher-forced argmax gets:", "",
                  "| | " + " | ".join(lm_columns) + " |", "|---|" + "---|" * len(lm_columns)]
        for key, name, fmt in (("nll", "nats a word", "{:.2f}"),
                               ("greedy_accuracy", "greedy words right", "{:.0%}"),
                               ("teacher_forced_accuracy", "teacher-forced words right", "{:.0%}")):
            lines.append(f"| {name} | " + " | ".join(
                fmt.format(report["columns"][c]["lm"][key]) for c in lm_columns) + " |")
    paper = PAPER.get(report["task"])
    if paper:
        lines += ["", f"The paper (Table 2, {paper['metric']}; real data at full size):", "",
                  head, rule]
        for stage, name in (("stage1", "stage I (oracle code)"), ("stage2", "stage II (UViM)")):
            cells = [paper[stage].get(c, "") for c in COLUMNS]  # None: does not apply
            lines.append(f"| {name} | " + " | ".join(
                "n/a" if v is None else str(v) for v in cells) + " |")
    lines += ["", f"![examples]({report['figure']})", ""]
    return "\n".join(lines)


def run_ablations(task="panoptic", out="uvim_ablations", seeds=(0, 1, 2), quick=False,
                  config=None, verbose=1):
    """Trains every column's models for each seed, evaluates them on the
    held-out split and writes the report; returns it (a dict).

    Args:
      task: "panoptic", "depth" or "colorization" (the demo's synthetic data).
      out: the output folder (created).
      seeds: the seeds; each trains its own data order and initial weights
        (the data itself is the demo's for that seed).
      quick: the demo's smoke-test sizes (a few minutes on 2 cores).
      config: a `DemoConfig` (default `ablation_config(task, quick)`).
      verbose: 0 prints nothing; 1 a progress line per epoch with the time left.
    """
    config = config or ablation_config(task, quick)
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("seeds=(); expected at least one seed.")
    for seed in seeds:
        demo.check_args(task, seed, out, config)
    if not config.lm_init_from_no_code:
        raise ValueError("lm_init_from_no_code=False; the ablations' default starts the LM's "
                         "encoder from the no-code model (from_scratch is the column without).")

    def say(*args, **kwargs):
        if verbose:
            print(*args, **kwargs)

    t0 = time.time()
    plan = demo.Plan(_plan(config, seeds), say, demo.step_costs(config))
    say(f"ablations of synthetic {task}: {len(plan.steps)} training runs over seeds "
        f"{', '.join(map(str, seeds))}")
    rows, figure = [], None
    for seed in seeds:
        train = make_synthetic(task, config.train_examples, size=config.size, seed=seed)
        held_out = make_synthetic(task, config.eval_examples, size=config.size,
                                  seed=seed + 10_000)
        row, columns, task_obj = _run_seed(task, config, seed, train, held_out, plan, say)
        rows.append(row)
        metric, better = task_obj.headline_metric
        if figure is None:
            figure = os.path.join(out, "ablations_examples.png")
            scores = dict(zip(columns, (row["no_oracle"]["stage1"], row["default"]["stage1"],
                                        row["default"]["stage2"])))
            demo_figure(held_out["image"], held_out["labels"], columns, task_obj,
                        title=f"UViM ablations: synthetic {task}, held-out images, seed {seed}",
                        scores=scores, metric=metric,
                        notes=[f"Scores: {metric} on all {len(held_out['image'])} held-out "
                               f"images ({better} is better).",
                               "The paper's Figure 5: the base model alone, the base model "
                               "with the oracle's code (stage I), and UViM (the LM's code)."],
                        rows=4).save(figure)
    report = {
        "task": task, "seeds": list(seeds), "quick": bool(quick),
        "config": dataclasses.asdict(config), "backend": keras.backend.backend(),
        "metric": metric, "better": better,
        "columns": _summary(rows),
        "paper": PAPER.get(task),
        "timings_s": {"total_s": round(time.time() - t0, 1)},
        "figure": os.path.basename(figure),
    }
    write_json_atomic(os.path.join(out, "ablations.json"), report, indent=2)
    text = markdown(report)
    write_text_atomic(os.path.join(out, "ablations.md"), text)
    say(text)
    return report
