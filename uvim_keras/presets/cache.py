"""The local cache of downloaded checkpoints and converted presets.

Layout (under the Keras cache, `$KERAS_HOME` or `~/.keras`, like keras-hub's
own `models/` folder; `$UVIM_KERAS_CACHE` overrides the whole root):

    <root>/downloads/<url hash>-<file>.npz            raw big_vision files
    <root>/downloads/<url hash>-<file>.npz.pin.json   size + sha256 of the first good download
    <root>/presets/<preset name>/                     converted presets
    <root>/locks/                                     lock files (`filelock`)

Nothing incomplete is ever found at those paths: downloads go to a temporary
`*.part` file in the same folder that is fsynced and renamed into place only
after every byte (per Content-Length) arrived, the file reads as a zip
archive and its size and sha256 match the registry's pin or the first good
download's (`*.pin.json`); converted presets are written into a temporary
folder (`presets/.tmp-<name>~*`) that is fsynced and renamed into place last.

Every write to the cache holds a lock (`lock(path)`): the download of a URL
its file's lock, the conversion, repair and upgrade of a preset its folder's
lock. So a second process waits for the first and then uses its result, and
whoever holds a lock may remove any leftover of a killed run of the same
step at once (`*.part`, `.tmp-<name>~*`, `<name>.upgrade-tmp/-old`): no
process can be writing them. A converter works on its own hard link of
each download (`borrow`), so a download removed by another converter that
finished first stays readable until this one is done. A cache that cannot be
written (read-only mount or permissions) still loads every preset that is
up to date; `api` makes an upgraded temporary copy of an outdated one.
"""

import collections
import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
import urllib.error
import urllib.request
import zipfile

from uvim_keras.presets import layout
from uvim_keras.presets.layout import (
    PRESET_MARKER,
    UPGRADE_OLD,
    UPGRADE_STAGING,
    PresetError,
    fsync_dir,
    fsync_tree,
    write_json_atomic,
)

USER_AGENT = "uvim-keras"
_STALE_SECONDS = 24 * 3600
#: a preset name: one path component, no leading dot (names the cache folder)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}\Z")
_TMP_PREFIX = ".tmp-"  # .tmp-<folder name>~<random>: staging of a conversion
_INPUTS_PREFIX = ".inputs-"  # .inputs-<preset name>~<random>: an installer's download links
#: what a preset folder may hold for `--overwrite` to replace it
PRESET_FILES = ("config.json", "task.json", "preprocessor.json", "metadata.json", "README.md",
                PRESET_MARKER, "tokenizer.json")
_PRESET_FILE = re.compile(r"(.+\.weights\.(h5|json)|\.uvim_preset\.json\..+\.tmp)\Z")


class DownloadError(OSError):
    """A checkpoint could not be downloaded (network, HTTP error, cut off,
    size or sha256 not the expected ones)."""


class CacheReadOnly(PresetError):
    """The cache cannot be written (read-only mount, permissions)."""


def keras_home():
    """Keras's cache folder: `$KERAS_HOME`, else `~/.keras` (`/tmp/.keras`
    when that is not writable), as keras and keras-hub choose it."""
    if "KERAS_HOME" in os.environ:
        return os.environ["KERAS_HOME"]
    base = os.path.expanduser(os.path.join("~", ".keras"))
    if os.path.isdir(base) and not os.access(base, os.W_OK):
        base = os.path.join(tempfile.gettempdir(), ".keras")
    return base


def cache_root():
    return os.environ.get("UVIM_KERAS_CACHE") or os.path.join(keras_home(), "uvim_keras")


def downloads_dir():
    return os.path.join(cache_root(), "downloads")


def presets_dir():
    return os.path.join(cache_root(), "presets")


def locks_dir():
    return os.path.join(cache_root(), "locks")


