"""First use of a named preset: download its big_vision checkpoints into the
cache, convert them (`conversion.convert_to_preset`) and keep the result.

>>> from uvim_keras.presets import registry
>>> from uvim_keras.presets.install import install
>>> install(registry.get_preset("depth_nyu"))  # the cached preset folder
"""

import os
import shutil

from uvim_keras.checkpoints.big_vision import ConversionError
from uvim_keras.presets import cache, conversion, registry
from uvim_keras.presets.cache import CacheReadOnly, DownloadError
from uvim_keras.presets.cached import cached
from uvim_keras.presets.layout import PresetError

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
    path = cached(spec.name)
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
    path = cached(spec.name)  # converted by another process while we waited
    if path:
        return path
    cache.repair(final)
    stage1_preset = None
    if spec.kind == "uvim":
        sibling = registry.stage1_sibling(spec)
        if sibling is not None:
            stage1_preset = cached(sibling.name)
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
        except ConversionError as e:
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
    path = cached(spec.name)
    if path is None:
        raise PresetError(f"preset {spec.name!r}: the conversion left no preset at {final}.")
    return path
