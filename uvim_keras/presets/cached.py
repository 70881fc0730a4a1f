"""The named-preset cache, as the loader sees it: `cached(name)` is the
folder of a converted named preset, ready to load (repaired, upgraded and
checked under the folder's lock when needed), or None.

>>> from uvim_keras.presets.cached import cached
>>> cached("panoptic_coco")  # None until its first use converted it
"""

import atexit
import os
import shutil
import sys

from uvim_keras.presets import cache, layout
from uvim_keras.presets.cache import CacheReadOnly
from uvim_keras.presets.layout import IntegrityError, PresetError

def cached(name):
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
    """`cached` under the folder's lock."""
    cache.repair(path)
    if not cache.is_complete(path):
        return None
    info = layout.read_info(path)
    if layout.is_outdated(path):
        cache.upgrade_weights_layout(path)  # (re-enters our lock) verifies, rewrites, records
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
    """`cached` for a cache that cannot be written."""
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
