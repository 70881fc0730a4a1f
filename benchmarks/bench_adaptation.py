"""int8 quantization and LoRA on the bundled presets (issue 12, part 1).

For each bundled preset (`shapes_panoptic`, `shapes_depth`,
`shapes_colorization`, trained by `uvim-keras demo`), on the demo's held-out
split (200 images, 64x64, seed 10_000):

1. **int8 vs float32.** A second copy of the preset is quantized with
   `uvim.quantize("int8")` (every `EinsumDense`/`Dense`/`Embedding` kernel of
   the LM and of stage I). Reported: the task metric as the bundled-preset
   tests compute it (PQ; depth RMSE; colourfulness and MSE at the preset's
   T=1 with `seed=0`), the share of greedy code tokens unchanged
   (`uvim.lm.generate(images)`, float vs int8, same images; for colorization
   also the T=1 codes with the same seeds), each LM's word accuracy against
   the stage-I oracle's codes, the CPU speed of `uvim.lm.generate` (batch 1,
   8 and the 200 held-out images; float and int8 take turns, round by round,
   so both see the same load; medians of all timed calls, plus each shape's
   first call, which compiles), the time `quantize` takes, and the bytes of
   the variables (float32 vs int8 kernels + float32 scales).
2. **LoRA.** From the preset's LM, `lm.enable_lora(rank)` (query/value of
   every attention; everything else frozen), fine-tuned with `fit` on the
   demo's stage-II data (the demo's training images, seed 0, with the codes
   the preset's stage-I oracle gives them, as `uvim_keras.cli.demo` builds its
   stage-II set) for `--epochs` epochs. Reported: trainable parameters vs the
   full LM, the LM's loss and word accuracy on the held-out oracle codes
   before/after, the task metric of the UViM before/after, the same numbers
   for a full fine-tune (all LM weights, same schedule) as a control, step
   times of a LoRA and a full fine-tune `fit` step on the same batch (taking
   turns, block by block), and whether the LoRA UViM saved to `.keras`
   (kernels merged) reproduces its outputs after loading.

The presets were trained on exactly this training data, so fine-tuning on it
has little to gain; the point is what each adaptation costs and keeps.

Prints markdown tables and writes JSON (`--out`, default
`benchmarks/results/adaptation.json`). Run from the repo root:

    python benchmarks/bench_adaptation.py          # JAX: about 9 minutes on 2 busy cores
    python benchmarks/bench_adaptation.py --other-backends tensorflow,torch   # + 7 minutes

`--other-backends` adds int8 rows for those backends to the same JSON
(subprocesses of this script with `--int8-only`, `--other-rounds` x
`--other-calls` timed calls; torch with `OMP_NUM_THREADS=1` unless set: with
two OpenMP threads on a loaded 2-core machine its eager decoding is 10x
slower). `--int8-only` skips the LoRA part (about 3 minutes on JAX).
Measurements are reported, never asserted.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench_uvim import StepStamps  # benchmarks/ is on sys.path when run as a script

PRESETS = ("shapes_panoptic", "shapes_depth", "shapes_colorization")
HELD_OUT_SEED = 10_000
HELD_OUT_EXAMPLES = 200
TRAIN_SEED = 0  # the seed of the demo runs the presets come from
PREDICT_BATCH = 64  # as the demo / save_demo_preset evaluate
GENERATE_BATCHES = (1, 8, HELD_OUT_EXAMPLES)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--presets", default=",".join(PRESETS),
                   help="comma-separated bundled presets (default: all three)")
    p.add_argument("--ranks", default="4,8", help="LoRA ranks (comma-separated)")
    p.add_argument("--epochs", type=int, default=1, help="fine-tuning epochs")
    p.add_argument("--train-examples", type=int, default=0,
                   help="training images (default: the demo recipe's, 3000-4000)")
    p.add_argument("--batch-size", type=int, default=32, help="fine-tuning batch (the demo's)")
    p.add_argument("--learning-rate", type=float, default=1e-3,
                   help="peak of the fine-tuning schedule (warm-up 5%%, cosine decay)")
    p.add_argument("--rounds", type=int, default=5,
                   help="timing rounds (float and int8, LoRA and full take turns)")
    p.add_argument("--calls", type=int, default=3, help="timed generate calls per round")
    p.add_argument("--steps", type=int, default=6, help="timed fit steps per block")
    p.add_argument("--int8-only", action="store_true", help="skip the LoRA part")
    p.add_argument("--no-full-finetune", action="store_true",
                   help="skip the full fine-tune control run (step times are still measured)")
    p.add_argument("--other-backends", default="",
                   help="also int8 rows on these backends, e.g. tensorflow,torch")
    p.add_argument("--other-rounds", type=int, default=3,
                   help="--rounds of the --other-backends runs")
    p.add_argument("--other-calls", type=int, default=2,
                   help="--calls of the --other-backends runs")
    p.add_argument("--other-timeout", type=int, default=600,
                   help="seconds allowed to each --other-backends subprocess")
    p.add_argument("--out", default=os.path.join("benchmarks", "results", "adaptation.json"))
    return p.parse_args(argv)


# -- helpers ----------------------------------------------------------------------------
def to_numpy(x):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x))


def say(*a):
    print(*a, flush=True)


def versions():
    import keras

    out = {"backend": keras.backend.backend(), "keras": keras.__version__,
           "numpy": np.__version__, "python": platform.python_version()}
    for name in ("jax", "tensorflow", "torch"):
        if name in sys.modules:
            out[name] = sys.modules[name].__version__
    return out


def package_info():
    """Where uvim_keras was imported from and, in a git checkout, its commit
    (and whether the package or the presets differ from it)."""
    import uvim_keras

    root = os.path.dirname(os.path.dirname(os.path.abspath(uvim_keras.__file__)))
    info = {"path": os.path.dirname(os.path.abspath(uvim_keras.__file__))}
    try:
        git = ["git", "-C", root]
        info["commit"] = subprocess.run(git + ["rev-parse", "--short", "HEAD"], check=True,
                                        capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(git + ["status", "--porcelain", "--", "uvim_keras", "weights"],
                               check=True, capture_output=True, text=True).stdout.strip()
        info["modified_files"] = len(dirty.splitlines())
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def variable_bytes(model):
    return int(sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights))


def count_params(variables):
    return int(sum(int(np.prod(v.shape)) for v in variables))


def held_out_split(task):
    from uvim_keras.data.synthetic import make_synthetic

    return make_synthetic(task, HELD_OUT_EXAMPLES, size=64, seed=HELD_OUT_SEED)


def oracle_codes(stage1, data, batch=256):
    n = len(data["image"])
    return np.concatenate([
        to_numpy(stage1.encode({"image": data["image"][i:i + batch],
                                "labels": data["labels"][i:i + batch]}))
        for i in range(0, n, batch)], axis=0).astype("int32")


def task_metrics(task, uvim, data):
    """The preset's metric(s), as tests/test_bundled_presets.py computes them
    (UViM at the preset's default temperature, seed 0)."""
    from uvim_keras.cli.demo import held_out_metrics

    pred = uvim.predict(data["image"], batch_size=PREDICT_BATCH, seed=0, verbose=0)
    row = held_out_metrics(task, uvim.task, data["labels"], pred)
    keys = {"panoptic": ("PQ", "SQ", "RQ"), "depth": ("RMSE", "abs_RE", "delta1"),
            "colorization": ("colourfulness", "MSE")}[task]
    return {k: float(row[k]) for k in keys if k in row}, pred


def lm_eval(lm, images, codes, batch=100):
    """Teacher-forced mean token NLL and word accuracy of the LM on (images, codes)."""
    nll, correct = [], []
    for i in range(0, len(images), batch):
        logits = to_numpy(lm({"image": images[i:i + batch], "codes": codes[i:i + batch]},
                             training=False)).astype("float64")
        tokens = codes[i:i + batch] + 1
        logits -= logits.max(-1, keepdims=True)
        logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
        nll.append(-np.take_along_axis(logp, tokens[..., None], -1)[..., 0])
        correct.append(logits.argmax(-1) == tokens)
    return {"loss": float(np.mean(np.concatenate(nll))),
            "word_accuracy": float(np.mean(np.concatenate(correct)))}


def timed(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def median_ms(ts):
    return round(1000 * float(np.median(ts)), 2)


# -- 1. int8 vs float32 -----------------------------------------------------------------
def bench_int8(name, args):
    from uvim_keras import UViM
    from uvim_keras.models.sampling import image_seeds

    task = name.split("_", 1)[1]
    data = held_out_split(task)
    images = data["image"]
    phase = {}
    t = time.perf_counter()
    ref = UViM.from_preset(name)
    load_s = time.perf_counter() - t
    q = UViM.from_preset(name)
    quantize_s = timed(lambda: q.quantize("int8"))
    n_int8 = sum(1 for v in q.weights if str(v.dtype) == "int8")
    res = {"preset": name, "task": task, "load_s": round(load_s, 2),
           "quantize_s": round(quantize_s, 2), "int8_kernels": n_int8}
    say(f"[{name}] loaded in {load_s:.1f} s, quantize('int8') {quantize_s:.1f} s "
        f"({n_int8} int8 kernels)")
    res["weights_bytes"] = {
        "uvim": {"float32": variable_bytes(ref), "int8": variable_bytes(q)},
        "lm": {"float32": variable_bytes(ref.lm), "int8": variable_bytes(q.lm)},
    }

    # speed of lm.generate, first (before anything else has compiled a
    # generator of that shape): first call = trace + compile + run; then
    # medians, float and int8 taking turns round by round.
    t = time.perf_counter()
    speed = {}
    for b in GENERATE_BATCHES:
        x = images[:b]
        calls = {"float32": lambda: to_numpy(ref.lm.generate(x)),
                 "int8": lambda: to_numpy(q.lm.generate(x))}
        first = {k: timed(f) for k, f in calls.items()}
        ts = {k: [] for k in calls}
        for r in range(args.rounds):
            order = list(calls) if r % 2 == 0 else list(calls)[::-1]
            for k in order:
                ts[k] += [timed(calls[k]) for _ in range(args.calls)]
        speed[f"batch_{b}"] = {
            k: {"median_ms": median_ms(ts[k]), "min_ms": round(1000 * min(ts[k]), 2),
                "first_call_s": round(first[k], 3), "calls": len(ts[k])}
            for k in calls}
        speed[f"batch_{b}"]["int8_over_float32"] = round(
            float(np.median(ts["int8"]) / np.median(ts["float32"])), 3)
    res["generate_speed"] = speed
    phase["generate_speed"] = time.perf_counter() - t
    say(f"[{name}] generate, median ms float32 / int8: "
        + ", ".join(f"b{b}: {speed[f'batch_{b}']['float32']['median_ms']} / "
                    f"{speed[f'batch_{b}']['int8']['median_ms']}" for b in GENERATE_BATCHES))

    # metric on the held-out split
    t = time.perf_counter()
    res["metric"] = {}
    for label, model in (("float32", ref), ("int8", q)):
        res["metric"][label], _ = task_metrics(task, model, data)
    res["metric_recorded"] = ref_recorded(name)
    phase["metric"] = time.perf_counter() - t

    # codes: greedy (and sampled at the preset's temperature), float vs int8
    t = time.perf_counter()
    oracle = oracle_codes(ref.stage1, data)
    greedy = {label: to_numpy(m.lm.generate(images)) for label, m in (("float32", ref),
                                                                      ("int8", q))}
    res["greedy_codes_unchanged"] = float(np.mean(greedy["float32"] == greedy["int8"]))
    res["greedy_images_unchanged"] = float(np.mean(
        np.all(greedy["float32"] == greedy["int8"], axis=1)))
    res["greedy_word_accuracy_vs_oracle"] = {
        k: float(np.mean(v == oracle)) for k, v in greedy.items()}
    temperature = ref.default_temperature
    if temperature > 0:
        seeds = image_seeds(0, 0, len(images))
        sampled = {label: to_numpy(m.lm.generate(images, temperature=temperature, seed=seeds))
                   for label, m in (("float32", ref), ("int8", q))}
        res["sampled_codes_unchanged"] = {
            "temperature": temperature,
            "share": float(np.mean(sampled["float32"] == sampled["int8"]))}
    # teacher-forced loss of each LM on the oracle's codes
    res["lm_heldout"] = {label: lm_eval(m.lm, images, oracle)
                         for label, m in (("float32", ref), ("int8", q))}
    phase["codes"] = time.perf_counter() - t
    res["phase_s"] = {k: round(v, 1) for k, v in phase.items()}
    say(f"[{name}] metric float32 {fmt_metrics(res['metric']['float32'])}, int8 "
        f"{fmt_metrics(res['metric']['int8'])}; greedy codes unchanged "
        f"{100 * res['greedy_codes_unchanged']:.1f}%")
    return res, ref, data, oracle


def fmt_metrics(m):
    return ", ".join(f"{k} {v:.4g}" for k, v in m.items())


def ref_recorded(name):
    from uvim_keras.presets.bundled import BUNDLED_DIR

    with open(BUNDLED_DIR / name / "uvim_preset.json") as f:
        return json.load(f)["metrics"]


# -- 2. LoRA ------------------------------------------------------------------------------
def _schedule(args, steps):
    import keras

    lr = keras.optimizers.schedules.CosineDecay(
        0.0, steps, warmup_target=args.learning_rate, warmup_steps=max(steps // 20, 1))
    return keras.optimizers.Adam(lr, global_clipnorm=1.0)


def _clone_lm(lm):
    from uvim_keras import GuidingCodeLM

    clone = GuidingCodeLM.from_config(lm.get_config())
    clone.set_weights(lm.get_weights())
    return clone


def _fit(lm, train, args):
    import keras

    steps = args.epochs * (len(train["image"]) // args.batch_size)
    lm.compile(optimizer=_schedule(args, steps))
    keras.utils.set_random_seed(1)
    stamps = StepStamps()
    t = time.perf_counter()
    hist = lm.fit(train, batch_size=args.batch_size, epochs=args.epochs, shuffle=True,
                  verbose=0, callbacks=[stamps]).history
    gaps = np.diff(stamps.stamps)
    return {"steps": int(len(gaps)), "fit_s": round(time.perf_counter() - t, 2),
            "first_step_s": round(float(gaps[0]), 3),
            "step_ms_during_fit": median_ms(gaps[1:]),
            "train_loss_per_epoch": [float(x) for x in hist["loss"]]}


def _step_times(models, batch, args):
    """Median fit step time of each model on the same batch, block by block,
    the models taking turns (their optimizers keep updating them)."""
    data = {k: np.concatenate([v] * (args.steps + 1)) for k, v in batch.items()}
    n = len(batch["image"])
    ts = {k: [] for k in models}
    for r in range(args.rounds):
        order = list(models) if r % 2 == 0 else list(models)[::-1]
        for k in order:
            stamps = StepStamps()
            models[k].fit(data, batch_size=n, epochs=1, shuffle=False, verbose=0,
                          callbacks=[stamps])
            ts[k] += list(np.diff(stamps.stamps)[1:])  # skip the block's first step
    return {k: {"median_ms": median_ms(v), "min_ms": round(1000 * min(v), 2), "steps": len(v)}
            for k, v in ts.items()}


def bench_lora(name, ref, held_out, oracle_held_out, float_metric, args):
    import keras

    from uvim_keras import UViM
    from uvim_keras.data.synthetic import make_synthetic
    from uvim_keras.cli.demo import demo_config

    task = name.split("_", 1)[1]
    n_train = args.train_examples or demo_config(task).train_examples
    t = time.perf_counter()
    train = make_synthetic(task, n_train, size=64, seed=TRAIN_SEED)
    codes = oracle_codes(ref.stage1, train)
    train = {"image": train["image"], "codes": codes}
    data_s = time.perf_counter() - t
    images = held_out["image"]
    full_params = count_params(ref.lm.weights)
    res = {"train_examples": n_train, "epochs": args.epochs, "batch_size": args.batch_size,
           "learning_rate": args.learning_rate, "data_s": round(data_s, 2),
           "lm_params": full_params,
           "before": {"lm_heldout": lm_eval(ref.lm, images, oracle_held_out),
                      "lm_train": lm_eval(ref.lm, train["image"][:500], codes[:500]),
                      "metric": float_metric},
           "runs": {}}
    say(f"[{name}] LoRA: {n_train} training images + oracle codes in {data_s:.1f} s; "
        f"held-out LM loss before {res['before']['lm_heldout']['loss']:.4f}")

    models = {}
    variants = [f"lora_r{r}" for r in args.ranks]
    if not args.no_full_finetune:
        variants.append("full")
    for variant in variants:
        keras.utils.set_random_seed(0)
        lm = _clone_lm(ref.lm)
        run = {}
        if variant.startswith("lora"):
            rank = int(variant[len("lora_r"):])
            adapted = lm.enable_lora(rank)
            run["rank"] = rank
            run["adapted_layers"] = len(adapted)
        run["trainable_params"] = count_params(lm.trainable_weights)
        run["trainable_share"] = run["trainable_params"] / full_params
        run["fit"] = _fit(lm, train, args)
        run["lm_heldout"] = lm_eval(lm, images, oracle_held_out)
        run["lm_train"] = lm_eval(lm, train["image"][:500], codes[:500])
        uvim = UViM.from_stage1(lm, ref.stage1, temperature=ref.temperature)
        run["metric"], pred = task_metrics(task, uvim, held_out)
        greedy_before = to_numpy(ref.lm.generate(images))
        run["greedy_codes_unchanged_vs_preset"] = float(np.mean(
            to_numpy(lm.generate(images)) == greedy_before))
        if variant.startswith("lora"):
            run["merged_keras_file"] = _merged_round_trip(uvim, images, oracle_held_out, pred)
        res["runs"][variant] = run
        models[variant] = lm
        say(f"[{name}] {variant}: trainable {run['trainable_params']} / {full_params} params; "
            f"held-out LM loss {run['lm_heldout']['loss']:.4f}; {fmt_metrics(run['metric'])}; "
            f"fit {run['fit']['fit_s']} s")

    # step times on one batch: the first LoRA rank and (a fresh) full
    # fine-tune take turns
    if not args.ranks:
        return res
    lora = f"lora_r{args.ranks[0]}"
    batch = {k: v[:args.batch_size] for k, v in train.items()}
    if "full" not in models:
        models["full"] = _clone_lm(ref.lm)
        models["full"].compile(optimizer=_schedule(args, 1000))
    st = _step_times({lora: models[lora], "full": models["full"]}, batch, args)
    st["lora_over_full"] = round(st[lora]["median_ms"] / st["full"]["median_ms"], 3)
    res["step_time_same_batch"] = st
    say(f"[{name}] fit step on one batch of {args.batch_size}: {lora} "
        f"{st[lora]['median_ms']} ms, full {st['full']['median_ms']} ms")
    return res


def _merged_round_trip(uvim, images, codes, pred):
    """Saves the LoRA UViM to .keras (LoRA kernels merged) and checks the loaded
    model's outputs against the LoRA model's."""
    import keras

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "uvim_lora.keras")
        uvim.save(path)
        size = os.path.getsize(path)
        loaded = keras.saving.load_model(path)
    lora_left = any(getattr(layer, "lora_enabled", False) for layer in loaded._flatten_layers())
    a = to_numpy(uvim.lm({"image": images[:64], "codes": codes[:64]}, training=False))
    b = to_numpy(loaded.lm({"image": images[:64], "codes": codes[:64]}, training=False))
    pred_loaded = loaded.predict(images, batch_size=PREDICT_BATCH, seed=0, verbose=0)
    same = pred_loaded == pred if pred.dtype.kind in "iu" else np.isclose(pred_loaded, pred,
                                                                          atol=1e-5)
    return {"file_bytes": int(size), "lora_layers_after_load": bool(lora_left),
            "logits_max_abs_diff": float(np.max(np.abs(a - b))),
            "greedy_codes_equal": float(np.mean(
                to_numpy(loaded.lm.generate(images)) == to_numpy(uvim.lm.generate(images)))),
            "predictions_equal_share": float(np.mean(same)),
            "predictions_max_abs_diff": float(np.max(np.abs(
                pred_loaded.astype("float64") - pred.astype("float64"))))}


# -- tables ------------------------------------------------------------------------------------
HEAD = {"panoptic": ("PQ", "{:.2f}"), "depth": ("RMSE", "{:.3f}"),
        "colorization": ("colourfulness", "{:.3f}")}


def _metric_str(task, m):
    key, fmt = HEAD[task]
    s = f"{key} {fmt.format(m[key])}"
    if task == "colorization":
        s += f" / MSE {m['MSE']:.3f}"
    return s


def markdown(result):
    lines = []
    for backend, rows in result["int8"].items():
        info = result.get("other_backends", {}).get(backend) or {}
        extra = "".join(f", {k}={info[k]}" for k in ("OMP_NUM_THREADS",) if info.get(k))
        lines += [
            f"int8 vs float32 ({backend}{extra}, CPU; held-out split of {HELD_OUT_EXAMPLES} "
            "images; generate = `uvim.lm.generate`, median ms per call, float32 / int8):",
            "",
            "| preset | metric float32 | metric int8 | greedy codes unchanged | "
            "generate b1 | b8 | b200 | first call b1 (s) | weights MB | quantize (s) |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            t, sp = r["task"], r["generate_speed"]
            w = r["weights_bytes"]["uvim"]
            cells = [
                r["preset"], _metric_str(t, r["metric"]["float32"]),
                _metric_str(t, r["metric"]["int8"]),
                f"{100 * r['greedy_codes_unchanged']:.1f}%",
            ] + [f"{sp[f'batch_{b}']['float32']['median_ms']:.1f} / "
                 f"{sp[f'batch_{b}']['int8']['median_ms']:.1f}" for b in GENERATE_BATCHES] + [
                f"{sp['batch_1']['float32']['first_call_s']:.2f} / "
                f"{sp['batch_1']['int8']['first_call_s']:.2f}",
                f"{w['float32'] / 1e6:.2f} / {w['int8'] / 1e6:.2f}",
                f"{r['quantize_s']:.1f}",
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    if result.get("lora"):
        lines += [
            f"LoRA ({result['versions']['backend']}, CPU): fine-tuned "
            f"{result['args']['epochs']} epoch(s) on the demo's stage-II data; "
            "held-out LM loss (token NLL on the oracle's codes) and task metric before -> after; "
            f"step = `fit` step on one batch of {result['args']['batch_size']} "
            "(LoRA and full fine-tune taking turns):",
            "",
            "| preset | run | trainable params | held-out LM loss | word acc. | metric | "
            "fit (s) | merged .keras: max logit diff, preds equal |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, r in result["lora"].items():
            t = name.split("_", 1)[1]
            b = r["before"]
            lines.append(
                f"| {name} | preset | {r['lm_params']:,} (all) | {b['lm_heldout']['loss']:.4f} | "
                f"{100 * b['lm_heldout']['word_accuracy']:.1f}% | "
                f"{_metric_str(t, b['metric'])} | | |")
            for variant, run in r["runs"].items():
                mk = run.get("merged_keras_file")
                merged = (f"{mk['logits_max_abs_diff']:.1e}, "
                          f"{100 * mk['predictions_equal_share']:.1f}%") if mk else ""
                lines.append(
                    f"| | {variant} | {run['trainable_params']:,} "
                    f"({100 * run['trainable_share']:.2f}%) | {run['lm_heldout']['loss']:.4f} | "
                    f"{100 * run['lm_heldout']['word_accuracy']:.1f}% | "
                    f"{_metric_str(t, run['metric'])} | {run['fit']['fit_s']:.1f} | {merged} |")
        steps = {name: r["step_time_same_batch"] for name, r in result["lora"].items()
                 if "step_time_same_batch" in r}
        if steps:
            lora = next(k for k in next(iter(steps.values())) if k.startswith("lora_r"))
            lines += ["", f"| preset | fit step {lora} (ms) | full fine-tune (ms) | "
                          "LoRA / full |", "|---|---|---|---|"]
            for name, st in steps.items():
                lines.append(f"| {name} | {st[lora]['median_ms']:.1f} | "
                             f"{st['full']['median_ms']:.1f} | {st['lora_over_full']:.2f} |")
        lines.append("")
    return "\n".join(lines)


# -- main ----------------------------------------------------------------------------------------
def run_other_backend(backend, args):
    """int8 rows on another backend: this script with --int8-only in a
    subprocess (the backend is chosen at import)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "int8.json")
        cmd = [sys.executable, os.path.abspath(__file__), "--int8-only", "--presets",
               args.presets_str, "--rounds", str(args.other_rounds), "--calls",
               str(args.other_calls), "--out", out]
        env = dict(os.environ, KERAS_BACKEND=backend)
        if backend == "torch":
            # torch's small ops stall with 2 OpenMP threads on a loaded 2-core
            # machine (10x slower decoding; benchmarks/README.md, finding 8)
            env.setdefault("OMP_NUM_THREADS", "1")
        say(f"--- int8 rows on {backend} (subprocess, at most {args.other_timeout} s) ---")
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        try:
            for line in proc.stdout:  # progress lines as they come
                if line.startswith("["):
                    say(f"  {backend}: {line.rstrip()}")
                if time.perf_counter() - t > args.other_timeout:
                    raise subprocess.TimeoutExpired(cmd, args.other_timeout)
            proc.wait(timeout=max(1, args.other_timeout - (time.perf_counter() - t)))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            say(f"  {backend}: stopped after {time.perf_counter() - t:.0f} s")
            return None, {"error": f"timed out after {args.other_timeout} s"}
        if proc.returncode != 0 or not os.path.exists(out):
            return None, {"error": f"exit status {proc.returncode}"}
        with open(out) as f:
            other = json.load(f)
        return other["int8"][backend], {
            "versions": other["versions"], "rounds": args.other_rounds,
            "calls": args.other_calls, "OMP_NUM_THREADS": env.get("OMP_NUM_THREADS"),
            "wall_s": round(time.perf_counter() - t, 1)}


def main(argv=None):
    args = parse_args(argv)
    args.presets_str = args.presets
    presets = [p for p in args.presets.split(",") if p]
    args.ranks = [int(r) for r in args.ranks.split(",") if r]
    t0 = time.perf_counter()
    load_start = list(os.getloadavg())

    import uvim_keras  # noqa: F401  (first: selects JAX unless KERAS_BACKEND is set)

    import keras

    backend = keras.backend.backend()
    result = {
        "script": "benchmarks/bench_adaptation.py",
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(),
                    "processor": platform.processor()},
        "versions": versions(),
        "uvim_keras": package_info(),
        "args": {k: v for k, v in vars(args).items() if k != "presets_str"},
        "loadavg_start": load_start,
        "int8": {backend: []},
        "lora": {},
    }
    result["machine"]["OMP_NUM_THREADS"] = os.environ.get("OMP_NUM_THREADS")
    for name in presets:
        res, ref, held_out, oracle = bench_int8(name, args)
        result["int8"][backend].append(res)
        if not args.int8_only:
            result["lora"][name] = bench_lora(name, ref, held_out, oracle,
                                              res["metric"]["float32"], args)
        del ref
    result["wall_s_this_backend"] = round(time.perf_counter() - t0, 1)
    for other in [b for b in args.other_backends.split(",") if b and b != backend]:
        rows, info = run_other_backend(other, args)
        result.setdefault("other_backends", {})[other] = info
        if rows is not None:
            result["int8"][other] = rows
    result["loadavg_end"] = list(os.getloadavg())
    result["wall_s"] = round(time.perf_counter() - t0, 1)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    say("")
    say(markdown(result))
    say(f"total {result['wall_s']} s ({backend} part {result['wall_s_this_backend']} s); "
        f"load average start {load_start}, "
        f"end {result['loadavg_end']}; wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
