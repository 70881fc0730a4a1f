"""Panoptic Quality (PQ) as a stateful Keras metric, computed on the host."""

import keras
import numpy as np

from uvim_keras.metrics import pq_core
from uvim_keras.metrics.categories import CategorySpec
from uvim_keras.metrics.coco_segments import coco_gt_segments
from uvim_keras.metrics.coco_segments import coco_pred_segments
from uvim_keras.metrics.host import to_numpy
from uvim_keras.metrics.two_channel import gt_segments
from uvim_keras.metrics.two_channel import pred_segments


def _batched(x, rank, argument, what):
    if x.ndim == rank - 1:
        return x[None]
    if x.ndim != rank:
        raise ValueError(
            f"{argument}: got shape {x.shape}; expected {what}")
    return x


@keras.saving.register_keras_serializable(package="uvim_keras")
class PanopticQuality(keras.metrics.Metric):
    """COCO Panoptic Quality with panopticapi's exact rules and quirks.

    Inputs are 2-channel maps ``[..., 0]`` = COCO category id (0 = VOID),
    ``[..., 1]`` = instance id, of shape (B, H, W, 2) (or one (H, W, 2) image):

    * GT: a segment is the set of pixels sharing one (category, instance)
      pair with category != 0. ``crowd`` (B, H, W) bool marks the pixels of
      crowd segments (whole segments only). Segments are ordered by
      (category id, instance id), so the crowd segment panopticapi keeps per
      category is the one with the largest instance id.
    * Prediction: panopticapi's 2-channel converter. Semantic 0 is VOID; the
      instance channel is ignored for stuff categories; for things every
      instance value, 0 included, is one segment. Instance ids must be < 1000.

    Matching (strict IoU > 0.5, union minus pred-on-VOID only, crowd and VOID
    filtering of false positives, last crowd segment per category) and the
    averaging are panopticapi's ``pq_compute``; see `pq_core`. The state is a
    set of per-category numpy counters (tp, fp, fn, iou_sum) accumulated over
    every image seen since the last `reset_state`. The metric runs on the host
    (numpy) and is meant for evaluation loops, not for compiled ``fit``.

    Example:

    >>> import numpy as np
    >>> cats = [{"id": 1, "name": "person", "isthing": 1},
    ...         {"id": 8, "name": "sky", "isthing": 0}]
    >>> gt = np.zeros((1, 4, 4, 2), np.int32)
    >>> gt[0, :2, :, 0] = 8                   # sky (stuff)
    >>> gt[0, 2:, :, 0], gt[0, 2:, :, 1] = 1, 7   # person instance 7
    >>> pred = gt.copy(); pred[0, 2:, :, 1] = 0   # instance ids need not agree
    >>> pq = PanopticQuality(cats)
    >>> pq.update_state(gt, pred)
    >>> pq.result()["All"]
    {'pq': 1.0, 'sq': 1.0, 'rq': 1.0, 'n': 2}

    Args:
        categories: COCO category list (dicts with id, name, isthing), a path
            to a JSON file with such a list or a COCO panoptic JSON, or a
            `CategorySpec`.
        name: metric name.
        dtype: unused by the numpy state; kept for the Keras API.
    """

    def __init__(self, categories, name="panoptic_quality", dtype=None):
        super().__init__(name=name, dtype=dtype)
        self.spec = CategorySpec(categories)
        self.reset_state()

    def reset_state(self):
        n = len(self.spec)
        self.tp = np.zeros(n, dtype=np.int64)
        self.fp = np.zeros(n, dtype=np.int64)
        self.fn = np.zeros(n, dtype=np.int64)
        self.iou_sum = np.zeros(n, dtype=np.float64)
        self.num_images = 0

    def _accumulate(self, gt, pred):
        table = pq_core.confusion_table(gt.index, pred.index, len(gt),
                                        len(pred))
        tp, fp, fn, iou_sum = pq_core.image_counts(
            table,
            self.spec.index_lut[gt.category_id] - 1,
            gt.iscrowd,
            gt.area,
            self.spec.index_lut[pred.category_id] - 1,
            len(self.spec))
        self.tp += tp
        self.fp += fp
        self.fn += fn
        self.iou_sum += iou_sum
        self.num_images += 1

    def update_state(self, y_true, y_pred, crowd=None, sample_weight=None):
        """Adds a batch of images.

        Args:
            y_true: (B, H, W, 2) GT [category id, instance id].
            y_pred: (B, H, W, 2) predicted [category id, instance id].
            crowd: optional (B, H, W) bool, True on GT crowd segments.
            sample_weight: not supported; must be None.
        """
        if sample_weight is not None:
            raise ValueError(
                "sample_weight: got a value; expected None (panoptic quality "
                "counts segments, it has no per-sample weights)")
        y_true = _batched(to_numpy(y_true), 4, "y_true", "(B, H, W, 2)")
        y_pred = _batched(to_numpy(y_pred), 4, "y_pred", "(B, H, W, 2)")
        if y_true.shape != y_pred.shape:
            raise ValueError(
                f"y_pred: got shape {y_pred.shape}; expected the shape of "
                f"y_true, {y_true.shape}")
        if crowd is not None:
            crowd = _batched(to_numpy(crowd), 3, "crowd", "(B, H, W)")
            if crowd.shape != y_true.shape[:3]:
                raise ValueError(
                    f"crowd: got shape {crowd.shape}; expected "
                    f"{y_true.shape[:3]}")
        # Validate and convert the whole batch before touching the state.
        segments = []
        for b in range(y_true.shape[0]):
            gt = gt_segments(y_true[b], None if crowd is None else crowd[b],
                             self.spec, argument=f"y_true[{b}]",
                             crowd_argument=f"crowd[{b}]")
            pred = pred_segments(y_pred[b], self.spec,
                                 argument=f"y_pred[{b}]")
            segments.append((gt, pred))
        for gt, pred in segments:
            self._accumulate(gt, pred)

    def update_state_from_coco(self, gt_ids, gt_segments_info, pred_ids,
                               pred_segments_info):
        """Adds one image given as COCO panoptic segment-id maps.

        This reproduces panopticapi on COCO files exactly, including the
        crowd quirk (``gt_segments_info`` order decides which crowd segment
        of a category counts) and GT areas read from ``area``.

        Args:
            gt_ids: (H, W) int GT segment ids (decoded PNG, 0 = VOID).
            gt_segments_info: the GT annotation's ``segments_info`` list.
            pred_ids: (H, W) int predicted segment ids.
            pred_segments_info: the prediction's ``segments_info`` list.
        """
        gt_ids = to_numpy(gt_ids)
        pred_ids = to_numpy(pred_ids)
        if np.shape(gt_ids) != np.shape(pred_ids):
            raise ValueError(
                f"pred_ids: got shape {np.shape(pred_ids)}; expected the shape "
                f"of gt_ids, {np.shape(gt_ids)}")
        gt = coco_gt_segments(gt_ids, gt_segments_info, self.spec)
        pred = coco_pred_segments(pred_ids, pred_segments_info, self.spec)
        self._accumulate(gt, pred)

    def result(self):
        """Returns panopticapi's summary of everything accumulated.

        ``{"All"|"Things"|"Stuff": {"pq", "sq", "rq", "n"}, "per_class":
        {category_id: {"name", "isthing", "pq", "sq", "rq", "tp", "fp", "fn",
        "iou_sum"}}}``.
        """
        return pq_core.summarize(self.tp, self.fp, self.fn, self.iou_sum,
                                 self.spec)

    def get_config(self):
        return {"name": self.name, "dtype": self.dtype,
                "categories": self.spec.to_list()}

    @classmethod
    def from_config(cls, config):
        return cls(**config)
