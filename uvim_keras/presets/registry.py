"""Named UViM presets: the six released big_vision checkpoints (and, in
`named_presets`, the bundled presets of `uvim_keras.presets.bundled`).

Each entry records the checkpoint URLs, the exact big_vision model configs
of the release (`configs/proj/uvim/vqvae_*.py` for stage I,
`configs/proj/uvim/train_*_pretrained.py` for stage II), the published
metrics and the task's default sampling temperature. Nothing here imports
keras-hub or downloads anything.

Names are free of prefixes and do not collide with keras-hub's own presets
(checked by the tests). `register_preset` adds more (e.g. your own
big_vision run, or test fixtures served locally).
"""

import copy
import dataclasses
import re

from uvim_keras.presets.bundled import BUNDLED_PRESETS, bundled_presets
from uvim_keras.presets.cache import NAME_PATTERN

BIG_VISION_URL = "https://storage.googleapis.com/big_vision/uvim"

_PAPER = "Kolesnikov et al., UViM: A Unified Modeling Approach for Vision with Learned Guiding Codes, NeurIPS 2022 (arXiv:2205.10337)"
_SOURCE = "https://github.com/google-research/big_vision/tree/main/big_vision/configs/proj/uvim"

# Stage I (`proj.uvim.vit.Model`), configs/proj/uvim/vqvae_*.py: ViT-B
# oracle (6 layers) and base model (12 layers), image context on both sides.
_STAGE1_COMMON = {
    "input_size": [512, 512],
    "patch_size": [16, 16],
    "code_len": 256,
    "width": 768,
    "enc_depth": 6,
    "dec_depth": 12,
    "mlp_dim": 3072,
    "num_heads": 12,
    "dict_size": 4096,
    "codeword_dim": 768,
    "dict_momentum": 0.995,
    "with_encoder_ctx": True,
    "with_decoder_ctx": True,
    "code_dropout": "random",
    "bottleneck_resize": True,
}

# Stage II (`proj.uvim.vtt.Model`), configs/proj/uvim/train_*_pretrained.py:
# VTT_MODELS['large'] (ViT-L/16-sized encoder and decoder), learned position
# embeddings, vocab = dict_size + 1, seq_len = code_len, dropout_rate default 0.
_LM = {
    "num_layers": 24,
    "num_heads": 16,
    "mlp_dim": 4096,
    "emb_dim": 1024,
    "patches": {"size": [16, 16]},
    "vocab_size": 4097,
    "posemb_type": "learn",
    "input_size": [512, 512],
    "seq_len": 256,
}


def _stage1(inputs):
    return {**copy.deepcopy(_STAGE1_COMMON), "inputs": inputs, "outputs": copy.deepcopy(inputs)}


@dataclasses.dataclass(frozen=True)
class PresetSpec:
    """A named preset: where its big_vision checkpoints live and how to build it.

    Attributes:
      name: the preset name (`UViM.from_preset(name)`).
      task: "panoptic", "depth" or "colorization".
      description: one line.
      stage1_url: URL of the stage-I `.npz` (`params/...`, `state/...`).
      stage1_config: big_vision `proj.uvim.vit.Model` kwargs.
      stage2_url: URL of the stage-II LM `.npz`, or None for a stage-I preset.
      lm_config: big_vision `proj.uvim.vtt.Model` kwargs (complete presets).
      task_config: extra task settings (depth: min_depth, max_depth).
      metrics: published metrics of this preset, {name: value}.
      metrics_note: where/how they were measured.
      temperature: default sampling temperature of the complete model
        (big_vision's colabs: 1e-7, i.e. greedy, for panoptic and depth; 1.0
        for colorization).
      dataset: training data.
      dataset_ids: the training data's Hugging Face dataset ids (the model
        card's `datasets:`).
      checksums: {url: {"size": bytes, "sha256": hex}} pins of the
        checkpoints (either key may be left out): a download that does not
        match is refused and nothing is cached. URLs without a pin are
        pinned by their first download that converts (`cache.record_pin`).
    """

    name: str
    task: str
    description: str
    stage1_url: str
    stage1_config: dict
    stage2_url: str = None
    lm_config: dict = None
    task_config: dict = dataclasses.field(default_factory=dict)
    metrics: dict = dataclasses.field(default_factory=dict)
    metrics_note: str = ""
    temperature: float = 0.0
    dataset: str = ""
    dataset_ids: tuple = ()
    license: str = "apache-2.0"
    references: tuple = (_PAPER, _SOURCE)
    checksums: dict = dataclasses.field(default_factory=dict)

    @property
    def kind(self):
        """"uvim" (stage-II LM + stage I) or "stage1"."""
        return "uvim" if self.stage2_url else "stage1"

    @property
    def urls(self):
        return [u for u in (self.stage1_url, self.stage2_url) if u]

    def card_info(self):
        """What the model card and `uvim-keras presets` show."""
        return {
            "name": self.name,
            "task": self.task,
            "kind": self.kind,
            "description": self.description,
            "dataset": self.dataset,
            "dataset_ids": list(self.dataset_ids),
            "metrics": dict(self.metrics),
            "metrics_note": self.metrics_note,
            "temperature": self.temperature,
            "sources": self.urls,
            "license": self.license,
            "references": list(self.references),
        }


