"""`uvim-keras convert | predict | presets`: checkpoints, presets, predictions.

    uvim-keras presets
    uvim-keras convert --task panoptic --stage1 A.npz [--stage2 B.npz] -o DIR
    uvim-keras convert --preset panoptic_coco --stage1 A.npz --stage2 B.npz
    uvim-keras predict --preset NAME_OR_PATH IMAGE... -o OUTDIR [--temperature T --samples N --seed S]

Errors are reported on one line by `cli.main`: a bad argument value
(`CommandError`) with exit status 2, like argparse's usage errors; a failure
at run time (unknown preset, missing or unreadable image or checkpoint,
files of the wrong task, a damaged preset folder, an output that cannot be
written, ...) with exit status 1. Each message names the file or argument:
`predict` checks its images (`data.images.read_image`), the output folder
(`prepare_output_folder`) and a local preset folder's files
(`presets.folder_checks.check_preset_folder`) before it loads the model, and
wraps what the loader raises (`_load_uvim`); `convert` checks its paths and
names the checkpoint in errors that name no file.
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
        "for depth and colour). Images that share a name, or whose outputs would replace an "
        "input image, get <image>_1, <image>_2, ... (each line of the output says so); files "
        "are written whole or not at all (a temporary file renamed into place). Images, the "
        "output folder and the preset's files are checked before the model loads. 16-bit "
        "images are scaled to 8 bits, transparency is composited on white.",
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
        with open(path, "rb") as f:
            config = json.loads(f.read().decode("utf-8"))
    except OSError as e:
        raise InputError(f"cannot read --config {path!r}: {e.strerror or e}.") from e
    except UnicodeDecodeError:
        raise InputError(f"--config {path!r} is not valid JSON (not UTF-8 text).") from None
    except ValueError as e:
        raise InputError(f"--config {path!r} is not valid JSON ({e}).") from e
    if not isinstance(config, dict) or "stage1" not in config:
        raise InputError(f"--config {path!r} must be a JSON object with a 'stage1' entry.")
    for key in ("stage1", "lm", "task"):
        if key in config and not isinstance(config[key], dict) and not (
                key != "stage1" and config[key] is None):
            raise InputError(f"--config {path!r}: '{key}' must be a JSON object of model "
                             f"settings, not {type(config[key]).__name__}.")
    temperature = config.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(
            temperature, (int, float)) or not (0 <= temperature < float("inf"))):
        raise InputError(f"--config {path!r}: 'temperature' must be a number >= 0, not "
                         f"{temperature!r}.")
    return config


def _check_checkpoint_arg(flag, path):
    import stat

    try:
        st = os.stat(path)
    except (OSError, ValueError):
        raise InputError(f"{flag} {path!r} does not exist.") from None
    if stat.S_ISDIR(st.st_mode):
        raise InputError(f"{flag} {path!r} is a folder, not a .npz checkpoint.")
    if not stat.S_ISREG(st.st_mode):
        raise InputError(f"{flag} {path!r} is not a regular file (a device, pipe or socket).")
    if st.st_size == 0:
        raise InputError(f"{flag} {path!r} is empty (0 bytes), not a .npz checkpoint.")


def _check_convert_out(out, inputs, overwrite):
    """-o: a folder (or a path to make one at), which --overwrite must not
    delete an input with."""
    if os.path.lexists(out) and not os.path.isdir(out):
        raise InputError(f"-o {out!r} exists and is not a folder.")
    if not os.path.exists(out):
        above = _nearest_existing(out)
        if not os.path.isdir(above):
            raise InputError(f"-o {out!r}: {above!r} is a file, not a folder.")
        return
    if overwrite:
        real_out = os.path.realpath(out)
        for flag, path in inputs:
            real = os.path.realpath(path)
            if os.path.commonpath([real_out, real]) == real_out:
                raise InputError(f"-o {out!r} holds {flag} {path!r}: --overwrite would delete it; "
                                 "write the preset to another folder.")


def _name_inputs(error, inputs, out):
    """`error`'s message, naming the checkpoint files when it names no file."""
    message = one_line(error)
    if not isinstance(error, (ValueError, OSError)):
        message = f"{type(error).__name__}: {message}"
    named = [os.path.basename(p) for _, p in inputs] + [os.path.abspath(out), os.fspath(out)]
    if any(name and name in message for name in named):
        return message
    named = ", ".join(f"{flag} {p!r}" for flag, p in inputs)
    return f"cannot convert {named}: {message.rstrip('.')}."


