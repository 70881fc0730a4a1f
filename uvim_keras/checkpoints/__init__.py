"""Reading other people's checkpoints into UViM models.

* `big_vision`: big_vision's UViM checkpoints (stage-I and stage-II `.npz`):
  config translation, the readable variable-name map, weight loading and
  the checks that name what does not match;
* `pretrained_vit`: initialising the guiding-code LM's encoder from a
  pretrained big_vision ViT (or from a trained base model).

Turning a checkpoint into a preset folder is `uvim_keras.presets.conversion`.
"""
