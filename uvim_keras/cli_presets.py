"""`uvim-keras convert | predict | presets`: checkpoints, presets, predictions.

    uvim-keras presets
    uvim-keras convert --task panoptic --stage1 A.npz [--stage2 B.npz] -o DIR
    uvim-keras convert --preset panoptic_coco --stage1 A.npz --stage2 B.npz
    uvim-keras predict --preset NAME_OR_PATH IMAGE... -o OUTDIR [--temperature T --samples N --seed S]

Errors are reported on one line by `cli.main`: a bad argument value
(`CommandError`) with exit status 2, like argparse's usage errors; a failure
at run time (unknown preset, missing or unreadable image or checkpoint,
files of the wrong task, ...) with exit status 1.
"""

import json
import os
import sys

TASKS = ("panoptic", "depth", "colorization")
_RELEASED = {"panoptic": "panoptic_coco", "depth": "depth_nyu", "colorization": "colorization_imagenet"}


class CommandError(ValueError):
    """A bad command-line argument value or combination: a usage error
    (reported on one line, exit status 2)."""


class InputError(ValueError):
    """A file named on the command line that is missing or unusable: a
    failure at run time (reported on one line, exit status 1)."""


def add_subcommands(sub):
    conv = sub.add_parser(
        "convert", help="convert big_vision .npz checkpoints into a preset folder",
        description="Convert big_vision UViM checkpoints (stage I, optionally stage II) into a "
        "keras-hub preset folder. Every parameter's name and shape is checked.",
    )
    conv.add_argument("--task", choices=TASKS,
                      help="the task (uses its released big_vision configs unless --config)")
    conv.add_argument("--preset", help="a named preset whose configs and model card to use; "
                      "without -o the result is installed in the cache under that name")
    conv.add_argument("--stage1", required=True, help="stage-I checkpoint (.npz)")
    conv.add_argument("--stage2", help="stage-II LM checkpoint (.npz); without it: a stage-I preset")
    conv.add_argument("-o", "--out", help="output preset folder")
    conv.add_argument("--config", help="JSON file with big_vision model configs: "
                      '{"stage1": {...}, "lm": {...}, "task": {...}, "temperature": T}')
    conv.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    conv.add_argument("--quiet", action="store_true", help="no progress output")
    conv.set_defaults(func=convert_command)

    pred = sub.add_parser(
        "predict", help="predict with a complete UViM preset and write pictures and arrays",
        description="Run a complete UViM (named preset, preset folder, hf:// or kaggle:// "
        "handle) on images; writes OUTDIR/<image>.png (picture) and OUTDIR/<image>.npz "
        "(raw outputs) per image. The model runs at its own input size; each output is "
        "resized back to its image's height and width (nearest for panoptic maps, bilinear "
        "for depth and colour).",
    )
    pred.add_argument("--preset", required=True, help="named preset, preset folder or hf://org/name")
    pred.add_argument("images", nargs="+", metavar="IMAGE", help="image files")
    pred.add_argument("-o", "--out", required=True, help="output folder")
    pred.add_argument("--temperature", type=float, default=None,
                      help="sampling temperature (default: the preset's; 0 = greedy)")
    pred.add_argument("--samples", type=int, default=1, help="outputs per image (default 1)")
    pred.add_argument("--seed", type=int, default=0, help="sampling seed (default 0)")
    pred.add_argument("--batch-size", type=int, default=4, help="images per batch (default 4)")
    pred.add_argument("--quiet", action="store_true", help="no download progress bar")
    pred.set_defaults(func=predict_command)

    ls = sub.add_parser(
        "presets", help="list the named and bundled presets, their metrics and cache status")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=presets_command)


# -- presets ------------------------------------------------------------------------
def _metrics_text(metrics):
    return ", ".join(f"{k} {v}" for k, v in metrics.items())


def preset_rows():
    """One dict per preset: the named ones (released checkpoints, downloaded
    and converted on first use), then the bundled ones (shipped with the
    package, offline). Metrics are numbers ({"PQ": 43.1})."""
    from uvim_keras.presets import preset_status
    from uvim_keras.presets.bundled import bundled_presets

    status = preset_status()
    rows = []
    for name, spec, path in status:
        usable = path is not None or (spec.kind == "stage1" and any(
            p for n, s, p in status if s.kind == "uvim" and s.stage1_url == spec.stage1_url))
        rows.append({
            "name": name, "task": spec.task,
            "kind": "UViM" if spec.kind == "uvim" else "stage I",
            "metrics": dict(spec.metrics),
            "bundled": False,
            "cached": path,
            "usable_from_cache": bool(usable),
            "path": path,
            "sources": spec.urls,
        })
    for name, info in bundled_presets().items():
        rows.append({
            "name": name, "task": info["task"],
            "kind": "UViM" if info["kind"] == "uvim" else "stage I",
            "metrics": dict(info["metrics"]),
            "bundled": True,
            "cached": None,
            "usable_from_cache": False,
            "path": info["path"],
            "sources": [],
            "description": info["description"],
        })
    return rows


