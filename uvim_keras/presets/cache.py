"""The local cache of downloaded checkpoints and converted presets.

Layout (under the Keras cache, `$KERAS_HOME` or `~/.keras`, like keras-hub's
own `models/` folder; `$UVIM_KERAS_CACHE` overrides the whole root):

    <keras home>/uvim_keras/downloads/<url hash>-<file>.npz   raw big_vision files
    <keras home>/uvim_keras/presets/<preset name>/            converted presets

Nothing incomplete is ever found at those paths: downloads go to a temporary
file in the same folder that is renamed into place only after every byte
(per Content-Length) arrived and the file reads as a zip archive; converted
presets are written into a temporary folder that is renamed into place last.
A killed process leaves at most `*.part` / `.tmp-*` entries, which nothing
trusts (and which the next run of the same download/conversion removes).
"""

import hashlib
import os
import shutil
import tempfile
import time
import urllib.error
import urllib.request
import zipfile

from uvim_keras.presets.layout import PRESET_MARKER

USER_AGENT = "uvim-keras"
_STALE_SECONDS = 24 * 3600


class DownloadError(OSError):
    """A checkpoint could not be downloaded (network, HTTP error, cut off)."""


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


def preset_cache_path(name):
    """Where the named preset `name` lives once converted."""
    return os.path.join(presets_dir(), name)


def cached_preset(name):
    """The converted preset folder of `name` if it is complete, else None
    (as it is on disk: loading goes through `api._cached`, which upgrades
    an older weights layout)."""
    path = preset_cache_path(name)
    if os.path.isfile(os.path.join(path, PRESET_MARKER)) and os.path.isfile(
        os.path.join(path, "config.json")
    ):
        return path
    return None


def download_path(url):
    digest = hashlib.sha1(url.encode()).hexdigest()[:10]
    return os.path.join(downloads_dir(), f"{digest}-{os.path.basename(url) or 'file'}")


def _remove_stale(folder, prefix):
    """Removes leftovers of killed runs (older than a day, so that a run in
    progress in another process is never touched)."""
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
                shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        except OSError:
            pass


def download(url, dest=None, progress=True, timeout=60, chunk_size=1 << 20):
    """Downloads `url` to `dest` (default: the cache) unless already there.

    Shows a progress bar (tqdm) when `progress`. The bytes go to a temporary
    `*.part` file in the destination folder, which is renamed to `dest` only
    when the transfer is complete (Content-Length reached, or the server
    closed normally without one) and the file is a readable zip archive
    (`.npz`). Raises `DownloadError` naming the URL otherwise; nothing is
    left at `dest`.
    """
    dest = dest or download_path(url)
    if os.path.isfile(dest):
        return dest
    folder = os.path.dirname(dest) or "."
    os.makedirs(folder, exist_ok=True)
    base = os.path.basename(dest)
    _remove_stale(folder, base + ".")
    fd, tmp = tempfile.mkstemp(prefix=base + ".", suffix=".part", dir=folder)
    try:
        with os.fdopen(fd, "wb") as out:
            _fetch(url, out, progress, timeout, chunk_size)
            out.flush()
            os.fsync(out.fileno())
        if dest.endswith(".npz") and not zipfile.is_zipfile(tmp):
            raise DownloadError(
                f"{url} did not give a complete .npz file (no zip directory at its end: "
                "the transfer was probably cut off)."
            )
        os.replace(tmp, dest)
    except BaseException:
        try:
            os.remove(tmp)
        except OSError:
            pass
        raise
    return dest


def _fetch(url, out, progress, timeout, chunk_size):
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        raise DownloadError(f"{url}: HTTP {e.code} {e.reason}.") from e
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise DownloadError(f"{url}: {reason}.") from e
    with response:
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
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
                done += len(block)
                if bar is not None:
                    bar.update(len(block))
        finally:
            if bar is not None:
                bar.close()
    if total is not None and done != total:
        raise DownloadError(f"{url}: the transfer broke off after {done} of {total} bytes.")


def _progress_bar(total, label, progress):
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return None
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024,
                desc=f"downloading {label}", leave=False)


def publish_dir(tmp_dir, final_dir):
    """Moves a completely written folder into place (atomic rename). If
    `final_dir` appeared meanwhile (another process), keeps that one."""
    if os.path.isdir(final_dir) and not os.path.isfile(os.path.join(final_dir, PRESET_MARKER)):
        shutil.rmtree(final_dir, ignore_errors=True)  # untrusted leftover
    try:
        os.replace(tmp_dir, final_dir)
    except OSError:
        if os.path.isfile(os.path.join(final_dir, PRESET_MARKER)):
            shutil.rmtree(tmp_dir, ignore_errors=True)
        else:
            raise
    return final_dir


def new_tmp_dir(final_dir):
    parent = os.path.dirname(final_dir)
    os.makedirs(parent, exist_ok=True)
    prefix = f".tmp-{os.path.basename(final_dir)}-"
    _remove_stale(parent, prefix)
    return tempfile.mkdtemp(prefix=prefix, dir=parent)


def remove_preset(name):
    """Deletes a converted named preset from the cache (True if there was one)."""
    path = preset_cache_path(name)
    if os.path.isdir(path):
        shutil.rmtree(path)
        return True
    return False
