"""Loading and saving UViM presets (keras-hub is imported only inside).

A preset handle is one of

* a named preset (`uvim_keras.presets.PRESETS`, e.g. "panoptic_coco"): on
  first use its big_vision checkpoints are downloaded into the Keras cache,
  converted and saved as a keras-hub preset folder in the cache; later uses
  load that folder without any network request;
* a bundled preset ("shapes_panoptic", "shapes_depth", "shapes_colorization",
  `uvim_keras.presets.bundled`): shipped with the package, loaded offline;
* a local preset folder (written by `save_to_preset` or `uvim-keras convert`;
  write `./name` for a folder named like a named preset);
* `hf://org/name`, `kaggle://org/model/keras/variant`, `gs://...`: handled by
  keras-hub (and huggingface_hub / kagglehub, with their own caches).

Local folders (bundled, cached, your own) are checked before keras-hub reads
them (`layout.verify_integrity`): the files their `uvim_preset.json` records
(sizes always, sha256 once per process), and the weights a complete preset
needs. For a complete preset `config.json` is the authoritative stage-I
config; `task.json` holds a copy of it, and a preset whose copy differs is
refused (`hub.tasks.check_backbone_config`) rather than built from either.
Cached named presets are repaired, upgraded and recorded under the cache's
lock (`cache.lock`); see `cache` for the rules.
"""

import atexit
import os
import shutil
import sys

from uvim_keras.presets import cache, layout, registry
from uvim_keras.presets.bundled import bundled_preset, bundled_presets
from uvim_keras.presets.cache import CacheReadOnly, DownloadError
from uvim_keras.presets.layout import IntegrityError, PresetError  # noqa: F401  (re-exported)


# -- handles ----------------------------------------------------------------------
def _unknown(preset):
    names = ", ".join(registry.PRESETS)
    bundled = ", ".join(bundled_presets())
    offline = f"; bundled, offline: {bundled}" if bundled else ""
    return PresetError(
        f"unknown preset {preset!r}: expected a named preset ({names}{offline}), a local "
        "preset folder, hf://org/name or kaggle://org/model/keras/variant."
    )


def is_remote(preset):
    return "://" in preset


def resolve(preset, want, load_weights=True, progress=True):
    """(handle, spec): a handle keras-hub can load, and the named preset's
    spec (None for other handles). `want` is "uvim" or "stage1". With
    `load_weights=False` a named preset that is not cached gives handle None
    (build it from its configs; nothing is downloaded)."""
    if not isinstance(preset, (str, os.PathLike)):
        raise PresetError(f"preset must be a string or path, got {type(preset).__name__}.")
    preset = os.fspath(preset)
    spec = registry.get_preset(preset)
    if spec is not None:  # names win over same-named folders (as in keras-hub): use ./name
        if want == "uvim":
            if spec.kind != "uvim":
                full = registry.complete_sibling(spec)
                hint = f" (the complete model is {full.name!r})" if full else ""
                raise PresetError(
                    f"{preset!r} is a stage-I preset: it has no stage-II LM{hint}. "
                    "Load it with UViMStage1.from_preset."
                )
            path = _cached(spec.name)
            if path is None and load_weights:
                path = install(spec, progress=progress)
            return path, spec
        # A stage-I model: any cached preset with this stage-I checkpoint will do.
        for candidate in (spec, registry.stage1_sibling(spec), registry.complete_sibling(spec)):
            path = _cached(candidate.name) if candidate is not None else None
            if path is not None:
                return path, spec
        if not load_weights:
            return None, spec
        target = spec if spec.kind == "stage1" else (registry.stage1_sibling(spec) or spec)
        return install(target, progress=progress), spec
    bundled = bundled_preset(preset)
    if bundled is not None:
        layout.check_weights_layout(bundled, PresetError)
        layout.verify_integrity(bundled, weights=load_weights)
        return os.fspath(bundled), None
    if os.path.isdir(preset):
        if not os.path.isfile(os.path.join(preset, "config.json")):
            raise PresetError(
                f"{preset} is a folder but not a preset (no config.json). Presets are written "
                "by save_to_preset or `uvim-keras convert`."
            )
        layout.check_weights_layout(preset, PresetError)
        layout.verify_integrity(preset, weights=load_weights)
        return preset, None
    if is_remote(preset):
        return preset, None
    if os.path.exists(preset):
        raise PresetError(
            f"{preset} is a file, not a preset folder; big_vision .npz checkpoints are "
            "converted with `uvim-keras convert --task TASK --stage1 A.npz [--stage2 B.npz] -o DIR`."
        )
    raise _unknown(preset)


