"""Renamed constructor arguments (keras-hub's names): configs saved under the
old names load as the new ones, `get_config` emits only the new names, and a
direct call with an old keyword still works with a DeprecationWarning."""

import inspect
import json
import warnings

import pytest

from helpers import TINY, TINY_LM

pytestmark = pytest.mark.multibackend

# {class: (new-style config, {old name: new name})}; the old-style config is
# the new one with the new names replaced by the old ones.
_TASK = {"module": "uvim_keras.tasks.panoptic", "class_name": "PanopticTask",
         "config": {"num_classes": 5, "max_instances": 4},
         "registered_name": "uvim_keras>PanopticTask"}
_STAGE_I_VIT = dict(input_size=16, patch_size=4, code_len=4, codeword_dim=8, width=16,
                    num_layers=2, num_heads=2, mlp_dim=32, dropout_rate=0.1)
CASES = {
    "TransformerEncoder": (dict(num_layers=2, num_heads=2, mlp_dim=8, dropout_rate=0.1),
                           {"depth": "num_layers", "dropout": "dropout_rate"}),
    "EncoderBlock": (dict(num_heads=2, mlp_dim=8, dropout_rate=0.1),
                     {"dropout": "dropout_rate"}),
    "DecoderBlock": (dict(num_heads=2, mlp_dim=8, dropout_rate=0.1, causal=False),
                     {"dropout": "dropout_rate"}),
    "MlpBlock": (dict(mlp_dim=8, dropout_rate=0.1), {"dropout": "dropout_rate"}),
    "MultiHeadDotProductAttention": (dict(num_heads=2, use_bias=False, dropout_rate=0.1),
                                     {"dropout": "dropout_rate"}),
    "PositionEmbedding": (dict(posemb="sincos2d", grid_size=(2, 2)), {"kind": "posemb"}),
    "Oracle": (dict(label_channels={"a": 3}, **_STAGE_I_VIT),
               {"depth": "num_layers", "dropout": "dropout_rate"}),
    "BaseModel": (dict(label_channels={"a": 3}, **_STAGE_I_VIT),
                  {"depth": "num_layers", "dropout": "dropout_rate"}),
    "UViMStage1": (dict(task=_TASK, **{**TINY, "oracle_num_layers": 2}, dropout_rate=0.1),
                   {"oracle_depth": "oracle_num_layers", "base_depth": "base_num_layers",
                    "dropout": "dropout_rate"}),
    "GuidingCodeLM": (dict(**TINY_LM, dropout_rate=0.1), {"dropout": "dropout_rate"}),
}


def _class(name):
    import uvim_keras.layers
    import uvim_keras.models

    return getattr(uvim_keras.layers, name, None) or getattr(uvim_keras.models, name)


def _old_style(config, renames):
    new_to_old = {new: old for old, new in renames.items()}
    return {new_to_old.get(k, k): v for k, v in config.items()}


def _init_params(cls):
    """The constructor arguments of `cls` and of its uvim_keras bases
    (`Oracle` passes its `**kwargs` on to the shared stage-I ViT)."""
    return {name for k in cls.__mro__ if "__init__" in vars(k)
            and k.__module__.startswith("uvim_keras")
            for name in inspect.signature(k.__init__).parameters}


def _comparable(config):
    """A config as JSON (tuples and lists alike), without the instance's name."""
    return json.loads(json.dumps({k: v for k, v in config.items() if k != "name"}))


@pytest.mark.parametrize("name", sorted(CASES))
def test_old_style_config_builds_the_new_style_model(name):
    cls = _class(name)
    new, renames = CASES[name]
    assert cls.RENAMED_ARGUMENTS == renames
    params = _init_params(cls)
    assert set(renames.values()) <= set(params) and not set(renames) & set(params)
    old = _old_style(new, renames)
    assert set(renames) <= set(old)
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # a saved config loads silently
        from_old = cls.from_config({**old, "name": "x"}).get_config()
    from_new = cls.from_config({**new, "name": "x"}).get_config()
    assert _comparable(from_old) == _comparable(from_new)
    assert not set(renames) & set(from_new), "get_config emits an old name"
    assert set(renames.values()) <= set(from_new)
    for key in renames.values():  # the old names' values, under the new names
        assert from_old[key] == new[key], key


@pytest.mark.parametrize("name", sorted(CASES))
def test_old_keyword_in_a_call_warns_and_names_the_new_one(name):
    cls = _class(name)
    new, renames = CASES[name]
    old_name, new_name = next(iter(renames.items()))
    kwargs = {k: v for k, v in new.items() if k != "task"}
    args = ()
    if "task" in new:
        from uvim_keras.models.stage1 import resolve_task

        args = (resolve_task(new["task"]),)
    kwargs[old_name] = kwargs.pop(new_name)
    with pytest.warns(DeprecationWarning, match=rf"{old_name}=\.\.\.\) is deprecated.*"
                                                  rf"now named '{new_name}'"):
        layer = cls(*args, **kwargs)
    assert layer.get_config()[new_name] == new[new_name]
    with pytest.raises(TypeError, match=rf"both '{old_name}'.*and '{new_name}'"):
        cls(*args, **kwargs, **{new_name: new[new_name]})


def test_dropout_layer_and_rate_attributes():
    import keras

    from uvim_keras.layers import DecoderBlock, EncoderBlock, MlpBlock, MultiHeadDotProductAttention

    for layer in (MlpBlock(8, dropout_rate=0.25),
                  MultiHeadDotProductAttention(2, dropout_rate=0.25),
                  EncoderBlock(2, 8, dropout_rate=0.25), DecoderBlock(2, 8, dropout_rate=0.25)):
        assert layer.dropout_rate == 0.25
        assert isinstance(layer.dropout, keras.layers.Dropout) and layer.dropout.rate == 0.25


def test_preset_with_old_names_loads_without_warnings(tmp_path):
    """A preset saved with the old names (config.json and task.json: the
    weights-layout-2 fixture, saved before the rename) loads as it is,
    silently, and reports the new names."""
    import shutil

    from common import LAYOUT2
    from uvim_keras import UViM
    from uvim_keras.presets import upgrade_weights_layout

    folder = tmp_path / "old_names"
    shutil.copytree(LAYOUT2 / "preset", folder)
    upgrade_weights_layout(folder)  # the weights' layout; the names stay
    saved = json.loads((folder / "config.json").read_text())["config"]
    assert {"oracle_depth", "base_depth", "dropout"} <= set(saved)  # written before the rename
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        uvim = UViM.from_preset(str(folder))
    config = uvim.stage1.get_config()
    assert (config["oracle_num_layers"], config["base_num_layers"]) == (
        saved["oracle_depth"], saved["base_depth"])
    assert config["dropout_rate"] == saved["dropout"]
    assert not {"oracle_depth", "base_depth", "dropout"} & set(config)
    assert "dropout_rate" in uvim.lm.get_config() and "dropout" not in uvim.lm.get_config()
    # Only Python names changed: the variable paths are the old ones.
    paths = {v.path for v in uvim.stage1.weights}
    assert "oracle/transformer/block_0/attention/query/kernel" in paths
    assert "base_model/transformer/block_0/mlp/dense_0/kernel" in paths
