"""Run a UViM (or a stage-I model with the oracle's code) over a dataset and
compute the task's metrics.

>>> from uvim_keras.evaluate import evaluate
>>> results = evaluate(uvim, dataset, categories=coco_categories)   # panoptic
>>> results["metrics"]["All"]["pq"]
"""

import keras
import numpy as np

from uvim_keras.models import UViM, UViMStage1


def task_metric(task, categories=None, nyu_eval_crop=False, fid=None):
    """The task's own metric (`task.metric`), given the options set here:
    `categories` (panoptic), `nyu_eval_crop` (depth), `fid` (colorization);
    an option the task does not take is a TypeError naming it."""
    options = {"categories": categories, "nyu_eval_crop": nyu_eval_crop or None, "fid": fid}
    return task.metric(**{k: v for k, v in options.items() if v is not None})


def _batches(dataset):
    if hasattr(dataset, "as_numpy_iterator"):
        return dataset.as_numpy_iterator()
    return iter(dataset)


def evaluate(model, dataset, metric=None, categories=None, temperature=None, seed=None,
             nyu_eval_crop=False, fid=None, max_batches=None, progress=True):
    """Evaluates `model` on batches {"image", "labels"} of `dataset`.

    Args:
      model: a `UViM` (codes from its LM) or a `UViMStage1` (the oracle's own
        code: an upper bound for stage II).
      dataset: a `tf.data.Dataset` or any iterable of dict batches.
      metric: an object with `update_state(labels, outputs)` / `result()`;
        defaults to the task's metric (see `task_metric`).
      categories: COCO categories (panoptic only).
      temperature, seed: sampling settings of a `UViM` (default: the task's).
      nyu_eval_crop: apply big_vision's NYU crop to raw 480x640 depth labels.
      fid: an `uvim_keras.metrics.FID` for colorization; UViM's colours are in
        [-1, 1], so build it with `FID(image_range=(-1, 1))`.
      max_batches: stop after this many batches.
      progress: show a progress bar.
    Returns:
      {"metrics": metric.result(), "num_examples": int}.
    """
    if not isinstance(model, (UViM, UViMStage1)):
        raise ValueError(f"model is a {type(model).__name__}; expected a UViM or a UViMStage1.")
    task = model.task
    metric = metric or task_metric(task, categories, nyu_eval_crop, fid)
    bar = keras.utils.Progbar(None, unit_name="image") if progress else None
    seen = 0
    for i, batch in enumerate(_batches(dataset)):
        if max_batches is not None and i >= max_batches:
            break
        if not isinstance(batch, dict) or not {"image", "labels"} <= set(batch):
            raise ValueError("dataset batches must be dicts with keys 'image' and 'labels'.")
        images, labels = np.asarray(batch["image"]), np.asarray(batch["labels"])
        if isinstance(model, UViM):
            step_seed = None if seed is None else seed + i
            outputs = model.predict(images, verbose=0, temperature=temperature, seed=step_seed)
        else:
            outputs = keras.ops.convert_to_numpy(
                model.predict_outputs({"image": images, "labels": labels})
            )
        task.update_metric(metric, labels, np.asarray(outputs))
        seen += len(images)
        if bar is not None:
            bar.add(len(images))
    if seen == 0:
        raise ValueError("dataset yielded no batches.")
    return {"metrics": metric.result(), "num_examples": seen}