def check_preset_name(name):
    """Raises PresetError unless `name` can name a cache folder (one path
    component of letters, digits, `_`, `.`, `-`, not starting with a dot)."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise PresetError(
            f"{name!r} is not a preset name (letters, digits, '_', '.', '-'; no path "
            "separators, no leading dot): named presets live in one folder of the cache "
            f"({presets_dir()})."
        )
    return name


def preset_cache_path(name):
    """Where the named preset `name` lives once converted."""
    return os.path.join(presets_dir(), check_preset_name(name))


def in_cache(path):
    """Whether `path` is a preset folder of the cache: a direct entry of
    `presets_dir()` (its real parent, not through a symlink) with a preset name."""
    path = os.path.abspath(os.fspath(path))
    name = os.path.basename(path)
    if not NAME_PATTERN.match(name) or os.path.islink(path):
        return False
    return os.path.realpath(os.path.dirname(path)) == os.path.realpath(presets_dir())


def is_complete(path):
    """A published preset folder: its marker and config.json are there."""
    return os.path.isfile(os.path.join(path, PRESET_MARKER)) and os.path.isfile(
        os.path.join(path, "config.json"))


def cached_preset(name):
    """The converted preset folder of `name` if it is complete, else None
    (as it is on disk: loading goes through `api._cached`, which repairs,
    upgrades and verifies)."""
    path = preset_cache_path(name)
    return path if is_complete(path) else None


def download_path(url):
    digest = hashlib.sha1(url.encode()).hexdigest()[:10]
    return os.path.join(downloads_dir(), f"{digest}-{os.path.basename(url) or 'file'}")


# -- locks ------------------------------------------------------------------------
_LOCKS = {}  # lock file -> FileLock: one object per file, so a thread re-enters its own lock


def lock_file(path):
    """The lock file guarding `path` (a download or a preset folder)."""
    real = os.path.realpath(os.path.abspath(os.fspath(path)))
    digest = hashlib.sha1(real.encode()).hexdigest()[:12]
    return os.path.join(locks_dir(), f"{os.path.basename(real)[:80]}-{digest}.lock")


def writable():
    """Whether the cache can be written (creating it if needed)."""
    root = cache_root()
    try:
        os.makedirs(locks_dir(), exist_ok=True)
    except OSError:
        return False
    return os.access(root, os.W_OK) and os.access(locks_dir(), os.W_OK)


@contextlib.contextmanager
def lock(path, what=None):
    """Holds the cache lock of `path` (blocking; a line on stderr when it
    waits for another process). Re-entrant within a thread. Raises
    `CacheReadOnly` when the cache cannot be written."""
    import filelock

    if not writable():
        raise CacheReadOnly(f"the uvim-keras cache {cache_root()} cannot be written.")
    file = lock_file(path)
    held = _LOCKS.get(file)
    if held is None:
        held = _LOCKS[file] = filelock.FileLock(file)
    try:
        try:
            held.acquire(timeout=2)
        except filelock.Timeout:
            print(f"uvim-keras: waiting for another process {what or 'using'} "
                  f"{os.fspath(path)} (lock {file})", file=sys.stderr, flush=True)
            held.acquire()
    except OSError as e:
        raise CacheReadOnly(f"the uvim-keras cache {cache_root()} cannot be written "
                            f"({e.strerror or e}).") from e
    try:
        yield file
    finally:
        held.release()


@contextlib.contextmanager
def lock_if_cached(path, what=None):
    """`lock(path)` for a folder of the named-preset cache; nothing for other
    folders (yours) or when the cache cannot be written."""
    if in_cache(path):
        try:
            with lock(path, what):
                yield True
            return
        except CacheReadOnly:
            pass
    yield False


def upgrade_weights_layout(preset_dir):
    """Rewrites a preset folder saved by an older uvim-keras in the current
    layout; returns the number of arrays moved or transposed (0 when the
    folder is already current).

    The upgrade is made in a copy of the folder (`<folder>.upgrade-tmp`,
    fsynced, its record written last) that replaces the original only when
    complete (two renames); a run killed at any point is completed or rolled
    back by the next call (`repair_interrupted_upgrade`). A folder recorded
    with an integrity record is checked before it is rewritten; the
    upgraded folder gets a fresh record. In the named-preset cache the
    upgrade holds the folder's lock (another process waits, then finds it
    done); for your own folders, run it from one process at a time.
    """
    preset_dir = os.path.normpath(os.fspath(preset_dir))
    with lock_if_cached(preset_dir):
        return layout.upgrade_in_place(preset_dir)



# -- leftovers ----------------------------------------------------------------------
def _remove(path):
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    except FileNotFoundError:
        pass


def _remove_stale(folder, prefix):
    """Removes leftovers of killed runs older than a day (for folders outside
    the cache, where no lock tells whether a run is still in progress)."""
    try:
        entries = os.listdir(folder)
    except OSError:
        return
    now = time.time()
    for entry in entries:
        if not entry.startswith(prefix):
            continue
        path = os.path.join(folder, entry)
        try:
            if now - os.path.getmtime(path) > _STALE_SECONDS:
                _remove(path)
        except OSError:
            pass


def _tmp_prefix(final_dir):
    return f"{_TMP_PREFIX}{os.path.basename(os.path.normpath(final_dir))}~"


def leftovers(final_dir, inputs=True):
    """Leftovers of killed runs for a cache folder: staging folders of
    conversions, of upgrades, half-written records inside it and (with
    `inputs`) an installer's folder of links to its downloads."""
    final_dir = os.path.normpath(final_dir)
    parent, prefix = os.path.dirname(final_dir), _tmp_prefix(final_dir)
    prefixes = (prefix, _INPUTS_PREFIX + prefix[len(_TMP_PREFIX):]) if inputs else (prefix,)
    try:
        entries = os.listdir(parent)
    except OSError:
        entries = []
    found = [os.path.join(parent, e) for e in entries if e.startswith(prefixes)]
    found += [final_dir + s for s in (UPGRADE_STAGING, UPGRADE_OLD) if os.path.lexists(final_dir + s)]
    try:
        found += [os.path.join(final_dir, e) for e in os.listdir(final_dir)
                  if e.startswith(f".{PRESET_MARKER}.") and e.endswith(".tmp")]
    except OSError:
        pass
    return found