# -- the cache ----------------------------------------------------------------------
def _cached(name):
    """The cached conversion of the named preset `name`, ready to load, or
    None when it is not there.

    Fast path, no lock: a complete, current, recorded folder whose files
    match the record. Anything else is dealt with under the folder's lock:
    leftovers of killed runs are removed or completed (`cache.repair`), a
    conversion by an older uvim-keras is upgraded in place (MLP kernels
    (in, out), attention arrays) and recorded, one from a newer uvim-keras
    is refused. A cache that cannot be written loads what is up to date and
    an upgraded temporary copy of what is not."""
    path = cache.preset_cache_path(name)
    if cache.is_complete(path):
        info = layout.read_info(path)
        if isinstance(info.get(layout.FILES_KEY), dict) and not layout.is_outdated(path):
            layout.check_weights_layout(path, PresetError)  # (a newer layout: refused)
            _verify_cached(name, path, info)
            _tidy(path)
            return path
    elif not os.path.lexists(path) and not cache.leftovers(path):
        return None
    try:
        with cache.lock(path, "repairing or upgrading"):
            return _repair_cached(name, path)
    except CacheReadOnly:
        return _cached_read_only(name, path)


def _verify_cached(name, path, info=None):
    try:
        layout.verify_integrity(path, info=info)
    except IntegrityError as e:
        raise IntegrityError(
            f"{e} This is the cached conversion of the named preset {name!r}: "
            f"uvim_keras.presets.remove_preset({name!r}) removes it, and the next use downloads "
            "and converts it again."
        ) from e


def _tidy(path):
    """Removes leftovers of killed runs next to a good cached folder when
    no other process holds its lock (never waits)."""
    if not cache.leftovers(path):
        return
    import filelock

    try:
        if not cache.writable():
            return
        with filelock.FileLock(cache.lock_file(path), timeout=0):
            cache.repair(path)
    except (filelock.Timeout, OSError):
        pass


def _repair_cached(name, path):
    """`_cached` under the folder's lock."""
    cache.repair(path)
    if not cache.is_complete(path):
        return None
    info = layout.read_info(path)
    if layout.is_outdated(path):
        layout.upgrade_weights_layout(path)  # (re-enters our lock) verifies, rewrites, records
    else:
        layout.check_weights_layout(path, PresetError)
        if not isinstance(info.get(layout.FILES_KEY), dict):
            # A conversion by an earlier uvim-keras: recorded on first use.
            layout.verify_integrity(path, info=info)
            layout.record_integrity(path)
    _verify_cached(name, path)
    return path


_READ_ONLY_COPIES = {}


def _cached_read_only(name, path):
    """`_cached` for a cache that cannot be written."""
    if not os.path.isdir(path) and cache.leftovers(path):
        raise PresetError(
            f"the cached preset {path} was left half-way by a killed process and the cache "
            f"{cache.cache_root()} cannot be written, so it cannot be repaired. Load it once with "
            "write access to the cache (or set UVIM_KERAS_CACHE to a writable folder)."
        )
    if not cache.is_complete(path):
        return None
    if not layout.is_outdated(path):
        layout.check_weights_layout(path, PresetError)
        _verify_cached(name, path)
        return path
    copy = _READ_ONLY_COPIES.get(path)
    if copy is None or not os.path.isdir(copy):
        copy = layout.upgraded_copy(path)  # (checks the record, if any, first)
        _READ_ONLY_COPIES[path] = copy
        atexit.register(shutil.rmtree, os.path.dirname(copy), True)
        print(f"uvim-keras: the cached preset {path} was converted by an older uvim-keras "
              f"(weights_layout {layout.weights_layout(path)}) and the cache cannot be written; "
              f"loading an upgraded temporary copy ({copy}, removed at exit). Upgrade it once "
              f"with write access: uvim_keras.presets.upgrade_weights_layout({path!r}).",
              file=sys.stderr, flush=True)
    return copy