def presets_command(args):
    from uvim_keras.presets import cache_root

    rows = preset_rows()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    header = ("name", "task", "model", "metrics", "where")
    table = [header] + [
        (r["name"], r["task"], r["kind"], _metrics_text(r["metrics"]),
         "bundled (offline)" if r["bundled"] else
         "converted, cached" if r["cached"] else
         ("in the complete preset's cache" if r["usable_from_cache"] else "not downloaded"))
        for r in rows
    ]
    widths = [max(len(str(row[i])) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())
    print(f"\nnamed presets: published metrics; the first use downloads from big_vision and "
          f"converts into the cache: {cache_root()}")
    if any(r["bundled"] for r in rows):
        print("bundled presets: trained by `uvim-keras demo` on synthetic 64x64 shapes, shipped "
              "with the package (metrics on its held-out split)")


# -- convert ------------------------------------------------------------------------
def _read_config(path):
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except OSError as e:
        raise InputError(f"cannot read --config {path!r}: {e.strerror or e}.") from e
    except ValueError as e:
        raise InputError(f"--config {path!r} is not valid JSON ({e}).") from e
    if not isinstance(config, dict) or "stage1" not in config:
        raise InputError(f"--config {path!r} must be a JSON object with a 'stage1' entry.")
    return config


def convert_command(args):
    from uvim_keras.presets import cache, registry
    from uvim_keras.presets.conversion import convert_to_preset

    spec = None
    if args.preset:
        spec = registry.get_preset(args.preset)
        if spec is None:
            raise CommandError(
                f"unknown preset {args.preset!r}; named presets: {', '.join(registry.PRESETS)}."
            )
        if args.stage2 and spec.kind == "stage1":
            spec = registry.complete_sibling(spec) or spec
        elif not args.stage2 and spec.kind == "uvim":
            spec = registry.stage1_sibling(spec) or spec
        if args.task and args.task != spec.task:
            raise CommandError(f"--task {args.task} does not match preset {spec.name} ({spec.task}).")
    elif not args.task:
        raise CommandError("give --task (panoptic, depth, colorization) or --preset NAME.")
    task = spec.task if spec else args.task
    base = spec or registry.get_preset(_RELEASED[task])
    stage1_config, lm_config = base.stage1_config, base.lm_config
    task_config, temperature = base.task_config, base.temperature
    if lm_config is None and args.stage2:
        lm_config = (registry.complete_sibling(base) or base).lm_config
    if args.config:
        config = _read_config(args.config)
        stage1_config = config["stage1"]
        lm_config = config.get("lm", lm_config)
        task_config = config.get("task", task_config)
        temperature = config.get("temperature", temperature)
    if args.stage2 and lm_config is None:
        raise CommandError("no LM config for --stage2: add an 'lm' entry to --config.")
    if spec is not None and not args.config:
        info = spec.card_info()
    else:
        info = {"task": task, "description": f"UViM {task} model converted from big_vision checkpoints"}
    out = args.out or (cache.preset_cache_path(spec.name) if spec else None)
    if out is None:
        raise CommandError("give -o DIR (the output preset folder).")
    if spec is not None and not args.out:
        args.overwrite = True  # (re)installing a named preset in the cache
    for flag, path in (("--stage1", args.stage1), ("--stage2", args.stage2)):
        if path and not os.path.isfile(path):
            raise InputError(f"{flag} {path!r} does not exist.")
    out = convert_to_preset(
        out, task, args.stage1, stage1_config, stage2_path=args.stage2, lm_config=lm_config,
        task_config=task_config, temperature=temperature, info=info, overwrite=args.overwrite,
        progress=None if args.quiet else _ConvertProgress(),
    )
    kind = "complete UViM" if args.stage2 else "stage-I"
    loader = "UViM" if args.stage2 else "UViMStage1"
    handle = spec.name if (spec and not args.out) else out
    print(f"wrote {kind} {task} preset {out}; load it with uvim_keras.{loader}.from_preset({handle!r})")


class _ConvertProgress:
    """`convert`'s progress: a line per stage on stdout (with the time it
    took so far), a bar over the checkpoint's arrays on stderr when it is a
    terminal, else a line when they are all assigned."""

    def __init__(self, out=None, err=None):
        import time

        self._time = time.perf_counter
        self._start = self._time()
        self._out = sys.stdout if out is None else out
        self._err = sys.stderr if err is None else err
        self._bar = None

    def _line(self, text):
        print(f"[{self._time() - self._start:6.1f} s] {text}", file=self._out, flush=True)

    def __call__(self, stage, done=None, total=None):
        if total is None:
            self._line(stage)
            return
        if done == 0:
            self._line(f"assigning the {stage}: {total} arrays")
            if self._err.isatty():
                from tqdm import tqdm

                self._bar = tqdm(total=total, unit="array", file=self._err, leave=False)
            return
        if self._bar is not None:
            self._bar.update(done - self._bar.n)
        if done == total:
            if self._bar is not None:
                self._bar.close()
                self._bar = None
            self._line(f"assigned {total} arrays")


# -- predict ------------------------------------------------------------------------
def _output_stems(paths):
    stems, seen = [], {}
    for path in paths:
        stem = os.path.splitext(os.path.basename(path))[0] or "image"
        n = seen.get(stem, 0)
        seen[stem] = n + 1
        stems.append(stem if n == 0 else f"{stem}_{n}")
    return stems


def predict_command(args):
    import numpy as np

    from uvim_keras.presets.conversion import task_name
    from uvim_keras.presets.images import (
        OUTPUT_RESIZE,
        prepare_image,
        read_image,
        resize_prediction,
        shown_input,
    )
    from uvim_keras.presets.pictures import picture

    if args.samples < 1:
        raise CommandError(f"--samples {args.samples}: expected a positive number.")
    if args.temperature is not None and not (args.temperature >= 0 and np.isfinite(args.temperature)):
        raise CommandError(f"--temperature {args.temperature}: expected a finite value >= 0.")
    if args.batch_size < 1:
        raise CommandError(f"--batch-size {args.batch_size}: expected a positive number.")
    raw = [read_image(p) for p in args.images]  # fail on bad images before loading a model
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise InputError(f"-o {args.out!r} exists and is not a folder.")
    uvim = _load_uvim(args.preset, progress=not args.quiet)
    task = task_name(uvim.task)
    grey = task == "colorization"
    size = tuple(int(n) for n in uvim.input_size)
    resize_back = task in OUTPUT_RESIZE
    os.makedirs(args.out, exist_ok=True)
    temperature = uvim.default_temperature if args.temperature is None else args.temperature
    config = uvim.task.get_config()
    stems = _output_stems(args.images)
    if resize_back:
        print(f"model input size {size[0]}x{size[1]}: each image is resized to it and its "
              f"output is resized back to the image's own height and width "
              f"({OUTPUT_RESIZE[task][0]} interpolation)")
    else:
        print(f"model input size {size[0]}x{size[1]}: outputs of task {task!r} are written "
              "at that size")
    for start in range(0, len(raw), args.batch_size):
        chunk = raw[start:start + args.batch_size]
        batch = np.stack([prepare_image(img, size, grey) for img in chunk])
        seed = None if args.seed is None else args.seed + start
        out = uvim.sample(batch, num_samples=args.samples, temperature=temperature, seed=seed)
        for i, img in enumerate(chunk):
            stem = stems[start + i]
            original = tuple(img.shape[:2])
            if resize_back:
                prediction = resize_prediction(np.asarray(out[i]), original, task)
                shown = shown_input(img, grey)
            else:
                prediction = np.asarray(out[i])
                shown = ((batch[i] + 1.0) * 127.5).round().clip(0, 255).astype("uint8")
            npz_path = os.path.join(args.out, stem + ".npz")
            png_path = os.path.join(args.out, stem + ".png")
            np.savez_compressed(
                npz_path, prediction=prediction, input=shown, original_size=np.array(original),
                model_size=np.array(size), temperature=np.float32(temperature),
                seed=np.int64(seed if seed is not None else -1),
                task=np.array(task), preset=np.array(str(args.preset)),
            )
            picture(task, shown, list(prediction), task_config=config).save(png_path)
            print(f"{args.images[start + i]} ({original[0]}x{original[1]}) -> {png_path}, "
                  f"{npz_path}")


def _load_uvim(preset, progress):
    from uvim_keras.models.uvim import UViM

    return UViM.from_preset(preset, progress=progress)


def one_line(error, limit=1500):
    """An exception's message on one line (long lists shortened)."""
    text = " ".join(str(error).split())
    if not text:
        text = type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `uvim-keras` (uvim_keras.cli)")