PRESETS = {}
_BUILTIN = set()


def register_preset(spec, overwrite=False):
    """Adds a named preset (a `PresetSpec`). Built-in names cannot be replaced."""
    if not isinstance(spec, PresetSpec):
        raise TypeError(f"expected a PresetSpec, got {type(spec).__name__}.")
    if spec.name in _BUILTIN or (spec.name in PRESETS and not overwrite):
        raise ValueError(f"a preset named {spec.name!r} is already registered.")
    if spec.name in BUNDLED_PRESETS:
        raise ValueError(f"{spec.name!r} is the name of a bundled preset.")
    if not isinstance(spec.name, str) or not NAME_PATTERN.match(spec.name):
        raise ValueError(f"preset name {spec.name!r}: use letters, digits, '_', '.' and '-' "
                         "(no path separators, no leading dot); it names a cache folder.")
    _check_checksums(spec)
    if spec.task not in ("panoptic", "depth", "colorization"):
        raise ValueError(f"task={spec.task!r}; expected panoptic, depth or colorization.")
    if (spec.stage2_url is None) != (spec.lm_config is None):
        raise ValueError("stage2_url and lm_config go together (both or neither).")
    PRESETS[spec.name] = spec
    return spec


def _check_checksums(spec):
    if not isinstance(spec.checksums, dict):
        raise TypeError("checksums must be a dict {url: {'size': int, 'sha256': str}}.")
    for url, pin in spec.checksums.items():
        if url not in spec.urls:
            raise ValueError(f"checksums names {url!r}, which is not one of the preset's URLs.")
        if not isinstance(pin, dict) or set(pin) - {"size", "sha256"}:
            raise ValueError(f"checksums[{url!r}] must be a dict with 'size' and/or 'sha256'.")
        sha = pin.get("sha256")
        if sha is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", str(sha)):
            raise ValueError(f"checksums[{url!r}]['sha256'] is not a sha256 (64 hex digits).")
        size = pin.get("size")
        if size is not None and (not isinstance(size, int) or size < 0):
            raise ValueError(f"checksums[{url!r}]['size'] must be a byte count.")


def unregister_preset(name):
    """Removes a preset added with `register_preset`."""
    if name in _BUILTIN:
        raise ValueError(f"{name!r} is a built-in preset.")
    PRESETS.pop(name, None)


def get_preset(name):
    """The `PresetSpec` of a named preset, or None."""
    return PRESETS.get(name)


def named_presets(kind=None, bundled=True):
    """{name: description} of the named presets (of one `kind` if given):
    the registered ones, then the bundled ones (`uvim_keras.presets.bundled`,
    complete UViMs that load offline) unless `bundled=False`. A complete
    preset also loads as a stage-I model, so kind=None suits UViMStage1."""
    out = {n: s.description for n, s in PRESETS.items() if kind is None or s.kind == kind}
    if bundled:
        for name, info in bundled_presets().items():
            if kind is None or info["kind"] == kind:
                out.setdefault(name, info["description"])
    return out


