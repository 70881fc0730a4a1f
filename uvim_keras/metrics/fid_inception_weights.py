"""pytorch-fid's FID Inception weights: find or download, read, check, load.

The weights are pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``, a
torch state dict of TF's 2015-12-05 Inception graph. They come from, in
order:

* a path given by the user: the ``.pth`` (reading it needs torch) or an
  ``.npz`` made from it by `convert_pth_to_npz` (no torch needed);
* by default (``"pytorch_fid"``): torch hub's cache, where pytorch-fid keeps
  its download (``$TORCH_HOME/hub/checkpoints/``, ``~/.cache/torch/...``),
  then Keras' cache (``~/.keras/models/``), then a download from
  pytorch-fid's release (`FID_WEIGHTS_URL`) into Keras' cache.

Every array is checked before anything is assigned: each weight of the
network present with its shape, and no key left over (the unused 1008-way
classifier ``fc.*`` and BatchNorm's ``num_batches_tracked`` counters are the
only keys skipped). Conv kernels go from torch's (out, in, kh, kw) to Keras'
(kh, kw, in, out); BatchNorm weight / bias / running mean / running variance
become gamma / beta / moving mean / moving variance.
"""

import os

import keras
import numpy as np

from uvim_keras.metrics import fid_inception
from uvim_keras.metrics.inception_features import InceptionWeightsError

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/"
                   "fid_weights/" + FID_WEIGHTS_FILE)
DEFAULT_WEIGHTS = "pytorch_fid"
UNUSED_KEYS = ("fc.weight", "fc.bias")
UNUSED_SUFFIX = ".num_batches_tracked"


class FIDInceptionWeightsError(InceptionWeightsError):
    """pytorch-fid's FID Inception weights could not be found, read or used."""


def _how_to_provide(reason):
    return (
        f"Could not load the FID Inception weights ({reason}). They are "
        f"pytorch-fid's {FID_WEIGHTS_FILE}: without network access, download "
        f"{FID_WEIGHTS_URL} on a connected machine and either pass its local "
        f"path, e.g. FID(inception_weights='/path/to/{FID_WEIGHTS_FILE}'), "
        f"or copy it to ~/.keras/models/{FID_WEIGHTS_FILE} (or "
        "$KERAS_HOME/models/, or torch hub's "
        "~/.cache/torch/hub/checkpoints/). "
        "Reading a .pth needs torch; without torch, convert it once where "
        "torch is installed with uvim_keras.metrics.convert_pth_to_npz(pth, "
        "npz) and pass the .npz. Alternatively use "
        "FID(features='keras_inception_v3') (Keras' ImageNet Inception-v3, "
        "not comparable with published FIDs) or FID(feature_extractor=...).")


def torch_hub_checkpoint():
    """Where torch hub (and so pytorch-fid) caches the weights file."""
    torch_home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
        "torch")
    return os.path.join(torch_home, "hub", "checkpoints", FID_WEIGHTS_FILE)


def resolve_fid_weights(weights=DEFAULT_WEIGHTS):
    """The local path of the weights: a checked path, or cached / downloaded.

    Example:

    >>> resolve_fid_weights("/no/such/file.pth")
    Traceback (most recent call last):
    ...
    uvim_keras.metrics.fid_inception_weights.FIDInceptionWeightsError: ...

    Args:
        weights: "pytorch_fid" (or None): torch hub's cache, Keras' cache,
            else a download from `FID_WEIGHTS_URL`; or the path of a ``.pth``
            / ``.npz`` file.
    """
    if weights is None or (isinstance(weights, str)
                           and weights == DEFAULT_WEIGHTS):
        cached = torch_hub_checkpoint()
        if os.path.isfile(cached):
            return cached
        try:
            return keras.utils.get_file(FID_WEIGHTS_FILE, FID_WEIGHTS_URL,
                                        cache_subdir="models")
        except Exception as error:  # offline, proxy, truncated download, ...
            raise FIDInceptionWeightsError(_how_to_provide(
                f"download of {FID_WEIGHTS_URL} failed: "
                f"{type(error).__name__}: {error}")) from error
    path = os.fspath(weights)
    if not os.path.isfile(path):
        raise FIDInceptionWeightsError(_how_to_provide(
            f"inception_weights={path!r} is not a file"))
    return path


def _read_pth(path):
    try:
        import torch
    except ImportError as error:
        raise FIDInceptionWeightsError(
            f"Reading {path!r} (a torch state dict) needs torch, which is not "
            "installed: pip install torch, or convert the file once where "
            "torch is installed with uvim_keras.metrics.convert_pth_to_npz("
            f"{path!r}, 'fid_inception.npz') and pass the .npz."
        ) from error
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise FIDInceptionWeightsError(_how_to_provide(
            f"{path!r} could not be read by torch.load: "
            f"{type(error).__name__}: {error}")) from error
    if not isinstance(state, dict):
        raise FIDInceptionWeightsError(
            f"{path!r}: got a {type(state).__name__}; expected a torch state "
            f"dict (name -> tensor) such as pytorch-fid's {FID_WEIGHTS_FILE}")
    return {str(k): v.detach().cpu().numpy() for k, v in state.items()}


