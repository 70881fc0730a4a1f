"""Run a UViM (or a stage-I model with the oracle's code) over a dataset and
compute the task's metrics.

>>> from uvim_keras.evaluate import evaluate
>>> results = evaluate(uvim, dataset, categories=coco_categories)   # panoptic
>>> results["metrics"]["All"]["pq"]
"""

import numpy as np

from uvim_keras.tasks import ColorizationTask, DepthTask, PanopticTask


def task_metric(task, categories=None, nyu_eval_crop=False, fid=None):
    """The stateful metric object that evaluates `task`'s outputs.

    panoptic -> `PanopticQuality(categories)` (COCO category list: the ids of
    the labels' semantic channel); depth -> `DepthMetrics`; colorization ->
    `FID` if `fid` (an `FID` metric with a feature extractor) is given, else a
    mean-squared-error accumulator.
    """
    from uvim_keras import metrics

    if isinstance(task, PanopticTask):
        if categories is None:
            raise ValueError(
                "categories is None; panoptic evaluation needs the category list "
                "(dicts with id, name, isthing) of the semantic ids."
            )
        return metrics.PanopticQuality(categories)
    if isinstance(task, DepthTask):
        return metrics.DepthMetrics(task.min_depth, task.max_depth, nyu_eval_crop=nyu_eval_crop)
    if isinstance(task, ColorizationTask):
        return fid if fid is not None else _MeanSquaredError()
    raise ValueError(f"task={task!r} has no built-in metric; pass metric=... explicitly.")


class _MeanSquaredError:
    """Mean squared error over all pixels seen (host-side)."""

    def __init__(self):
        self.total, self.count = 0.0, 0

    def update_state(self, y_true, y_pred):
        diff = np.asarray(y_pred, "float64") - np.asarray(y_true, "float64")
        self.total += float(np.sum(diff**2))
        self.count += diff.size

    def result(self):
        return {"MSE": self.total / max(self.count, 1)}


def _update(metric, task, labels, outputs):
    from uvim_keras.metrics import FID

    if isinstance(metric, FID):
        metric.update_state(real_images=labels, generated_images=outputs)
    elif isinstance(task, DepthTask):
        metric.update_state(labels[..., 0], outputs)
    else:
        metric.update_state(labels, outputs)


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
    import keras

    from uvim_keras.models import UViM, UViMStage1

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
        _update(metric, task, labels, np.asarray(outputs))
        seen += len(images)
        if bar is not None:
            bar.add(len(images))
    if seen == 0:
        raise ValueError("dataset yielded no batches.")
    return {"metrics": metric.result(), "num_examples": seen}