def stage1_sibling(spec):
    """The stage-I-only preset sharing `spec`'s stage-I checkpoint, if any."""
    for other in PRESETS.values():
        if other.kind == "stage1" and other.stage1_url == spec.stage1_url and other is not spec:
            return other
    return None


def complete_sibling(spec):
    """The complete preset sharing `spec`'s stage-I checkpoint, if any."""
    for other in PRESETS.values():
        if other.kind == "uvim" and other.stage1_url == spec.stage1_url and other is not spec:
            return other
    return None


def _builtin(**kwargs):
    spec = register_preset(PresetSpec(**kwargs))
    _BUILTIN.add(spec.name)


_RELEASES = {
    "panoptic": dict(
        prefix="panoptic", name="panoptic_coco", dataset="COCO 2017 panoptic",
        dataset_ids=("detection-datasets/coco",),
        inputs={"semantics": [133 + 1, 256], "instances": [100, 256]}, task_config={},
        metrics={"PQ": 43.1}, stage1_metrics={"PQ": 75.8}, temperature=0.0,
        what="panoptic segmentation (133 COCO classes + void, up to 100 instances)",
        note="COCO 2017 panoptic validation, 512x512 input, greedy guiding code",
    ),
    "depth": dict(
        prefix="depth", name="depth_nyu", dataset="NYU Depth V2",
        dataset_ids=("sayakpaul/nyu_depth_v2",),
        inputs={"depth": [256, 256]}, task_config={"min_depth": 1e-3, "max_depth": 10.0},
        metrics={"RMSE": 0.463}, stage1_metrics={"RMSE": 0.155}, temperature=0.0,
        what="monocular depth (256 bins over [0.001, 10] m)",
        note="NYU Depth V2 test set (big_vision's nyu_depth evaluator, metres), greedy guiding code",
    ),
    "colorization": dict(
        prefix="color", name="colorization_imagenet", dataset="ImageNet (ILSVRC-2012)",
        dataset_ids=("ILSVRC/imagenet-1k",),
        inputs={"color": [3, 256]}, task_config={},
        metrics={"FID": 16.99}, stage1_metrics={"FID": 15.59}, temperature=1.0,
        what="colorization (RGB from a grey image)",
        note="ColTran FID protocol on ImageNet validation, guiding code sampled at T=1",
    ),
}

# Published sizes and sha256 of the release files, {url: {"size", "sha256"}}.
# big_vision publishes none and they could not be fetched offline when this
# was written: until they are filled in, each URL is pinned by its first
# download that converts (the cache's `*.pin.json`), and later downloads of
# it must match that.
RELEASE_CHECKSUMS = {}

for _task, _r in _RELEASES.items():
    _common = dict(
        task=_task,
        stage1_url=f"{BIG_VISION_URL}/{_r['prefix']}_stageI_params.npz",
        stage1_config=_stage1(_r["inputs"]),
        task_config=_r["task_config"],
        dataset=_r["dataset"],
        dataset_ids=_r["dataset_ids"],
        temperature=_r["temperature"],
    )
    _urls = (_common["stage1_url"], f"{BIG_VISION_URL}/{_r['prefix']}_stageII_params.npz")
    _builtin(
        name=_r["name"],
        description=f"UViM {_r['what']}, {_r['dataset']}: stage-II LM + stage I (big_vision release)",
        stage2_url=f"{BIG_VISION_URL}/{_r['prefix']}_stageII_params.npz",
        lm_config=copy.deepcopy(_LM),
        metrics=_r["metrics"],
        metrics_note=_r["note"],
        checksums={u: dict(RELEASE_CHECKSUMS[u]) for u in _urls if u in RELEASE_CHECKSUMS},
        **_common,
    )
    _builtin(
        name=_r["name"] + "_stage1",
        description=f"UViM stage I (oracle + base model) for {_r['what']}, {_r['dataset']}",
        metrics=_r["stage1_metrics"],
        metrics_note="stage I alone: the oracle sees the ground-truth label (big_vision README)",
        checksums={u: dict(RELEASE_CHECKSUMS[u]) for u in _urls[:1] if u in RELEASE_CHECKSUMS},
        **_common,
    )
del _task, _r, _common, _urls