def read_state_dict(path):
    """{key: numpy array} of a torch ``.pth`` state dict or an ``.npz``.

    Args:
        path: ``.npz`` (read with numpy), anything else is read with
            ``torch.load(..., weights_only=True)``.
    """
    path = os.fspath(path)
    if path.endswith(".npz"):
        try:
            with np.load(path, allow_pickle=False) as arrays:
                return {key: arrays[key] for key in arrays.files}
        except Exception as error:
            raise FIDInceptionWeightsError(_how_to_provide(
                f"{path!r} could not be read as .npz: "
                f"{type(error).__name__}: {error}")) from error
    return _read_pth(path)


def _is_unused(key):
    return key in UNUSED_KEYS or key.endswith(UNUSED_SUFFIX)


def check_state_dict(state_dict, shapes, source="state dict"):
    """Raises FIDInceptionWeightsError unless `state_dict` fits `shapes`.

    Args:
        state_dict: {torch key: array}; the keys `_is_unused` skips may be
            present or not.
        shapes: {torch key: shape} the network needs
            (`fid_inception.torch_state_dict_shapes`).
        source: what to name in the message (a path).
    """
    present = {k for k in state_dict if not _is_unused(k)}
    missing = sorted(set(shapes) - present)
    unexpected = sorted(present - set(shapes))
    wrong = sorted(k for k in present & set(shapes)
                   if tuple(np.shape(state_dict[k])) != tuple(shapes[k]))
    problems = []
    if missing:
        problems.append(
            f"missing key {missing[0]!r} (expected shape {shapes[missing[0]]}"
            f"; {len(missing)} missing in all: {missing[:5]})")
    if unexpected:
        problems.append(
            f"unexpected key {unexpected[0]!r} ({len(unexpected)} in all: "
            f"{unexpected[:5]}; only {', '.join(UNUSED_KEYS)} and "
            f"*{UNUSED_SUFFIX} are skipped)")
    for key in wrong[:5]:
        problems.append(
            f"key {key!r}: got shape {tuple(np.shape(state_dict[key]))}, "
            f"expected {tuple(shapes[key])}")
    if problems:
        raise FIDInceptionWeightsError(
            f"{source}: not the FID Inception state dict of pytorch-fid's "
            f"{FID_WEIGHTS_FILE}: " + "; ".join(problems))


def assign_state_dict(model, state_dict, source="state dict"):
    """Checks `state_dict` against `model` and sets all its weights.

    Args:
        model: a `fid_inception.fid_inception_v3` model.
        state_dict: {torch key: array} in torch layouts.
        source: what to name in error messages.
    """
    check_state_dict(state_dict, fid_inception.torch_state_dict_shapes(model),
                     source)

    def array(key):
        return np.asarray(state_dict[key], dtype=np.float32)

    for module, layer in fid_inception.torch_modules(model).items():
        if isinstance(layer, keras.layers.Conv2D):
            kernel = array(f"{module}.weight")  # (out, in, kh, kw)
            layer.kernel.assign(kernel.transpose(2, 3, 1, 0))
        else:
            layer.set_weights([array(f"{module}.{field}")
                               for field in fid_inception.BATCHNORM_FIELDS])
    return model


def load_fid_inception(weights=DEFAULT_WEIGHTS, resize_input=True,
                       normalize_input=True):
    """The FID Inception network with pytorch-fid's weights.

    Example:

    >>> model = load_fid_inception()                          # doctest: +SKIP
    >>> model(np.zeros((2, 64, 64, 3), "float32")).shape      # doctest: +SKIP
    (2, 2048)

    Args:
        weights: "pytorch_fid" (cache or download) or the path of
            pytorch-fid's ``.pth`` or of an ``.npz`` from `convert_pth_to_npz`.
        resize_input, normalize_input: as `fid_inception.fid_inception_v3`.
    """
    path = resolve_fid_weights(weights)
    state_dict = read_state_dict(path)
    model = fid_inception.fid_inception_v3(resize_input, normalize_input)
    return assign_state_dict(model, state_dict, source=repr(path))


def convert_pth_to_npz(pth_path, npz_path):
    """Writes pytorch-fid's ``.pth`` as an ``.npz`` that loads without torch.

    The ``.npz`` holds the same keys and torch layouts (float32), without
    the unused ``fc.*`` classifier and ``num_batches_tracked`` counters; it
    is checked against the network first. Needs torch.

    Example:

    >>> convert_pth_to_npz(FID_WEIGHTS_FILE,
    ...                    "fid_inception.npz")        # doctest: +SKIP
    >>> FID(inception_weights="fid_inception.npz")     # doctest: +SKIP

    Args:
        pth_path: pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``.
        npz_path: the file to write.

    Returns:
        `npz_path`.
    """
    pth_path, npz_path = os.fspath(pth_path), os.fspath(npz_path)
    if not npz_path.endswith(".npz"):
        raise ValueError(
            f"npz_path: got {npz_path!r}; expected a name ending in .npz")
    if not os.path.isfile(pth_path):
        raise FIDInceptionWeightsError(_how_to_provide(
            f"pth_path={pth_path!r} is not a file"))
    state_dict = _read_pth(pth_path)
    kept = {k: np.asarray(v, np.float32) for k, v in state_dict.items()
            if not _is_unused(k)}
    check_state_dict(kept, fid_inception.torch_state_dict_shapes(
        fid_inception.fid_inception_v3()), source=repr(pth_path))
    np.savez(npz_path, **kept)
    return npz_path
