"""Times PanopticQuality on synthetic 512x512 images with ~30 segments each.

Usage: python benchmarks/bench_pq.py [--images 500] [--size 512] [--batch 8]
Prints one JSON line with images/s (only update_state is timed; the
synthetic scenes are drawn beforehand, batch by batch). ``images_per_s`` is
wall clock; ``images_per_cpu_s`` uses this process's CPU time, which is the
fairer figure when other jobs share the machine.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from uvim_keras.metrics import PanopticQuality  # noqa: E402

CATEGORIES = [
    {"id": 1, "name": "person", "isthing": 1},
    {"id": 2, "name": "bicycle", "isthing": 1},
    {"id": 3, "name": "car", "isthing": 1},
    {"id": 5, "name": "dog", "isthing": 1},
    {"id": 8, "name": "sky", "isthing": 0},
    {"id": 11, "name": "grass", "isthing": 0},
    {"id": 17, "name": "road", "isthing": 0},
]
THINGS = [1, 2, 3, 5]


def scene(rng, size, num_things=26):
    """One GT/prediction pair: 3 stuff bands + boxes, some crowd, some void."""
    gt = np.zeros((size, size, 2), np.int32)
    cuts = np.sort(rng.integers(size // 4, size, 2))
    gt[:cuts[0], :, 0] = 8
    gt[cuts[0]:cuts[1], :, 0] = 11
    gt[cuts[1]:, :, 0] = 17
    pred = gt.copy()
    crowd = np.zeros((size, size), bool)
    for inst in range(1, num_things + 1):
        cat = THINGS[rng.integers(len(THINGS))]
        h, w = rng.integers(size // 20, size // 5, 2)
        y, x = rng.integers(0, size - h), rng.integers(0, size - w)
        gt[y:y + h, x:x + w] = (cat, inst)
        crowd[y:y + h, x:x + w] = rng.random() < 0.1
        r = rng.random()
        if r < 0.1:
            continue  # missed
        pcat = THINGS[rng.integers(len(THINGS))] if r < 0.2 else cat
        dy, dx = rng.integers(-h // 4, h // 4 + 1), rng.integers(-w // 4,
                                                                 w // 4 + 1)
        y2, x2 = np.clip([y + dy, x + dx], 0, [size - h, size - w])
        pred[y2:y2 + h, x2:x2 + w] = (pcat, rng.integers(0, 255))
    # Keep crowd on whole segments only (boxes may overlap).
    seg = gt[..., 0].astype(np.int64) * 1000 + gt[..., 1]
    crowd_ids = np.unique(seg[crowd])
    crowd = np.isin(seg, crowd_ids) & (gt[..., 0] != 0) & np.isin(
        gt[..., 0], THINGS)
    void_rows = rng.integers(0, size, 4)
    gt[void_rows, :, :] = 0
    crowd[void_rows, :] = False
    return gt, pred, crowd


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    metric = PanopticQuality(CATEGORIES)
    elapsed, cpu, done, segments = 0.0, 0.0, 0, 0
    while done < args.images:
        n = min(args.batch, args.images - done)
        batch = [scene(rng, args.size) for _ in range(n)]
        gt = np.stack([b[0] for b in batch])
        pred = np.stack([b[1] for b in batch])
        crowd = np.stack([b[2] for b in batch])
        segments += sum(len(np.unique(g[..., 0] * 1000 + g[..., 1])) - 1
                        for g in gt)
        start, start_cpu = time.perf_counter(), time.process_time()
        metric.update_state(gt, pred, crowd=crowd)
        elapsed += time.perf_counter() - start
        cpu += time.process_time() - start_cpu
        done += n
    result = metric.result()
    print(json.dumps({
        "benchmark": "panoptic_quality_update_state",
        "images": done,
        "size": [args.size, args.size],
        "mean_gt_segments": segments / done,
        "seconds": round(elapsed, 3),
        "images_per_s": round(done / elapsed, 1),
        "cpu_seconds": round(cpu, 3),
        "images_per_cpu_s": round(done / cpu, 1),
        "PQ": round(result["All"]["pq"], 4),
    }))


if __name__ == "__main__":
    main()