def _has_task_json(handle):
    if os.path.isdir(handle):
        return os.path.isfile(os.path.join(handle, "task.json"))
    from keras_hub.src.utils.preset_utils import check_file_exists

    return check_file_exists(handle, "task.json")


# -- first use of a named preset ----------------------------------------------------
def _manual_steps(spec):
    files = [os.path.basename(u) for u in spec.urls]
    fetch = "; ".join(f"curl -fLo {f} {u}" for f, u in zip(files, spec.urls))
    args = f"--stage1 {files[0]}" + (f" --stage2 {files[1]}" if len(files) > 1 else "")
    return (
        f"fetch the file{'s' if len(files) > 1 else ''} by hand ({fetch}) and run "
        f"`uvim-keras convert --preset {spec.name} {args}`, which installs it into the cache "
        f"({cache.preset_cache_path(spec.name)})"
    )


def _expected(spec, url):
    """What a download of `url` must be: the registry's pin, else the first
    good download's record, else anything (recorded once it converts)."""
    pin = spec.checksums.get(url)
    if pin:
        return {**pin, "source": f"the size and sha256 pinned for preset {spec.name!r}"}
    return cache.known_pin(url)


def install(spec, progress=True):
    """Downloads, converts and caches a named preset; returns its folder.

    Holds the preset folder's lock throughout (a second process waits, then
    loads the result). Each download is checked against its pin (or the
    first good download's record) and read through a private link, so other
    converters may remove the shared file meanwhile. After a successful
    conversion the downloads' sizes and sha256 are recorded (`cache.record_pin`,
    and `source_files` in the preset's uvim_preset.json) and the raw files
    removed (unless UVIM_KERAS_KEEP_DOWNLOADS=1); a file that does not
    convert is removed and recorded nowhere."""
    path = _cached(spec.name)
    if path:
        return path
    final = cache.preset_cache_path(spec.name)
    try:
        with cache.lock(final, "converting"):
            return _install_locked(spec, final, progress)
    except CacheReadOnly as e:
        raise PresetError(
            f"preset {spec.name!r} is not in the cache and the cache {cache.cache_root()} cannot "
            "be written: set UVIM_KERAS_CACHE to a writable folder (or install it there once)."
        ) from e


def _install_locked(spec, final, progress):
    from uvim_keras.presets import conversion

    path = _cached(spec.name)  # converted by another process while we waited
    if path:
        return path
    cache.repair(final)
    stage1_preset = None
    if spec.kind == "uvim":
        sibling = registry.stage1_sibling(spec)
        if sibling is not None:
            stage1_preset = _cached(sibling.name)
    urls = spec.urls if stage1_preset is None else [spec.stage2_url]
    inputs = cache.new_inputs_dir(final)  # our links to the downloads (a leftover if we die)
    try:
        fetched = {}
        for url in urls:
            try:
                fetched[url] = cache.fetch(url, expected=_expected(spec, url), progress=progress,
                                           borrow_into=inputs)
            except DownloadError as e:
                raise DownloadError(
                    f"could not download preset {spec.name!r}: {e} To install it without this "
                    f"download, {_manual_steps(spec)}."
                ) from e
        stage1_file = fetched[spec.stage1_url].path if spec.stage1_url in fetched else None
        stage2_file = fetched[spec.stage2_url].path if spec.stage2_url in fetched else None
        info = spec.card_info()
        info["source_files"] = [{"url": url, "size": f.size, "sha256": f.sha256}
                                for url, f in fetched.items()]
        try:
            conversion.convert_to_preset(
                final, spec.task, stage1_file, spec.stage1_config,
                stage2_path=stage2_file, lm_config=spec.lm_config, task_config=spec.task_config,
                temperature=spec.temperature, info=info, stage1_preset=stage1_preset,
                overwrite="keep",
            )
        except conversion.convert.ConversionError as e:
            # A file that does not convert must not be trusted by the next try.
            for url, f in fetched.items():
                cache.discard_download(url, f.dest)
            raise type(e)(
                f"preset {spec.name!r}: the downloaded checkpoint does not match the preset's "
                f"{spec.task} configs (removed from the cache; the next use downloads it "
                f"again): {e}"
            ) from e
        for url, f in fetched.items():
            cache.record_pin(url, f.size, f.sha256)
            # Other converters read their own links; without links, the file stays.
            if f.private and not cache.keep_downloads():
                cache.discard_download(url, f.dest)
    finally:
        shutil.rmtree(inputs, ignore_errors=True)
    path = _cached(spec.name)
    if path is None:
        raise PresetError(f"preset {spec.name!r}: the conversion left no preset at {final}.")
    return path


