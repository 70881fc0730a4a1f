"""Times uvim_keras' UViM on this machine's CPU, side by side with big_vision.

Reads the shared bench config (bench_config.json: batch, res, patch, width,
...), builds the equivalent uvim_keras models and times

* stage1_step_s: one `fit` step of `UViMStage1` (panoptic task, Adafactor lr
  1e-3, EMA dictionary updates + LBG splitting, random code dropout);
* stage2_step_s: one `fit` step of `GuidingCodeLM` (teacher forcing);
* greedy_decode_s: `GuidingCodeLM.generate(images)` (argmax, KV cache) on one
  batch, with random (not zero) logits weights so argmax is not trivial.

Train steps are timed inside `model.fit` by a callback that stamps the end of
every batch (the callback makes Keras materialise the logs, so each step is
waited for, as the reference blocks on each of its steps); the per-step time
is the gap between consecutive stamps, i.e. the whole loop: data iterator,
compiled step, logs. Each figure is the median over --steps after --warmup
steps (the first includes compilation); `*_min_s` are the minima (robust to
other processes on a shared machine), `*_first_*` the first step/call.
`train_on_batch` medians are printed too (`*_train_on_batch_s`): they also
pay a host-side variable sync per call, which `fit` does once per epoch.

With --reference-python and --big-vision, big_vision's own figures are measured
in the same run (bench_big_vision.py, in a subprocess, before ours, never at
the same time) and the ratios ours / big_vision are printed (lower is better)
with the targets. --rounds N alternates reference and ours N times and reports
medians over rounds. The load averages at start and end are printed: on a
2-core machine shared with other jobs, ratios from a loaded run are noise.

Usage (from the repo root):
  KERAS_BACKEND=jax python benchmarks/bench_uvim.py --steps 10 \\
      --reference-python /work/bv_venv/bin/python --big-vision /work/bv_src
  KERAS_BACKEND=tensorflow python benchmarks/bench_uvim.py ...
  KERAS_BACKEND=torch python benchmarks/bench_uvim.py ...

--host-memory reuse (the default) sets glibc's malloc in both processes to
keep freed memory for reuse (`uvim_keras.runtime.host_memory`): by default it unmaps
each step's large scratch buffer and faults it in again at the next step
(18-35 thousand page faults a train step here, in ours and the reference
alike). --host-memory default leaves glibc as it is in both.

--variant NAME (repeatable) applies a monkeypatch of uvim_keras before the
models are built (see VARIANTS below): they measure candidate changes to the
package without editing it. Default: none (the package as it is).

Prints one JSON line.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")

import numpy as np  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_CONFIG = os.path.join(REPO, "..", "shared", "bench", "bench_config.json")
TARGETS = {"stage1_step_s": 0.9, "stage2_step_s": 0.9, "greedy_decode_s": 0.5}
FIGURES = tuple(TARGETS)


# ----------------------------------------------------------------------------
# Variants: monkeypatches of uvim_keras applied before the models are built,
# to measure candidate changes to the package without editing it. The probes
# remove a part to bound what it can cost (they change the model). (The
# session-1 proposals flax_layernorm, patch_loss and decode_layout are now in
# the package.)
# ----------------------------------------------------------------------------
def _variant_no_lbg_loop():
    """Probe: no LBG while_loop at all (an upper bound on what it costs)."""
    from uvim_keras.layers import vector_quantizer as vqm

    vqm.split_dead_codewords = lambda d, c, noise, min_count, dim, **kw: (d, c)


def _variant_no_code_dropout():
    """Probe: no code dropout (an upper bound on what its argsort costs)."""
    from uvim_keras.layers import code_dropout as cdm

    cdm.CodeDropout.call = lambda self, x, training=None: x


def _variant_onehot_scatter_vq():
    """Probe: the VQ batch statistics by a one-hot matmul, not segment_sum."""
    from keras import ops

    from uvim_keras.layers import vector_quantizer as vqm

    def segment_sum(data, segment_ids, num_segments=None, sorted=False):
        onehot = ops.one_hot(segment_ids, num_segments, dtype=data.dtype)
        if len(data.shape) == 1:
            return ops.matmul(data[None, :], onehot)[0]
        return ops.matmul(ops.transpose(onehot), data)

    class _Ops:
        def __getattr__(self, name):
            return segment_sum if name == "segment_sum" else getattr(ops, name)

    vqm.ops = _Ops()


VARIANTS = {
    "no_lbg": _variant_no_lbg_loop,
    "no_code_dropout": _variant_no_code_dropout,
    "onehot_vq": _variant_onehot_scatter_vq,
}


# ----------------------------------------------------------------------------
def backend_versions():
    import keras

    out = {"backend": keras.backend.backend(), "keras": keras.__version__,
           "numpy": np.__version__, "python": platform.python_version()}
    b = out["backend"]
    if b == "jax":
        import jax
        out["jax"] = jax.__version__
    elif b == "tensorflow":
        import tensorflow as tf
        out["tensorflow"] = tf.__version__
    elif b == "torch":
        import torch
        out["torch"] = torch.__version__
    return out


def to_numpy(x):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x))


class StepStamps:
    """A fit callback stamping the end of each train batch."""

    def __new__(cls):
        import keras

        class _Stamps(keras.callbacks.Callback):
            def __init__(self):
                super().__init__()
                self.stamps = []

            def on_train_batch_begin(self, batch, logs=None):
                if not self.stamps:
                    self.stamps.append(time.perf_counter())

            def on_train_batch_end(self, batch, logs=None):
                # `logs` arrive as python floats: the step has finished.
                self.stamps.append(time.perf_counter())

        return _Stamps()


def time_fit(model, data, batch, warmup, steps):
    """fit step times: gaps between consecutive batch-end stamps.

    Returns (median, min, first step) over the steps after `warmup`.
    """
    stamps = StepStamps()
    model.fit(data, batch_size=batch, epochs=1, shuffle=False, verbose=0,
              callbacks=[stamps], steps_per_epoch=warmup + steps)
    gaps = np.diff(stamps.stamps)  # gaps[0] = first step (compile)
    timed = gaps[warmup:]
    return float(np.median(timed)), float(np.min(timed)), float(gaps[0])


def time_calls(fn, warmup, steps):
    """(median, min, first call) of fn() over `steps` calls after `warmup`."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    for _ in range(warmup - 1):
        fn()
    ts = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)), float(np.min(ts)), first