def convert_command(args):
    import uvim_keras.models  # noqa: F401  (registers the classes the converter builds)
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
    inputs = [(flag, path) for flag, path in (("--stage1", args.stage1), ("--stage2", args.stage2))
              if path]
    for flag, path in inputs:
        _check_checkpoint_arg(flag, path)
    _check_convert_out(out, inputs + ([("--config", args.config)] if args.config else []),
                       args.overwrite)
    try:
        out = convert_to_preset(
            out, task, args.stage1, stage1_config, stage2_path=args.stage2, lm_config=lm_config,
            task_config=task_config, temperature=temperature, info=info, overwrite=args.overwrite,
            progress=None if args.quiet else _ConvertProgress(),
        )
    except (KeyboardInterrupt, MemoryError):
        raise
    except Exception as e:  # noqa: BLE001 (one line naming the checkpoint files)
        raise InputError(_name_inputs(e, inputs, out)) from e
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
class OutputError(InputError):
    """An output that cannot be written (the message names the path):
    exit status 1."""


def _output_stem(path):
    stem = os.path.splitext(os.path.basename(os.path.normpath(path)))[0]
    return stem or "image"


def _file_id(path):
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return None
    return (st.st_dev, st.st_ino)


def output_names(images, out, suffixes=(".png", ".npz")):
    """[(stem, reason)] per input image: distinct output stems (compared
    case-insensitively, for file systems that are) none of whose files
    `out/<stem><suffix>` is one of the input files. A stem is the image's
    own name where it can be (the first image of each name keeps it); the
    others get `_1`, `_2`, ... and `reason` says why (None when the name is
    the image's own)."""
    inputs = {i for i in (_file_id(p) for p in images) if i is not None}

    def clobbers_input(stem):
        return any(_file_id(os.path.join(out, stem + s)) in inputs for s in suffixes)

    natural = [_output_stem(p) for p in images]
    taken, names = set(), [None] * len(images)
    for i, stem in enumerate(natural):  # each name's first image keeps it
        if stem.casefold() not in taken and not clobbers_input(stem):
            names[i] = (stem, None)
            taken.add(stem.casefold())
    for i, stem in enumerate(natural):
        if names[i] is not None:
            continue
        if clobbers_input(stem):
            reason = f"{os.path.join(out, stem)}.* would overwrite an input image"
        else:
            first = next(j for j, s in enumerate(natural) if s.casefold() == stem.casefold()
                         and names[j] is not None and names[j][1] is None)
            reason = f"{images[first]} has the same name"
        k = 1
        while f"{stem}_{k}".casefold() in taken or clobbers_input(f"{stem}_{k}"):
            k += 1
        names[i] = (f"{stem}_{k}", reason)
        taken.add(f"{stem}_{k}".casefold())
    return names