def repair(final_dir, inputs=True):
    """Under the folder's lock: finishes or rolls back a killed upgrade and
    removes every other leftover (nothing else can be writing them; a
    conversion inside `install.install` passes inputs=False to keep the
    installer's links); removes a folder without a marker at a cache path
    (never published); returns a list of what it did."""
    done = []
    what = layout.repair_interrupted_upgrade(final_dir)
    if what:
        done.append(what)
    for path in leftovers(final_dir, inputs):
        if os.path.basename(path).startswith(_INPUTS_PREFIX) and is_complete(final_dir):
            _discard_borrowed(path)  # an installer killed after publishing: done with them
        _remove(path)
        done.append(f"removed {os.path.basename(path)}")
    if os.path.lexists(final_dir) and not is_complete(final_dir) and in_cache(final_dir):
        _remove(final_dir)
        done.append(f"removed the incomplete {os.path.basename(final_dir)}")
    return done


def keep_downloads():
    return os.environ.get("UVIM_KERAS_KEEP_DOWNLOADS", "") not in ("", "0")


def _discard_borrowed(inputs_dir):
    """Removes the downloads an installer's links point to (their conversion
    is published). Safe for other converters: they read their own links."""
    if keep_downloads():
        return
    try:
        entries = os.listdir(inputs_dir)
    except OSError:
        return
    for entry in entries:
        shared = os.path.join(downloads_dir(), entry)
        try:
            if os.path.samefile(shared, os.path.join(inputs_dir, entry)):
                discard_download(None, shared)
        except OSError:
            pass


# -- downloads ----------------------------------------------------------------------
def pin_path(url):
    return download_path(url) + ".pin.json"