# -- loading ----------------------------------------------------------------------
def _import_hub():
    try:
        from uvim_keras.presets import hub
    except ImportError as e:
        raise ImportError(
            "UViM presets need keras-hub (and huggingface-hub for hf:// handles): "
            "pip install 'uvim-keras[hub]'."
        ) from e
    return hub


def load_uvim(preset, load_weights=True, dtype=None, progress=True):
    """`UViM.from_preset`."""
    from uvim_keras.models.uvim import UViM

    handle, spec = resolve(preset, "uvim", load_weights, progress)
    if handle is None:  # named preset, no weights wanted
        from uvim_keras.presets.conversion import build_models

        stage1, lm = build_models(spec.stage1_config, spec.lm_config, spec.task_config)
        return UViM.from_stage1(lm, stage1, spec.temperature)
    hub = _import_hub()
    if not _has_task_json(handle):
        raise PresetError(
            f"{preset} is a stage-I preset (no task.json with a stage-II LM); "
            "load it with UViMStage1.from_preset."
        )
    task = hub.UViMStage2Task.from_preset(handle, load_weights=load_weights, dtype=dtype)
    return task.to_uvim()


def load_stage1(preset, load_weights=True, dtype=None, progress=True):
    """`UViMStage1.from_preset`."""
    handle, spec = resolve(preset, "stage1", load_weights, progress)
    if handle is None:
        from uvim_keras.presets.conversion import build_models

        return build_models(spec.stage1_config, None, spec.task_config)[0]
    hub = _import_hub()
    backbone = hub.UViMStage1Backbone.from_preset(handle, load_weights=load_weights, dtype=dtype)
    return backbone.stage1


def preset_info(handle):
    """The `uvim_preset.json` of a local preset folder ({} if none)."""
    return layout.read_info(handle) or {}


# -- saving -----------------------------------------------------------------------
#: The model card fields `save_to_preset` and `update_model_card` take.
CARD_FIELDS = ("description", "metrics", "dataset", "name", "metrics_note", "license",
               "dataset_ids", "base_model")


def _with_card(info, card):
    unknown = set(card) - set(CARD_FIELDS)
    if unknown:
        raise TypeError(f"unexpected model card fields: {sorted(unknown)}.")
    info = dict(info or {})
    info.update({k: v for k, v in card.items() if v is not None})
    return info


def _card_info(model, kind, info, card):
    from uvim_keras.presets.conversion import task_name

    info = _with_card(info, card)
    info.setdefault("task", task_name(model.task))
    info["kind"] = kind
    info[layout.LAYOUT_KEY] = layout.WEIGHTS_LAYOUT
    info.setdefault("metrics", {})
    if kind == "uvim":
        info["temperature"] = model.default_temperature
    return info


def _finish(preset_dir, info, model_config):
    from uvim_keras.presets.model_card import write_model_card

    info.setdefault("name", os.path.basename(os.path.normpath(os.fspath(preset_dir))))
    info.pop(layout.FILES_KEY, None)
    write_model_card(preset_dir, info, model_config)
    # The marker, last: with the integrity record of the files just written.
    layout.write_info(preset_dir, info)
    return preset_dir