def _nearest_existing(path):
    """The nearest existing path above (or at) `path`."""
    path = os.path.abspath(path)
    while not os.path.lexists(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def prepare_output_folder(out, flag="-o"):
    """Makes sure a file can be written in folder `out` (creating it and its
    missing parents): raises `OutputError` naming `out` otherwise. Returns
    the folders it created (deepest last), for `remove_created` when the
    command fails before writing anything."""
    import tempfile

    if not out:
        raise CommandError(f"{flag} '': an empty path.")
    if os.path.lexists(out) and not os.path.exists(out):
        raise OutputError(f"{flag} {out!r} is a broken symbolic link.")
    if os.path.exists(out) and not os.path.isdir(out):
        raise OutputError(f"{flag} {out!r} exists and is not a folder.")
    created = []
    if not os.path.exists(out):
        above = _nearest_existing(out)
        if not os.path.isdir(above):
            raise OutputError(f"{flag} {out!r}: {above!r} is a file, not a folder.")
        missing, path = [], os.path.abspath(out)
        while path != above:
            missing.append(path)
            path = os.path.dirname(path)
        for path in reversed(missing):
            try:
                os.mkdir(path)
            except FileExistsError:
                continue
            except OSError as e:
                remove_created(created)
                raise OutputError(
                    f"{flag} {out!r}: cannot create the folder {path!r} ({e.strerror or e}).") from None
            created.append(path)
    try:
        fd, probe = tempfile.mkstemp(prefix=".uvim-keras-write-check-", dir=out)
        os.close(fd)
        os.remove(probe)
    except OSError as e:
        remove_created(created)
        raise OutputError(f"{flag} {out!r}: cannot write files in this folder "
                          f"({e.strerror or e}).") from None
    return created


def remove_created(created):
    """Removes the (empty) folders `prepare_output_folder` created."""
    for path in reversed(created):
        try:
            os.rmdir(path)
        except OSError:
            pass


def _umask():
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def write_atomically(path, write):
    """Writes `path` through `write(file)` into a temporary file beside it,
    flushed to disk (fsync), then renamed over `path` (os.replace): a
    failure (a full disk, ...) leaves `path` as it was and no temporary file;
    it raises `OutputError` naming `path`."""
    import tempfile

    folder, name = os.path.split(os.path.abspath(path))
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # as a plain open() would
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        raise OutputError(f"cannot write {path!r}: {e.strerror or e}.") from None
    finally:
        if tmp is not None:
            try:
                os.remove(tmp)
            except OSError:
                pass


def _check_predict_args(args):
    import math

    if not args.images:
        raise CommandError("no IMAGE given: name at least one image file.")
    if any(p == "" for p in args.images):
        raise CommandError("IMAGE '': an empty path.")
    if args.samples < 1:
        raise CommandError(f"--samples {args.samples}: expected a positive number.")
    if args.temperature is not None and not (
            math.isfinite(args.temperature) and args.temperature >= 0):
        raise CommandError(f"--temperature {args.temperature}: expected a finite value >= 0.")
    if args.batch_size < 1:
        raise CommandError(f"--batch-size {args.batch_size}: expected a positive number.")
    if args.seed is not None and args.seed < 0:
        raise CommandError(f"--seed {args.seed}: expected a number >= 0.")
    if not args.preset:
        raise CommandError("--preset '': expected a preset name, folder or hf://org/name.")
    if not args.out:
        raise CommandError("-o '': an empty path.")


def predict_command(args):
    """Every check that needs no model comes first (arguments, images, the
    output folder, the preset folder's files), so a failure costs no model
    load and leaves nothing behind; outputs are written atomically."""
    import numpy as np

    _check_predict_args(args)
    from uvim_keras.data.images import read_image

    raw = [read_image(p) for p in args.images]  # fail on bad images before loading a model
    names = output_names(args.images, args.out)
    created = prepare_output_folder(args.out)
    try:
        uvim = _load_uvim(args.preset, progress=not args.quiet)
        _predict(args, uvim, raw, names, np)
    except BaseException:
        remove_created(created)  # the folders it made, when they are still empty
        raise


def _predict(args, uvim, raw, names, np):
    from uvim_keras.data.images import prepare_image, resize_prediction, shown_input
    from uvim_keras.visualize.figures import picture

    task = uvim.task.name
    grey = uvim.task.grey_input
    size = tuple(int(n) for n in uvim.input_size)
    resize_back = uvim.task.output_resize is not None
    temperature = uvim.default_temperature if args.temperature is None else args.temperature
    if resize_back:
        print(f"model input size {size[0]}x{size[1]}: each image is resized to it and its "
              f"output is resized back to the image's own height and width "
              f"({uvim.task.output_resize[0]} interpolation)")
    else:
        print(f"model input size {size[0]}x{size[1]}: outputs of task {task!r} are written "
              "at that size")
    written = 0
    for start in range(0, len(raw), args.batch_size):
        chunk = raw[start:start + args.batch_size]
        batch = np.stack([prepare_image(img, size, grey) for img in chunk])
        seed = None if args.seed is None else args.seed + start
        out = uvim.sample(batch, num_samples=args.samples, temperature=temperature, seed=seed)
        for i, img in enumerate(chunk):
            stem, renamed = names[start + i]
            original = tuple(img.shape[:2])
            if resize_back:
                prediction = resize_prediction(np.asarray(out[i]), original, uvim.task)
                shown = shown_input(img, grey)
            else:
                prediction = np.asarray(out[i])
                shown = ((batch[i] + 1.0) * 127.5).round().clip(0, 255).astype("uint8")
            npz_path = os.path.join(args.out, stem + ".npz")
            png_path = os.path.join(args.out, stem + ".png")
            arrays = dict(
                prediction=prediction, input=shown, original_size=np.array(original),
                model_size=np.array(size), temperature=np.float32(temperature),
                seed=np.int64(seed if seed is not None else -1),
                task=np.array(task), preset=np.array(str(args.preset)),
            )
            image = picture(uvim.task, shown, list(prediction))
            done = []
            try:
                write_atomically(npz_path, lambda f: np.savez_compressed(f, **arrays))
                done.append(npz_path)
                write_atomically(png_path, lambda f: image.save(f, format="PNG"))
            except OutputError as e:
                state = (f"outputs of {written} of {len(raw)} images written before"
                         if written else "no image's outputs written before")
                if done:
                    state += f"; {done[0]} was written"
                raise OutputError(f"{str(e).rstrip('.')} ({state}).") from None
            written += 1
            note = f" (renamed: {renamed})" if renamed else ""
            print(f"{args.images[start + i]} ({original[0]}x{original[1]}) -> {png_path}, "
                  f"{npz_path}{note}")


def _load_uvim(preset, progress):
    """`UViM.from_preset(preset)` after `check_preset_folder` on a local
    folder; an error of the loader that is not one of uvim-keras' own
    (keras, keras-hub, h5py, json) becomes a `PresetLoadError` on one line
    naming the preset."""
    from uvim_keras.models.uvim import UViM
    from uvim_keras.presets.folder_checks import (
        PresetFolderError,
        check_preset_folder,
        local_preset_folder,
    )

    folder = local_preset_folder(preset)
    if folder is not None:
        try:
            check_preset_folder(folder, "uvim")
        except PresetFolderError as e:
            if os.fspath(preset) == folder or "://" in os.fspath(preset):
                raise
            from uvim_keras.presets.bundled import bundled_preset

            if bundled_preset(os.fspath(preset)) is not None:
                raise PresetFolderError(f"{e} (the bundled preset {preset!r}: reinstall "
                                        "uvim-keras)") from e
            raise PresetFolderError(
                f"{str(e).rstrip('.')}. This is the cached conversion of the named preset "
                f"{preset!r}: uvim_keras.presets.remove_preset({preset!r}) removes it, and the "
                "next use downloads and converts it again.") from e
    try:
        return UViM.from_preset(preset, progress=progress)
    except Exception as e:  # noqa: BLE001
        if _own_error(e):
            raise
        where = f"{preset!r}" + (f" ({folder})" if folder and folder != preset else "")
        raise PresetLoadError(f"cannot load preset {where}: {_short_reason(e)}") from e


class PresetLoadError(InputError):
    """A preset that keras-hub or Keras cannot load: exit status 1."""


def _own_error(error):
    """Errors whose message uvim-keras wrote for the user (they name the preset)."""
    from uvim_keras.presets import DownloadError, PresetError

    own = (PresetError, DownloadError, InputError)
    try:
        from uvim_keras.checkpoints.big_vision import ConversionError

        own += (ConversionError,)
    except ImportError:  # pragma: no cover
        pass
    return isinstance(error, own) or (isinstance(error, ImportError) and "pip install" in str(error))


def _short_reason(error, limit=300):
    """An exception's message on one line, at most about `limit` characters
    (cut at a sentence end), with its type unless it is a ValueError or
    OSError."""
    text = " ".join(str(error).split()) or type(error).__name__
    if len(text) > limit:
        cut = text.rfind(". ", 0, limit)
        text = text[:cut + 1] if cut > 40 else text[:limit - 3] + "..."
    if not isinstance(error, (ValueError, OSError)):
        text = f"{type(error).__name__}: {text}"
    return text.rstrip(".") + "."


def one_line(error, limit=1500):
    """An exception's message on one line (long lists shortened)."""
    text = " ".join(str(error).split())
    if not text:
        text = type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use `uvim-keras` (uvim_keras.cli)")