def known_pin(url):
    """{"size", "sha256", "source"} recorded for the first good download of
    `url` (`record_pin`), or None."""
    try:
        with open(pin_path(url), encoding="utf-8") as f:
            pin = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(pin, dict) or pin.get("url") != url:
        return None
    return {"size": pin.get("size"), "sha256": pin.get("sha256"),
            "source": f"the first download's record ({pin_path(url)}; delete it if the file "
                      "really changed upstream)"}


def record_pin(url, size, sha256):
    """Records a good download's size and sha256 (first one wins): a later
    download of the same URL must match it."""
    if known_pin(url) is not None:
        return
    os.makedirs(downloads_dir(), exist_ok=True)
    write_json_atomic(pin_path(url), {"url": url, "size": size, "sha256": sha256,
                                      "recorded": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2)


def _file_digest(path):
    sha, size = layout.file_sha256(path)
    return size, sha


def _mismatch(url, expected, size, sha):
    want_size, want_sha = expected.get("size"), expected.get("sha256")
    if want_size is not None and size != want_size:
        return f"{size} bytes, expected {want_size}"
    if want_sha and sha != want_sha.lower():
        return f"sha256 {sha}, expected {want_sha.lower()}"
    return None


#: what `fetch` returns: the file to read (a private link when `borrow_into`),
#: its size and sha256, the download's own path, whether `path` is a private link
Fetched = collections.namedtuple("Fetched", "path size sha256 dest private")


def fetch(url, dest=None, expected=None, progress=True, timeout=60, chunk_size=1 << 20,
          borrow_into=None):
    """Downloads `url` to `dest` (default: the cache) unless a good copy is
    there; returns a `Fetched` (path, size, sha256, dest, private).

    `expected`: {"size", "sha256", "source"} the file must match (either may
    be None); a file already at `dest` that does not match is downloaded
    again. The bytes go to a `*.part` file in the destination folder, which
    is fsynced and renamed to `dest` only when the transfer is complete
    (Content-Length reached, or the server closed normally without one), the
    file is a readable zip archive (`.npz`) and it matches `expected`.
    Raises `DownloadError` naming the URL otherwise; nothing is left at
    `dest`. A download into the cache holds its lock (when the cache can be
    written); with
    `borrow_into` (a converter's staging folder) a private hard link to the
    file is made there before the lock is released (`borrow`), and `path`
    is that link.
    """
    dest = dest or download_path(url)
    expected = expected or {}
    folder = os.path.dirname(dest) or "."
    os.makedirs(folder, exist_ok=True)
    with contextlib.ExitStack() as stack:
        locked = False
        if os.path.realpath(folder) == os.path.realpath(downloads_dir()):
            try:  # (a file elsewhere is yours: no lock in the cache for it)
                stack.enter_context(lock(dest, "downloading"))
                locked = True
            except CacheReadOnly:
                pass
        dest, size, sha = _fetch_locked(url, dest, expected, locked, progress, timeout,
                                        chunk_size)
        path, private = borrow(dest, borrow_into) if borrow_into else (dest, False)
        return Fetched(path, size, sha, dest, private)


def _fetch_locked(url, dest, expected, locked, progress, timeout, chunk_size):
    folder = os.path.dirname(dest) or "."
    if os.path.isfile(dest):
        size, sha = _file_digest(dest)
        if _mismatch(url, expected, size, sha) is None:
            return dest, size, sha
        _remove(dest)  # a kept download that is not the expected file
    base = os.path.basename(dest)
    if locked:  # we hold the lock: every .part of this file is a leftover
        for entry in os.listdir(folder):
            if entry.startswith(base + ".") and entry.endswith(".part"):
                _remove(os.path.join(folder, entry))
    else:
        _remove_stale(folder, base + ".")
    fd, tmp = tempfile.mkstemp(prefix=base + ".", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            size, sha = _fetch(url, out, progress, timeout, chunk_size, expected.get("size"))
            out.flush()
            os.fsync(out.fileno())
        if dest.endswith(".npz") and not zipfile.is_zipfile(tmp):
            raise DownloadError(
                f"{url} did not give a complete .npz file (no zip directory at its end: "
                "the transfer was probably cut off)."
            )
        wrong = _mismatch(url, expected, size, sha)
        if wrong:
            raise DownloadError(
                f"{url}: the downloaded file does not match "
                f"{expected.get('source') or 'its expected size and sha256'}: {wrong}. "
                "It changed on the server or was damaged on the way; nothing was kept."
            )
        os.replace(tmp, dest)
        fsync_dir(folder)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    return dest, size, sha


def download(url, dest=None, progress=True, timeout=60, chunk_size=1 << 20, expected=None):
    """`fetch` returning only the path."""
    return fetch(url, dest, expected, progress, timeout, chunk_size).path


def discard_download(url, dest=None):
    """Removes a download from the cache (holding its lock). Converters that
    borrowed it keep reading their own links."""
    dest = dest or download_path(url)
    try:
        with lock(dest, "removing"):
            _remove(dest)
    except (CacheReadOnly, OSError):
        pass


def _fetch(url, out, progress, timeout, chunk_size, expected_size=None):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}.") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"{url}: {reason}.") from e
    digest = hashlib.sha256()
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        if total is not None and expected_size is not None and total != expected_size:
            raise DownloadError(f"{url}: the server announces {total} bytes, the pinned size is "
                                f"{expected_size}: not the expected file; nothing was kept.")
        bar = _progress_bar(total, os.path.basename(url), progress)
        done = 0
        try:
            while True:
                try:
                    block = response.read(chunk_size)
                except Exception as e:  # http.client.IncompleteRead, resets, timeouts
                    raise DownloadError(
                        f"{url}: the transfer broke off after {done} bytes"
                        + (f" of {total}" if total else "") + f" ({type(e).__name__})."
                    ) from e
                if not block:
                    break
                out.write(block)
                digest.update(block)
                done += len(block)
                if bar is not None:
                    bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and done != total:
        raise DownloadError(f"{url}: the transfer broke off after {done} of {total} bytes.")
    return done, digest.hexdigest()


def _progress_bar(total, label, progress):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"downloading {label}", leave=False)