def make_data(cfg, n, rng):
    res, b = cfg["res"], n
    image = rng.uniform(-1, 1, (b, res, res, 3)).astype("float32")
    labels = np.stack(
        [rng.integers(0, cfg["num_semantics"], (b, res, res)),
         rng.integers(0, cfg["num_instances"], (b, res, res))], axis=-1).astype("int32")
    codes = rng.integers(0, cfg["dict_size"], (b, cfg["code_len"])).astype("int32")
    return image, labels, codes


def build_stage1(cfg):
    import uvim_keras

    return uvim_keras.UViMStage1(
        uvim_keras.PanopticTask(num_classes=cfg["num_semantics"],
                                max_instances=cfg["num_instances"]),
        input_size=cfg["res"], patch_size=cfg["patch"], code_len=cfg["code_len"],
        dict_size=cfg["dict_size"], codeword_dim=cfg["width"], width=cfg["width"],
        oracle_num_layers=cfg["oracle_depth"], base_num_layers=cfg["base_depth"],
        num_heads=cfg["heads"], mlp_dim=cfg["mlp_dim"], code_dropout="random",
        bottleneck_resize=True, seed=0)


def build_lm(cfg):
    import uvim_keras

    return uvim_keras.GuidingCodeLM(
        input_size=cfg["res"], patch_size=cfg["patch"], code_len=cfg["code_len"],
        dict_size=cfg["dict_size"], width=cfg["width"], num_layers=cfg["lm_layers"],
        num_heads=cfg["heads"], mlp_dim=cfg["mlp_dim"], posemb="learn")


