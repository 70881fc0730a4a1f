"""Per-image panoptic-quality counting and the final PQ/SQ/RQ summary.

The rules are panopticapi's (``pq_compute``), quirks included:

* A candidate pair (g, p) needs a non-crowd GT segment g and a predicted
  segment p of the same category. ``union = area(p) + area(g) - inter - void(p)``
  where ``void(p)`` counts the pixels of p on GT VOID; pixels of p on a crowd
  region stay in the union. The pair is a true positive iff IoU > 0.5 strictly.
* Unmatched non-crowd GT segments are false negatives; crowd segments never are.
* An unmatched prediction p is dropped when
  ``(void(p) + inter(crowd_c, p)) / area(p) > 0.5`` (strict), where crowd_c is
  the *last* crowd segment of p's category in segment order (panopticapi keeps
  one crowd segment per category and image); otherwise it is a false positive.
* Counts accumulate per category over images; PQ/SQ/RQ are computed from the
  accumulated counts and averaged over the categories with tp+fp+fn > 0.

Segments are given as compact index maps: 0 is VOID and segment k (1-based)
is described by entry k-1 of the per-segment arrays. Everything is vectorised:
one ``np.bincount`` over the pixel pairs builds the (GT x prediction)
intersection table, and the rules act on that small table.
"""

import numpy as np


def confusion_table(gt_index, pred_index, num_gt, num_pred):
    """Pixel counts of every (GT segment, predicted segment) pair.

    Args:
        gt_index: int array, values in [0, num_gt]; 0 is GT VOID.
        pred_index: int array of the same shape, values in [0, num_pred];
            0 is predicted VOID.

    Returns:
        int64 array of shape (num_gt + 1, num_pred + 1).
    """
    width = num_pred + 1
    size = (num_gt + 1) * width
    dtype = np.int32 if size < 2**31 else np.int64
    pair = gt_index.astype(dtype, copy=False) * dtype(width)
    pair += pred_index.astype(dtype, copy=False)
    table = np.bincount(pair.ravel(), minlength=size)
    return table.reshape(num_gt + 1, width)


def image_counts(table, gt_category, gt_iscrowd, gt_area, pred_category,
                 num_categories):
    """Applies panopticapi's matching rules to one image.

    Args:
        table: (G+1, P+1) pixel counts from `confusion_table`; row 0 is GT
            VOID, column 0 predicted VOID.
        gt_category: (G,) category index in [0, num_categories) per GT segment.
        gt_iscrowd: (G,) bool per GT segment.
        gt_area: (G,) GT areas (panopticapi reads them from the JSON).
        pred_category: (P,) category index per predicted segment.
        num_categories: length of the returned arrays.

    Returns:
        tp, fp, fn (int64) and iou_sum (float64), each of shape
        (num_categories,).
    """
    gt_category = np.asarray(gt_category, dtype=np.int64)
    pred_category = np.asarray(pred_category, dtype=np.int64)
    gt_iscrowd = np.asarray(gt_iscrowd, dtype=bool)
    gt_area = np.asarray(gt_area, dtype=np.int64)
    table = np.asarray(table, dtype=np.int64)

    inter = table[1:, 1:]
    pred_area = table[:, 1:].sum(axis=0)
    pred_void = table[0, 1:]

    candidate = ((gt_category[:, None] == pred_category[None, :])
                 & ~gt_iscrowd[:, None] & (inter > 0))
    rows, cols = np.nonzero(candidate)
    cand_inter = inter[rows, cols]
    union = pred_area[cols] + gt_area[rows] - cand_inter - pred_void[cols]
    iou = cand_inter / union
    hit = iou > 0.5
    rows, cols, iou = rows[hit], cols[hit], iou[hit]

    tp = np.bincount(gt_category[rows], minlength=num_categories)
    iou_sum = np.bincount(gt_category[rows], weights=iou,
                          minlength=num_categories)

    gt_matched = np.zeros(len(gt_category), dtype=bool)
    gt_matched[rows] = True
    missed = ~gt_matched & ~gt_iscrowd
    fn = np.bincount(gt_category[missed], minlength=num_categories)

    # The crowd segment kept per category: the last one in segment order.
    crowd_of_category = np.full(num_categories, -1, dtype=np.int64)
    crowd_rows = np.flatnonzero(gt_iscrowd)
    np.maximum.at(crowd_of_category, gt_category[crowd_rows], crowd_rows)

    pred_matched = np.zeros(len(pred_category), dtype=bool)
    pred_matched[cols] = True
    unmatched = np.flatnonzero(~pred_matched)
    crowd_row = crowd_of_category[pred_category[unmatched]]
    ignored = pred_void[unmatched].copy()
    has_crowd = crowd_row >= 0
    ignored[has_crowd] += inter[crowd_row[has_crowd], unmatched[has_crowd]]
    kept = ~(ignored / pred_area[unmatched] > 0.5)
    fp = np.bincount(pred_category[unmatched[kept]], minlength=num_categories)

    return (tp.astype(np.int64), fp.astype(np.int64), fn.astype(np.int64),
            iou_sum.astype(np.float64))


def _average(tp, fp, fn, iou_sum, select):
    pq = sq = rq = 0.0
    n = 0
    for c in np.flatnonzero(select):
        denom_counts = tp[c] + fp[c] + fn[c]
        if denom_counts == 0:
            continue
        n += 1
        denom = tp[c] + 0.5 * fp[c] + 0.5 * fn[c]
        pq += iou_sum[c] / denom
        sq += iou_sum[c] / tp[c] if tp[c] != 0 else 0.0
        rq += tp[c] / denom
    if n == 0:
        return {"pq": 0.0, "sq": 0.0, "rq": 0.0, "n": 0}
    return {"pq": float(pq / n), "sq": float(sq / n), "rq": float(rq / n),
            "n": n}


def summarize(tp, fp, fn, iou_sum, spec):
    """PQ/SQ/RQ from accumulated counts, in panopticapi's output layout.

    Returns:
        ``{"All": {pq, sq, rq, n}, "Things": {...}, "Stuff": {...},
        "per_class": {category_id: {name, isthing, pq, sq, rq, tp, fp, fn,
        iou_sum}}}``. A group without participating categories reports zeros
        and ``n = 0`` (panopticapi would divide by zero there).
    """
    tp = np.asarray(tp, dtype=np.int64)
    fp = np.asarray(fp, dtype=np.int64)
    fn = np.asarray(fn, dtype=np.int64)
    iou_sum = np.asarray(iou_sum, dtype=np.float64)
    everything = np.ones(len(spec), dtype=bool)
    result = {
        "All": _average(tp, fp, fn, iou_sum, everything),
        "Things": _average(tp, fp, fn, iou_sum, spec.isthing),
        "Stuff": _average(tp, fp, fn, iou_sum, ~spec.isthing),
    }
    per_class = {}
    for c, cid in enumerate(spec.ids.tolist()):
        denom = tp[c] + 0.5 * fp[c] + 0.5 * fn[c]
        participates = tp[c] + fp[c] + fn[c] > 0
        per_class[cid] = {
            "name": spec.names[c],
            "isthing": int(spec.isthing[c]),
            "pq": float(iou_sum[c] / denom) if participates else 0.0,
            "sq": float(iou_sum[c] / tp[c]) if tp[c] > 0 else 0.0,
            "rq": float(tp[c] / denom) if participates else 0.0,
            "tp": int(tp[c]),
            "fp": int(fp[c]),
            "fn": int(fn[c]),
            "iou_sum": float(iou_sum[c]),
        }
    result["per_class"] = per_class
    return result
