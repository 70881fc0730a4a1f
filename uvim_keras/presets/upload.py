"""Publishing a UViM preset folder on the Hugging Face Hub or Kaggle."""

import json
import os

from uvim_keras.presets import cache, layout
from uvim_keras.presets.api import PresetError, preset_info
from uvim_keras.presets.model_card import is_generated, write_model_card

_HF = "hf://"
_KAGGLE = "kaggle://"


def check_preset_dir(preset_dir):
    """Raises PresetError unless `preset_dir` is a complete UViM preset."""
    preset_dir = os.fspath(preset_dir)
    if not os.path.isdir(preset_dir):
        raise PresetError(f"preset folder {preset_dir} does not exist.")
    config_path = os.path.join(preset_dir, "config.json")
    if not os.path.isfile(config_path):
        raise PresetError(f"{preset_dir} has no config.json: not a preset folder.")
    try:
        with open(config_path, encoding="utf-8") as f:
            config = json.load(f)
    except ValueError as e:
        raise PresetError(f"{config_path} is not valid JSON ({e}).") from e
    if not str(config.get("registered_name", "")).startswith("uvim_keras>"):
        raise PresetError(f"{preset_dir} is not a UViM preset (config.json holds "
                          f"{config.get('registered_name')!r}).")
    layout.check_weights_layout(preset_dir, PresetError)
    files = os.listdir(preset_dir)
    if "model.weights.h5" not in files and not any(
        f.startswith("model_") and f.endswith(".weights.h5") for f in files
    ):
        raise PresetError(f"{preset_dir} has no model.weights.h5.")
    if "task.json" in files and "task.weights.h5" not in files:
        raise PresetError(f"{preset_dir} has task.json but no task.weights.h5.")
    return config


def _model_config(preset_dir):
    out = {}
    with open(os.path.join(preset_dir, "config.json"), encoding="utf-8") as f:
        stage1 = json.load(f)["config"]
    out["stage1"] = {k: v for k, v in stage1.items() if k not in ("name", "trainable", "dtype")}
    task_path = os.path.join(preset_dir, "task.json")
    if os.path.isfile(task_path):
        with open(task_path, encoding="utf-8") as f:
            lm = json.load(f)["config"]["lm"]["config"]
        out["lm"] = {k: v for k, v in lm.items() if k not in ("name", "trainable", "dtype")}
    return out


def upload_preset(uri, preset_dir, commit_message=None, **card):
    """Publishes a UViM preset folder.

    `uri`: `hf://[org/]name` (Hugging Face Hub, through `huggingface_hub`:
    the repo is created if needed, then the folder is uploaded in one
    commit) or `kaggle://org/model/keras/variant` (through
    `keras_hub.upload_preset` / kagglehub). Before uploading, the folder's
    model card `README.md` is (re)written with the task, the metrics and how
    to load the preset from `uri`, unless it holds a README you wrote
    yourself. `card`: `description`, `metrics` (dict), `dataset`,
    `metrics_note`, `license`, stored with the preset.

    Example:
    >>> uvim.save_to_preset("my_uvim")
    >>> uvim_keras.upload_preset("hf://me/my-uvim", "my_uvim", metrics={"PQ": 40.2})
    >>> uvim_keras.UViM.from_preset("hf://me/my-uvim")
    """
    preset_dir = os.fspath(preset_dir)
    check_preset_dir(preset_dir)
    if not (uri.startswith(_HF) or uri.startswith(_KAGGLE)):
        raise PresetError(
            f"upload uri {uri!r}: expected hf://[org/]name or kaggle://org/model/keras/variant."
        )
    info = preset_info(preset_dir)
    unknown = set(card) - {"description", "metrics", "dataset", "metrics_note", "license"}
    if unknown:
        raise TypeError(f"unexpected model card fields: {sorted(unknown)}.")
    if card:
        info.update({k: v for k, v in card.items() if v is not None})
        with open(os.path.join(preset_dir, cache.PRESET_MARKER), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2, sort_keys=True)
    readme = os.path.join(preset_dir, "README.md")
    if not os.path.exists(readme) or is_generated(readme):
        if "task" not in info:
            info["task"] = _guess_task(preset_dir)
            info["kind"] = "uvim" if os.path.isfile(os.path.join(preset_dir, "task.json")) else "stage1"
        write_model_card(preset_dir, info, _model_config(preset_dir), handle=uri)
    if uri.startswith(_HF):
        return _upload_hf(uri[len(_HF):], preset_dir, commit_message)
    import keras_hub

    return keras_hub.upload_preset(uri, preset_dir)


def _guess_task(preset_dir):
    with open(os.path.join(preset_dir, "config.json"), encoding="utf-8") as f:
        task = json.load(f)["config"].get("task", {})
    name = task.get("class_name", "") if isinstance(task, dict) else ""
    return {"PanopticTask": "panoptic", "DepthTask": "depth",
            "ColorizationTask": "colorization"}.get(name, name or "?")


def _upload_hf(repo_id, preset_dir, commit_message):
    try:
        import huggingface_hub
    except ImportError as e:
        raise ImportError("uploading to hf:// needs huggingface_hub: pip install huggingface-hub.") from e
    if not repo_id or repo_id.count("/") > 1:
        raise PresetError(f"hf://{repo_id}: expected hf://[org/]name.")
    api = huggingface_hub.HfApi()
    repo = api.create_repo(repo_id=repo_id, repo_type="model", exist_ok=True)
    repo_id = getattr(repo, "repo_id", repo_id)
    return api.upload_folder(
        repo_id=repo_id, repo_type="model", folder_path=preset_dir,
        commit_message=commit_message or "Upload UViM preset (uvim-keras)",
        ignore_patterns=[".*", "*.part"],
    )