def bench_ours(cfg, args):
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    B = cfg["batch"]
    n = (args.warmup + args.steps) * B
    image, labels, codes = make_data(cfg, n, rng)
    out = {}
    figures = set(args.only or FIGURES)

    def time_training(stage, model, data):
        model.compile(optimizer=keras.optimizers.Adafactor(1e-3))
        (out[f"{stage}_step_s"], out[f"{stage}_step_min_s"],
         out[f"{stage}_first_step_s"]) = time_fit(model, data, B, args.warmup, args.steps)
        if args.train_on_batch:
            batch = {k: v[:B] for k, v in data.items()}
            out[f"{stage}_train_on_batch_s"] = time_calls(
                lambda: model.train_on_batch(batch), args.warmup, args.steps)[0]

    if "stage1_step_s" in figures:
        time_training("stage1", build_stage1(cfg), {"image": image, "labels": labels})

    lm = build_lm(cfg)
    if "stage2_step_s" in figures:
        time_training("stage2", lm, {"image": image, "codes": codes})

    if "greedy_decode_s" in figures:
        # A fresh (untrained) LM, as the reference decodes with its initial
        # weights; its logits Dense is zero-initialised: give it random weights.
        del lm
        lm = build_lm(cfg)
        k = lm.logits_dense.kernel
        k.assign(rng.normal(0, 0.02, tuple(k.shape)).astype("float32"))
        images = image[:B]
        codes_out = to_numpy(lm.generate(images))
        if len(np.unique(codes_out)) < 2:
            raise RuntimeError("greedy decoding produced a constant code; bench is trivial")
        (out["greedy_decode_s"], out["greedy_decode_min_s"],
         out["greedy_first_call_s"]) = time_calls(
            lambda: to_numpy(lm.generate(images)), args.warmup, args.steps)
    return out


