"""Save weights + outputs under one backend, check them under another.

Used by test_cross_backend.py: `python _cross_backend.py save DIR` then
`KERAS_BACKEND=other python _cross_backend.py check DIR`.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from helpers import panoptic_batch, tiny_lm, tiny_stage1  # noqa: E402


def outputs(stage1, lm, batch):
    out = stage1(batch, training=False)
    result = {"codes": out["codes"], "lm_logits": lm({"image": batch["image"], "codes": out["codes"]})}
    result.update({f"logits_{k}": v for k, v in out["logits"].items()})
    result["generated"] = lm.generate(batch["image"])
    return {k: np.asarray(keras.ops.convert_to_numpy(v)) for k, v in result.items()}


def main(mode, folder):
    stage1, lm = tiny_stage1(seed=11), tiny_lm(seed=12)
    batch = panoptic_batch(2, seed=13)
    s1_path, lm_path = os.path.join(folder, "s1.weights.h5"), os.path.join(folder, "lm.weights.h5")
    ref_path = os.path.join(folder, "outputs.npz")
    if mode == "save":
        rng = np.random.default_rng(0)
        for model in (stage1, lm):
            for w in model.weights:
                w.assign(rng.normal(0, 0.3, w.shape).astype("float32"))
        stage1.quantizer.counts.assign(rng.uniform(0.5, 3, (stage1.dict_size,)).astype("float32"))
        stage1.save_weights(s1_path)
        lm.save_weights(lm_path)
        np.savez(ref_path, **outputs(stage1, lm, batch))
        return
    stage1.load_weights(s1_path)
    lm.load_weights(lm_path)
    ref = np.load(ref_path)
    got = outputs(stage1, lm, batch)
    for key in ref.files:
        if ref[key].dtype.kind in "iu":
            np.testing.assert_array_equal(got[key], ref[key], err_msg=key)
        else:
            np.testing.assert_allclose(got[key], ref[key], atol=1e-5, err_msg=key)
    print("ok", keras.backend.backend(), sorted(ref.files))


if __name__ == "__main__":
    main(*sys.argv[1:3])