def borrow(path, folder):
    """A private hard link to the download `path` inside `folder` (a
    converter's staging folder), so that the download stays readable for
    this converter when another one removes it; `path` itself where links
    are not supported (then the caller must not remove `path`). Returns
    (path to read, whether it is a private link)."""
    link = os.path.join(folder, os.path.basename(path))
    try:
        os.link(path, link)
    except OSError:
        return path, False
    return link, True


# -- preset folders ------------------------------------------------------------------
def publish_dir(tmp_dir, final_dir):
    """Moves a completely written folder into place (fsynced, atomic rename).
    If a complete preset appeared at `final_dir` meanwhile (another process),
    keeps that one. An incomplete folder at `final_dir` is replaced only in
    the cache (never published, so ours); elsewhere it is an error."""
    fsync_tree(tmp_dir)
    parent = os.path.dirname(os.path.abspath(final_dir))
    if os.path.lexists(final_dir) and not is_complete(final_dir):
        if not in_cache(final_dir):
            raise PresetError(
                f"{final_dir} exists and is not a uvim-keras preset (no {PRESET_MARKER}); "
                "it is not replaced. Remove it yourself or write the preset elsewhere."
            )
        _remove(final_dir)  # an untrusted leftover of a killed run in our cache
    try:
        os.replace(tmp_dir, final_dir)
    except OSError:
        if is_complete(final_dir):
            shutil.rmtree(tmp_dir, ignore_errors=True)
        else:
            raise
    fsync_dir(parent)
    return final_dir