def reference_env(args):
    """The reference's environment: big_vision on PYTHONPATH, the default
    thread settings, and glibc's malloc set as ours (--host-memory)."""
    from uvim_keras.runtime.host_memory import HOST_MEMORY_ENV

    env = dict(os.environ)
    env["PYTHONPATH"] = args.big_vision + (
        os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.pop("KERAS_BACKEND", None)
    env.pop("OMP_NUM_THREADS", None)  # the reference runs as configured by default
    for key, value in HOST_MEMORY_ENV.items():
        if args.host_memory == "reuse":
            env[key] = value
        else:
            env.pop(key, None)
    return env


def run_reference(args):
    bench = os.path.join(os.path.dirname(os.path.abspath(args.config)), "bench_big_vision.py")
    proc = subprocess.run(
        [args.reference_python, bench, "--steps", str(args.reference_steps or args.steps)],
        env=reference_env(args), capture_output=True, text=True)
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
        raise RuntimeError(f"reference bench failed (rc={proc.returncode})")
    lines = [ln for ln in proc.stdout.splitlines() if ln.strip().startswith("{")]
    return json.loads(lines[-1])


# ----------------------------------------------------------------------------
# Paired mode: the reference and ours take turns in short blocks of steps, so
# that both see the same load (this machine is shared; its load moves by 2x
# within a minute). The reference runs bench_big_vision.py's own main() in a
# subprocess, with its `median_time` replaced by a worker that, once warm,
# times blocks of steps on request.
# ----------------------------------------------------------------------------
_REF_WORKER = r"""
import json, sys, time
sys.path.insert(0, sys.argv[1])
import bench_big_vision as bbv
def _serve(fn, steps):
    fn()  # compile + warm
    print(json.dumps({"ready": True}), flush=True)
    while True:
        cmd = sys.stdin.readline().strip()
        if cmd in ("next", ""):
            return 0.0
        ts = []
        for _ in range(int(cmd)):
            t = time.perf_counter(); fn(); ts.append(time.perf_counter() - t)
        print(json.dumps({"times": ts}), flush=True)
bbv.median_time = _serve
sys.argv = [sys.argv[0], "--steps", "1"]
bbv.main()
"""


class ReferenceWorker:
    """bench_big_vision.py's models, timed block by block on request."""

    def __init__(self, args):
        bench_dir = os.path.dirname(os.path.abspath(args.config))
        self.proc = subprocess.Popen(
            [args.reference_python, "-c", _REF_WORKER, bench_dir], env=reference_env(args),
            text=True,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.versions = None

    def _read(self):
        while True:
            line = self.proc.stdout.readline()
            if not line:
                raise RuntimeError("reference worker died (run bench_big_vision.py "
                                   "by hand to see why)")
            if line.startswith("{"):
                return json.loads(line)

    def wait_ready(self):
        msg = self._read()
        assert msg.get("ready"), msg

    def run(self, k):
        self.proc.stdin.write(f"{k}\n")
        self.proc.stdin.flush()
        return self._read()["times"]

    def next(self):
        self.proc.stdin.write("next\n")
        self.proc.stdin.flush()

    def finish(self):
        self.next()
        out = self._read()  # bench_big_vision's final line (its medians are 0)
        self.proc.wait(timeout=60)
        return {k: out[k] for k in ("jax",) if k in out}


def fit_block_timer(model, data, batch):
    """A callable k -> k fit step times (the first step of each fit call,
    which pays the epoch's start, is run but not counted)."""
    n = len(next(iter(data.values()))) // batch

    def run(k):
        assert k + 1 <= n
        stamps = StepStamps()
        model.fit(data, batch_size=batch, epochs=1, shuffle=False, verbose=0,
                  callbacks=[stamps], steps_per_epoch=k + 1)
        return list(np.diff(stamps.stamps)[1:])

    return run


def call_block_timer(fn):
    def run(k):
        ts = []
        for _ in range(k):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return ts

    return run


def bench_paired(cfg, args):
    """Interleaved reference/ours timings of the three figures."""
    import keras

    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    B, k = cfg["batch"], args.block
    image, labels, codes = make_data(cfg, (max(k, args.warmup) + 1) * B, rng)
    ref = ReferenceWorker(args)
    figures = []

    def pair(name, ours):
        ref.wait_ready()
        ours(args.warmup)  # compile + warm ours (the worker is warm already)
        ta, tb = [], []
        for r in range(max(1, -(-args.steps // k))):
            order = ((ref.run, tb), (ours, ta)) if r % 2 == 0 else ((ours, ta), (ref.run, tb))
            for fn, acc in order:
                acc.extend(fn(k))
        figures.append((name, ta, tb))
        ref.next()

    m1 = build_stage1(cfg)
    m1.compile(optimizer=keras.optimizers.Adafactor(1e-3))
    pair("stage1_step_s", fit_block_timer(m1, {"image": image, "labels": labels}, B))
    del m1
    lm = build_lm(cfg)
    lm.compile(optimizer=keras.optimizers.Adafactor(1e-3))
    pair("stage2_step_s", fit_block_timer(lm, {"image": image, "codes": codes}, B))
    # A fresh (untrained) LM, as the reference decodes with its initial
    # weights; its logits Dense is zero-initialised: give it random weights.
    del lm
    lm = build_lm(cfg)
    kern = lm.logits_dense.kernel
    kern.assign(rng.normal(0, 0.02, tuple(kern.shape)).astype("float32"))
    images = image[:B]
    if len(np.unique(to_numpy(lm.generate(images)))) < 2:
        raise RuntimeError("greedy decoding produced a constant code; bench is trivial")
    pair("greedy_decode_s", call_block_timer(lambda: to_numpy(lm.generate(images))))
    ref_versions = ref.finish()

    out, reference = {}, {"method": "paired", **ref_versions}
    for name, ta, tb in figures:
        out[name] = float(np.median(ta))
        out[name[:-2] + "_min_s"] = float(np.min(ta))
        reference[name] = float(np.median(tb))
        reference[name[:-2] + "_min_s"] = float(np.min(tb))
        # block-wise ratios: each block of ours against the adjacent block of
        # the reference, so slow drifts of the load cancel
        blocks = [np.median(ta[i:i + k]) / np.median(tb[i:i + k]) for i in range(0, len(ta), k)]
        out.setdefault("ratio_of_blocks", {})[name] = float(np.median(blocks))
    return out, reference


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default=DEFAULT_CONFIG,
                    help="bench_config.json; the reference script beside it reads "
                         "that same file (default: ../shared/bench/ from the repo)")
    ap.add_argument("--steps", type=int, default=10, help="timed steps per figure")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps (>= 1)")
    ap.add_argument("--reference-python", help="python of a venv with big_vision's deps")
    ap.add_argument("--big-vision", help="big_vision source dir (put on PYTHONPATH)")
    ap.add_argument("--reference-steps", type=int, help="defaults to --steps")
    ap.add_argument("--sequential", action="store_true",
                    help="run bench_big_vision.py unmodified, then ours (default with a "
                         "reference: paired, i.e. both take turns in blocks of steps)")
    ap.add_argument("--block", type=int, default=2,
                    help="paired mode: steps per turn")
    ap.add_argument("--rounds", type=int, default=1,
                    help="sequential mode: alternate reference and ours this many "
                         "times; figures are the medians over rounds")
    ap.add_argument("--no-train-on-batch", dest="train_on_batch", action="store_false",
                    help="skip the extra train_on_batch timings")
    ap.add_argument("--only", action="append", choices=FIGURES,
                    help="time only these figures (repeatable; not in paired mode)")
    ap.add_argument("--host-memory", choices=("reuse", "default"), default="reuse",
                    help="reuse: glibc's malloc keeps freed memory for reuse in both "
                         "processes (ours: uvim_keras.runtime.host_memory.reuse_host_memory(), "
                         "the reference: its HOST_MEMORY_ENV), so neither faults its step "
                         "buffers in at every step; default: glibc's defaults in both")
    ap.add_argument("--variant", action="append", default=[],
                    choices=sorted(VARIANTS),
                    help="monkeypatch uvim_keras before building (repeatable)")
    args = ap.parse_args()
    args.warmup = max(args.warmup, 1)
    args.config = os.path.abspath(args.config)
    if bool(args.reference_python) != bool(args.big_vision):
        ap.error("--reference-python and --big-vision go together")
    if args.host_memory == "reuse":
        # before anything starts the backend's threads
        from uvim_keras.runtime.host_memory import reuse_host_memory

        if not reuse_host_memory():
            ap.error("--host-memory reuse needs Linux with glibc (use --host-memory default)")
    variants = list(dict.fromkeys(args.variant))
    with open(args.config) as f:
        cfg = json.load(f)

    for name in variants:
        VARIANTS[name]()
    result = backend_versions()
    result.update({k: cfg[k] for k in ("batch", "res", "patch", "width", "code_len",
                                       "dict_size")})
    result.update({"steps": args.steps, "warmup": args.warmup,
                   "method": "sequential" if args.sequential or not args.reference_python
                   else f"paired, blocks of {args.block}", "rounds": args.rounds,
                   "variants": variants, "host_memory": args.host_memory,
                   "loadavg_start": list(os.getloadavg())})
    if args.reference_python and not args.sequential:
        ours, reference = bench_paired(cfg, args)
        result.update(ours)
        result["reference"] = reference
        result["ratio"] = {k: result[k] / reference[k] for k in FIGURES}
        result["meets_target"] = {k: result["ratio"][k] <= TARGETS[k] for k in FIGURES}
        result["targets"] = dict(TARGETS)
        result["loadavg_end"] = list(os.getloadavg())
        print(json.dumps(result))
        return
    ours_rounds, ref_rounds = [], []
    for _ in range(max(args.rounds, 1)):
        if args.reference_python:  # reference first, then ours, never together
            ref_rounds.append(run_reference(args))
        ours_rounds.append(bench_ours(cfg, args))
    for key in ours_rounds[0]:
        result[key] = float(np.median([r[key] for r in ours_rounds]))
    if args.rounds > 1:
        result["ours_rounds"] = ours_rounds
    if ref_rounds:
        reference = dict(ref_rounds[0])
        for k in FIGURES:
            reference[k] = float(np.median([r[k] for r in ref_rounds]))
        if args.rounds > 1:
            reference["rounds"] = ref_rounds
        result["reference"] = reference
        result["ratio"] = {
            k: result[k] / reference[k] for k in FIGURES if k in result and k in reference}
        result["meets_target"] = {
            k: result["ratio"][k] <= TARGETS[k] for k in result["ratio"]}
        result["targets"] = {k: TARGETS[k] for k in result["ratio"]}
    result["loadavg_end"] = list(os.getloadavg())
    print(json.dumps(result))


if __name__ == "__main__":
    main()