def _without_optimizer(model):
    """`model`, or an uncompiled copy of it when it holds optimizer state:
    presets carry weights only (Keras would also write the optimizer's)."""
    if getattr(model, "optimizer", None) is None:
        return model
    copy = type(model).from_config(model.get_config())
    copy.set_weights(model.get_weights())
    return copy


def save_stage1(stage1, preset_dir, max_shard_size=10, info=None, **card):
    """`UViMStage1.save_to_preset`."""
    hub = _import_hub()
    info = _card_info(stage1, "stage1", info, card)
    hub.UViMStage1Backbone.from_stage1(_without_optimizer(stage1)).save_to_preset(
        os.fspath(preset_dir), max_shard_size=max_shard_size
    )
    _name_tasks(preset_dir, [])  # a stage-I preset loads as no keras-hub task
    return _finish(preset_dir, info, {"stage1": hub.stage1_arch_config(stage1)})


def save_uvim(uvim, preset_dir, max_shard_size=10, info=None, **card):
    """`UViM.save_to_preset`."""
    if uvim.stage1 is None:
        raise PresetError(
            "this UViM was built from a base model and quantizer only; a preset holds the whole "
            "stage-I model (oracle included). Build it with UViM.from_stage1(lm, stage1)."
        )
    hub = _import_hub()
    info = _card_info(uvim, "uvim", info, card)
    plain = type(uvim).from_stage1(_without_optimizer(uvim.lm), _without_optimizer(uvim.stage1),
                                   temperature=uvim.temperature)
    task = hub.task_class(info["task"]).from_uvim(plain)
    task.save_to_preset(os.fspath(preset_dir), max_shard_size=max_shard_size)
    _name_tasks(preset_dir, [] if type(task) is hub.UViMStage2Task
                else [type(task).__base__.__name__])
    config = {"stage1": hub.stage1_arch_config(uvim.stage1), "lm": _lm_config(uvim.lm)}
    return _finish(preset_dir, info, config)


def update_model_card(preset_dir, **card):
    """Updates model-card fields (`metrics`, `description`, `dataset`, ...)
    of a local preset folder saved by `save_to_preset`: its `uvim_preset.json`
    and `README.md` are rewritten, its configs and weights are not touched
    (their integrity record is checked first and kept).

    Example:
    >>> update_model_card("weights/shapes_panoptic", metrics={"PQ": 55.366})
    """
    info = layout.read_info(preset_dir)
    if not info or info.get("kind") not in ("uvim", "stage1"):
        raise PresetError(f"preset_dir={os.fspath(preset_dir)!r} is not a saved UViM or stage-I "
                          "preset folder (no uvim_preset.json of either kind).")
    layout.verify_integrity(preset_dir, info=info)
    if info["kind"] == "uvim":
        uvim = load_uvim(os.fspath(preset_dir), load_weights=False)
        config = {"stage1": _import_hub().stage1_arch_config(uvim.stage1),
                  "lm": _lm_config(uvim.lm)}
    else:
        config = {"stage1": _import_hub().stage1_arch_config(
            load_stage1(os.fspath(preset_dir), load_weights=False))}
    return _finish(preset_dir, _with_card(info, card), config)


def _name_tasks(preset_dir, tasks):
    """keras-hub's `metadata.json` lists every task class whose backbone is
    the preset's; a UViM preset is one of them (e.g. ["ImageSegmenter"]: the
    Hugging Face snippet `keras_hub.models.ImageSegmenter.from_preset`)."""
    import json

    path = os.path.join(os.fspath(preset_dir), "metadata.json")
    with open(path, encoding="utf-8") as f:
        metadata = json.load(f)
    metadata["tasks"] = list(tasks)
    layout.write_json_atomic(path, metadata, indent=4)


def _lm_config(lm):
    return {k: v for k, v in lm.get_config().items() if k not in ("name", "trainable", "dtype")}