def replace_dir(tmp_dir, final_dir):
    """Replaces the preset folder `final_dir` (checked with
    `check_replaceable`) by the complete folder `tmp_dir`: the old one is
    renamed aside, the new one renamed into place, then the old one removed."""
    fsync_tree(tmp_dir)
    parent = os.path.dirname(os.path.abspath(final_dir))
    aside = None
    if os.path.lexists(final_dir):
        aside = tempfile.mkdtemp(prefix=_tmp_prefix(final_dir) + "old-", dir=parent)
        os.rmdir(aside)
        os.rename(final_dir, aside)
        fsync_dir(parent)
    os.replace(tmp_dir, final_dir)
    fsync_dir(parent)
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)
    return final_dir


def check_replaceable(path):
    """Raises PresetError unless the existing `path` may be deleted to write
    a preset there: a folder of the cache, or a uvim-keras preset folder
    (`uvim_preset.json`) holding nothing but preset files. Never a symlink
    or a file."""
    path = os.fspath(path)
    if os.path.islink(path):
        raise PresetError(f"{path} is a symbolic link; it is not replaced (give its target, or "
                          "another folder).")
    if not os.path.isdir(path):
        raise PresetError(f"{path} exists and is not a folder; it is not replaced.")
    if in_cache(path):
        return
    if not os.path.isfile(os.path.join(path, PRESET_MARKER)):
        raise PresetError(
            f"{path} is not a uvim-keras preset folder (no {PRESET_MARKER}): --overwrite / "
            "overwrite=True only replaces presets. Remove it yourself or choose another folder."
        )
    foreign = sorted(e for e in os.listdir(path)
                     if e not in PRESET_FILES and not _PRESET_FILE.match(e))
    if foreign:
        raise PresetError(
            f"{path} is a preset folder but also holds {', '.join(foreign)}, which are not "
            "preset files; it is not replaced. Move them out or choose another folder."
        )


def new_tmp_dir(final_dir):
    """A new staging folder next to `final_dir` (`.tmp-<name>~*`)."""
    parent = os.path.dirname(os.path.abspath(final_dir))
    os.makedirs(parent, exist_ok=True)
    prefix = _tmp_prefix(final_dir)
    if not in_cache(final_dir):  # the cache's are removed under its lock (`repair`)
        _remove_stale(parent, prefix)
    return tempfile.mkdtemp(prefix=prefix, dir=parent)


def new_inputs_dir(final_dir):
    """A new folder for an installer's links to its downloads, next to the
    cache folder `final_dir` (`.inputs-<name>~*`; under its lock)."""
    parent = os.path.dirname(os.path.abspath(final_dir))
    os.makedirs(parent, exist_ok=True)
    name = os.path.basename(os.path.normpath(final_dir))
    return tempfile.mkdtemp(prefix=f"{_INPUTS_PREFIX}{name}~", dir=parent)


def remove_preset(name):
    """Deletes a converted named preset from the cache (True if there was
    one). `name` is a preset name, never a path: the folder must be a preset
    folder (its `uvim_preset.json`) directly inside the cache, not a symlink.
    Holds the folder's lock; the folder is renamed aside, then removed, so
    no reader sees half of it."""
    path = preset_cache_path(name)
    if os.path.islink(path):
        raise PresetError(f"{path} is a symbolic link, not a cached preset; it is not removed.")
    if not os.path.lexists(path):
        return False
    if not in_cache(path):
        raise PresetError(f"{path} is not inside the preset cache {presets_dir()}; not removed.")
    if not os.path.isfile(os.path.join(path, PRESET_MARKER)):
        raise PresetError(f"{path} is not a uvim-keras preset folder (no {PRESET_MARKER}); "
                          "not removed.")
    with lock(path, "removing"):
        if not os.path.isdir(path):
            return False
        aside = tempfile.mkdtemp(prefix=_tmp_prefix(path) + "removed-", dir=presets_dir())
        os.rmdir(aside)
        os.rename(path, aside)
        fsync_dir(presets_dir())
        shutil.rmtree(aside, ignore_errors=True)
    return True
