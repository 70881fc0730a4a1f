"""UViM at the released size: uvim_keras (float32, bfloat16, int8) against
big_vision's own models, inference on this machine's CPU (issue 14, item 1).

What is built. `--preset panoptic_coco` (default; `depth_nyu`,
`colorization_imagenet`: the complete presets of
`uvim_keras.presets.registry`) gives the released architecture from the
registry's big_vision configs: the stage-II LM (ViT-L/16: 24 + 24 layers,
width 1024, 512x512 input, a 256-token code over a 4096-word dictionary)
and the whole stage-I model (ViT-B oracle + base model). Random weights,
nothing downloaded. Ours: `convert.stage1_from_big_vision_config` /
`convert.lm_from_big_vision_config` (what `checkpoints.big_vision_files.build_models`
calls, with a `dtype` for bfloat16) and `UViM.from_stage1`, i.e. what
`UViM.from_preset` holds in memory. big_vision's: `proj.uvim.vtt.Model` and
`proj.uvim.vit.Model` with the same configs (`bench_real_scale_bv.py`, in
the reference venv). Both LMs' logits kernels (zero-initialised on both
sides) get random N(0, 0.02) values. `--config tiny` shrinks everything
(64x64 input, patch 8, width 64, 2 + 2 layers, code 16, dictionary 64)
for smoke tests; it says nothing about speed.

Precisions of ours (`--precisions`, default all three):
* float32;
* bfloat16: the models built with `dtype="bfloat16"` (weights and compute);
* int8: float32 built, then `uvim.quantize("int8")` (Keras' own: every
  EinsumDense/Dense/Embedding kernel of the LM and of stage I).
The reference is big_vision in float32.

What is timed, per batch size (`--batches`, default 1 8), on the same
random images in [-1, 1]:
* predict_b{B}: ours `uvim.predict(images, batch_size=B, temperature=0)`
  (Keras' predict loop: greedy code, base model, task outputs, numpy out);
  big_vision's trainer `predict_fn` (proj/uvim/train.py) jitted: greedy
  `decode.temperature_sampling` (T=1e-7, as its configs and colabs), the
  stage-I `decode` of the code, the task's `predict_outputs`. Greedy on both
  sides for every preset (colorization included).
* generate_b{B}: the greedy code alone: ours `uvim.lm.generate(images)`,
  big_vision's jitted `temperature_sampling` (as bench_big_vision.py).
* encode_b{B} (smallest batch only): the LM's image encoder alone, to
  split generate into encoder and decode loop.
Each figure: the first call (`*_first_s`: compilation included; each batch
size is a new shape) and the median (and min) of --repeats further calls.
Ours' `value_dtype_mismatches` lists variables whose value is not of their
declared dtype: Keras' `predict` stores them back in the declared one, so
the second predict call compiles again (one slow call among the repeats; a
warning is printed).

How. Each side runs in its own subprocess, which builds its models and then
times calls on request (one JSON command a line): big_vision's
(`bench_real_scale_bv.py`, run with --reference-python) lives through the
whole run; ours runs one precision at a time (at most two copies of the
models are in memory). The reference and ours take turns, block by block
(--block calls, order alternating), never at the same time, as the paired
mode of bench_uvim.py: this machine is shared and its load moves. Every
ratio is ours / big_vision over the reference's calls taken in turn with
that precision's (`--reference-with first`: the reference takes turns with
the first precision only, the others are set beside those calls).
`--host-memory reuse` (default) sets glibc's malloc alike in both
(`uvim_keras.runtime.host_memory`, as bench_uvim.py).

Memory. weights_bytes: the bytes of every variable of the model at its
stored dtype (ours: the UViM's unique variables, int8 kernels + their
float32 scales; big_vision: its params + stage-I state). peak_rss_bytes:
`resource.getrusage(RUSAGE_SELF).ru_maxrss` of the side's process at the
end (building and quantizing included); peak_rss_since_ready_bytes: the
peak resident size after the models were built (VmHWM reset through
/proc/self/clear_refs), i.e. inference alone. Both are divided by
weights_bytes.

Bandwidth. Before the sides start, a subprocess measures this machine's
memory bandwidth over --bandwidth-mib (default 1024): the best of a numpy
copy (2 x bytes moved), a jitted jax sum and a jitted jax mat-vec of the
same bytes (best of 5 each); `bandwidth_gbs` is the largest. The decode
loop's achieved fraction of it: decode_step_bytes / (generate_b{B} /
code_len) / bandwidth, B the smallest batch; decode_step_bytes = the
decoder-block and logits variables each step reads at their stored dtype
(ours: all but the cross-attention key/value kernels, which `generate`
projects once per call; big_vision re-projects them at every step: all).
`decoder_bytes` counts every decoder-block + logits variable (the issue's
definition); `*_loop` fractions use generate - encode (the loop without the
image encoder). The bandwidth target takes the loop's fraction when
`encode` was timed (--figures ... encode), else generate's.

Targets (issue 14), printed as ratios with whether they are met:
(batch 1 below means the smallest of --batches; each target records its batch)
* float32 predict at batch 1 <= 0.8 x big_vision's;
* int8 predict at batch 1 <= 0.35 x big_vision's float32;
* first call (predict, batch 1, compilation included) no slower than
  big_vision's (ratio <= 1);
* the decode loop >= 60 % of the measured bandwidth (each precision);
* peak RSS <= 1.5 x weights (each precision; ru_maxrss).

Usage (from the repo root):
  KERAS_BACKEND=jax python benchmarks/bench_real_scale.py \\
      --reference-python /work/bv_venv/bin/python --big-vision /work/bv_src
  python benchmarks/bench_real_scale.py --preset depth_nyu --batches 1 --repeats 2 ...
  python benchmarks/bench_real_scale.py --config tiny --skip-reference    # seconds
  python benchmarks/bench_real_scale.py --backend tensorflow --skip-reference ...
At the released size one predict of 8 images takes minutes on 2 cores:
the whole default run is in the order of 10-20 minutes and ~10 GB of memory
on a quiet machine; --repeats 1-2 and --batches 1 keep it shorter.

Prints a table, then one JSON line (the last line of stdout); --out FILE
writes the same JSON.
"""

import argparse
import copy
import gc
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from bench_uvim import backend_versions, call_block_timer, reference_env, to_numpy

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
DEFAULT_BENCH_DIR = os.path.join(REPO, "..", "shared", "bench")
PRECISIONS = ("float32", "bfloat16", "int8")
FIGURES = ("predict", "generate", "encode")

#: (name, what, bound, "<=" or ">="); the last two apply to each precision
TARGETS = (
    ("float32_predict_ratio", "float32 predict / big_vision's", 0.8, "<="),
    ("int8_predict_ratio", "int8 predict / big_vision's float32", 0.35, "<="),
    ("float32_first_call_ratio", "first predict call / big_vision's", 1.0, "<="),
    ("decode_bw_fraction", "decode loop, fraction of bandwidth", 0.6, ">="),
    ("rss_over_weights", "peak RSS / weights", 1.5, "<="),
)

# A tiny stand-in for the released architecture (smoke tests, not speed).
TINY_RES, TINY_PATCH, TINY_CODE, TINY_DICT, TINY_WIDTH, TINY_CHANNELS = 64, 8, 16, 64, 64, 16


# -----------------------------------------------------------------------------
# Configs
# -----------------------------------------------------------------------------
def model_configs(preset, size="released"):
    """{"task", "stage1", "lm", "task_config", "temperature"}: big_vision's
    model kwargs of a complete registry preset, or their tiny stand-in."""
    from uvim_keras.presets.registry import PRESETS, get_preset

    spec = get_preset(preset)
    if spec is None or spec.kind != "uvim":
        names = [n for n, s in PRESETS.items() if s.kind == "uvim"]
        raise SystemExit(f"--preset {preset!r}: expected one of {names}")
    s1, lm = copy.deepcopy(spec.stage1_config), copy.deepcopy(spec.lm_config)
    if size == "tiny":
        p = TINY_PATCH * TINY_PATCH
        inputs = {k: [min(int(shape[0]), TINY_CHANNELS), p] for k, shape in s1["inputs"].items()}
        s1.update(input_size=[TINY_RES, TINY_RES], patch_size=[TINY_PATCH, TINY_PATCH],
                  code_len=TINY_CODE, width=TINY_WIDTH, enc_depth=2, dec_depth=2,
                  mlp_dim=2 * TINY_WIDTH, num_heads=2, dict_size=TINY_DICT,
                  codeword_dim=TINY_WIDTH, inputs=inputs, outputs=copy.deepcopy(inputs))
        lm.update(num_layers=2, num_heads=2, mlp_dim=2 * TINY_WIDTH, emb_dim=TINY_WIDTH,
                  patches={"size": [TINY_PATCH, TINY_PATCH]}, vocab_size=TINY_DICT + 1,
                  input_size=[TINY_RES, TINY_RES], seq_len=TINY_CODE)
    return {"task": spec.task, "stage1": s1, "lm": lm, "task_config": dict(spec.task_config),
            "temperature": spec.temperature}


def bench_images(cfg, batch, seed=0):
    """The images both sides are timed on, (batch, H, W, 3) float32 in [-1, 1]."""
    h, w = cfg["lm"]["input_size"]
    return np.random.default_rng(seed).uniform(-1, 1, (batch, h, w, 3)).astype("float32")


def figure_plan(batches, figures):
    """[(figure, batch)] in the order they are timed."""
    plan = []
    for b in batches:
        plan += [(f, b) for f in ("predict", "generate") if f in figures]
    if "encode" in figures:
        plan.append(("encode", min(batches)))
    return plan


# -----------------------------------------------------------------------------
# Workers: one process per side; the protocol is one JSON object a line on a
# private copy of stdout (fd 1 itself goes to stderr, so libraries that print
# cannot break it).
# -----------------------------------------------------------------------------
def protocol_stream():
    stream = os.fdopen(os.dup(1), "w", buffering=1)
    sys.stdout.flush()
    os.dup2(2, 1)
    return stream


def peak_rss_bytes():
    """ru_maxrss of this process, in bytes."""
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(rss) * (1 if sys.platform == "darwin" else 1024)


def _proc_status_bytes(field):
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def reset_peak_rss():
    """Resets VmHWM (Linux >= 4.0); True if it could."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def serve(fns, info, stream):
    """Answers timing requests until "exit".

    fns: {figure: batch -> callable that runs one call and waits for it}.
    Requests: {"op": "first" | "time", "fig", "batch"[, "n"]}, {"op": "stats"},
    {"op": "exit"}.
    """
    gc.collect()
    rss_ready = _proc_status_bytes("VmRSS")
    hwm_reset = reset_peak_rss()

    def send(obj):
        stream.write(json.dumps(obj) + "\n")
        stream.flush()

    send({"ready": True, **info})
    calls = {}
    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd["op"]
        if op == "exit":
            break
        if op == "stats":
            send({"peak_rss_bytes": peak_rss_bytes(), "rss_at_ready_bytes": rss_ready,
                  "peak_rss_since_ready_bytes":
                      _proc_status_bytes("VmHWM") if hwm_reset else None})
            continue
        key = (cmd["fig"], cmd["batch"])
        if key not in calls:
            calls[key] = fns[cmd["fig"]](cmd["batch"])
        if op == "first":
            t = time.perf_counter()
            calls[key]()
            send({"s": time.perf_counter() - t})
        elif op == "time":
            send({"times": call_block_timer(calls[key])(int(cmd["n"]))})
        else:
            raise ValueError(f"unknown op {op!r}")


def variable_bytes(variables):
    """Bytes of the unique variables at their stored dtype."""
    seen, total = set(), 0
    for v in variables:
        if id(v) in seen:
            continue
        seen.add(id(v))
        total += int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
    return total


def build_ours(cfg, precision):
    """(uvim, lm): the UViM of `cfg` at `precision`, random weights."""
    from uvim_keras.checkpoints import big_vision as convert
    from uvim_keras.models.uvim import UViM

    kwargs = {"dtype": "bfloat16"} if precision == "bfloat16" else {}
    stage1 = convert.stage1_from_big_vision_config(
        cfg["stage1"], task_config=cfg["task_config"], **kwargs)
    lm = convert.lm_from_big_vision_config(cfg["lm"], **kwargs)
    uvim = UViM.from_stage1(lm, stage1, cfg["temperature"], **kwargs)
    # The logits Dense is zero-initialised (as big_vision's): random weights,
    # so argmax is not trivial.
    kernel = lm.logits_dense.kernel
    kernel.assign(np.random.default_rng(1).normal(0, 0.02, tuple(kernel.shape)).astype("float32"))
    if precision == "int8":
        uvim.quantize("int8")
    return uvim, lm


def decoder_bytes(lm):
    """(bytes the decode loop reads per step, bytes of all decoder-block and
    logits variables) of our LM, at their stored dtype."""
    per_step = everything = 0
    layers = list(lm.decoder_blocks) + [lm.decoder_norm, lm.logits_dense]
    hoisted = set()
    for block in lm.decoder_blocks:  # projected once per generate call
        for layer in (block.cross_attention.key, block.cross_attention.value):
            hoisted.update(id(v) for v in layer.weights)
    for layer in layers:
        for v in layer.weights:
            n = int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize
            everything += n
            per_step += 0 if id(v) in hoisted else n
    return per_step, everything


def value_dtype_mismatches(model):
    """Paths of variables whose value's dtype is not their declared dtype (a
    compiled call that syncs them back changes its inputs' dtypes, so the
    next call compiles again)."""
    import keras

    return sorted(v.path for v in model.variables if keras.backend.standardize_dtype(
        v.value.dtype) != keras.backend.standardize_dtype(v.dtype))


def ours_worker(args):
    stream = protocol_stream()
    if args.host_memory == "reuse":  # before the backend starts its threads
        from uvim_keras.runtime.host_memory import reuse_host_memory

        if not reuse_host_memory():
            raise SystemExit("--host-memory reuse needs Linux with glibc")
    import keras

    from uvim_keras.runtime.backend import compile_stateless

    cfg = model_configs(args.preset, args.config)
    keras.utils.set_random_seed(0)
    t0 = time.perf_counter()
    uvim, lm = build_ours(cfg, args.precision)
    build_s = time.perf_counter() - t0
    images = bench_images(cfg, max(args.batches))
    encode = compile_stateless(lm, lambda image: lm.encode(image, training=False))

    def predict(b):
        return lambda: uvim.predict(images[:b], batch_size=b, verbose=0, temperature=0.0)

    def generate(b):
        return lambda: to_numpy(lm.generate(images[:b]))

    def encoder(b):
        x = keras.ops.convert_to_tensor(images[:b])
        return lambda: to_numpy(encode(x))

    step, everything = decoder_bytes(lm)
    info = {"versions": backend_versions(), "precision": args.precision, "build_s": build_s,
            "weights_bytes": variable_bytes(uvim.weights), "lm_weights_bytes":
            variable_bytes(lm.weights), "decode_step_bytes": step, "decoder_bytes": everything,
            "code_len": lm.code_len, "value_dtype_mismatches": value_dtype_mismatches(uvim)}
    serve({"predict": predict, "generate": generate, "encode": encoder}, info, stream)


def measure_bandwidth(mib, reps=5):
    """Memory bandwidth over `mib` MiB: the best of a numpy copy, a jitted
    jax sum and a jitted jax mat-vec (GB/s)."""
    n = max(mib, 4) * 2**20 // 4
    a = np.ones(n, np.float32)
    b = np.zeros_like(a)

    def best(fn):
        fn()
        ts = []
        for _ in range(reps):
            t = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t)
        return min(ts)

    out = {"bytes": int(a.nbytes),
           "numpy_copy_gbs": 2 * a.nbytes / best(lambda: np.copyto(b, a)) / 1e9}
    del b
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        pass
    else:
        x = jnp.asarray(a.reshape(1024, -1))
        del a
        v = jnp.ones((x.shape[1],), jnp.float32)
        total = jax.jit(jnp.sum)
        matvec = jax.jit(lambda m, v: m @ v)
        nbytes = out["bytes"]
        out["jax_sum_gbs"] = nbytes / best(lambda: total(x).block_until_ready()) / 1e9
        out["jax_matvec_gbs"] = nbytes / best(lambda: matvec(x, v).block_until_ready()) / 1e9
        out["jax"] = jax.__version__
    out["gbs"] = max(v for k, v in out.items() if k.endswith("_gbs"))
    return out


# -----------------------------------------------------------------------------
# The run: workers taking turns
# -----------------------------------------------------------------------------
def say(*a):
    print("[bench_real_scale]", *a, file=sys.stderr, flush=True)


class Worker:
    """A side's subprocess, timing calls on request (see `serve`)."""

    def __init__(self, name, argv, env):
        self.name = name
        self.log = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(argv, env=env, text=True, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self.log)
        self.compiled = set()
        self.info = self._read()
        if not self.info.get("ready"):
            raise RuntimeError(f"{name}: unexpected first message {self.info}")

    def _read(self):
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=30)
            self.log.seek(0)
            tail = self.log.read()[-4000:]
            raise RuntimeError(f"{self.name} worker died (rc={self.proc.returncode}):\n{tail}")
        return json.loads(line)

    def ask(self, **cmd):
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self):
        stats = self.ask(op="stats")
        self.proc.stdin.write(json.dumps({"op": "exit"}) + "\n")
        self.proc.stdin.close()
        self.proc.wait(timeout=120)
        self.log.close()
        return stats


def worker_argv(args, side, precision=None):
    common = ["--preset", args.preset, "--config", args.config, "--host-memory",
              args.host_memory, "--batches", *map(str, args.batches)]
    if side == "ours":
        return [sys.executable, os.path.abspath(__file__), "--worker", "ours",
                "--precision", precision, *common]
    cfg = model_configs(args.preset, args.config)
    return [args.reference_python, os.path.join(HERE, "bench_real_scale_bv.py"),
            "--spec", json.dumps(cfg), "--bench-dir", args.bench_dir,
            "--max-batch", str(max(args.batches))]


def take_turns(sides, plan, args, turns):
    """Times every (figure, batch) of `plan` on `sides` [(name, Worker)],
    block by block, order alternating; first calls first (reference first).
    Returns {figure key: {side: {"times": [...], "first": s or None}}}."""
    out = {}
    rounds = max(1, -(-args.repeats // args.block))
    for fig, batch in plan:
        key = f"{fig}_b{batch}"
        rec = out.setdefault(key, {name: {"times": [], "first": None} for name, _ in sides})
        for name, w in sides:
            if (fig, batch) not in w.compiled:
                rec[name]["first"] = w.ask(op="first", fig=fig, batch=batch)["s"]
                w.compiled.add((fig, batch))
        for r in range(rounds):
            order = sides if (r + turns) % 2 == 0 else sides[::-1]
            for name, w in order:
                n = min(args.block, args.repeats - len(rec[name]["times"]))
                if n > 0:
                    rec[name]["times"] += w.ask(op="time", fig=fig, batch=batch, n=n)["times"]
        say(key, ", ".join(f"{name} {np.median(rec[name]['times']):.4g} s" for name, _ in sides))
    return out


def summarize(times):
    """{fig: median, fig_min, fig_first} from take_turns' records of one side."""
    out = {}
    for key, rec in times.items():
        out[key + "_s"] = float(np.median(rec["times"]))
        out[key + "_min_s"] = float(np.min(rec["times"]))
        if rec["first"] is not None:
            out[key + "_first_s"] = float(rec["first"])
    return out


def memory_and_bandwidth(side, bandwidth, batch):
    """Adds the RSS/weights ratios and the decode loop's bandwidth fractions."""
    w = side["weights_bytes"]
    side["rss_over_weights"] = side["peak_rss_bytes"] / w
    if side.get("peak_rss_since_ready_bytes"):
        side["rss_since_ready_over_weights"] = side["peak_rss_since_ready_bytes"] / w
    gen = side.get(f"generate_b{batch}_s")
    if gen:
        per_step = gen / side["code_len"]
        side["decode_step_s"] = per_step
        side["decode_gbs"] = side["decode_step_bytes"] / per_step / 1e9
    if gen and bandwidth:
        side["decode_bw_fraction"] = side["decode_gbs"] / bandwidth
        side["decode_bw_fraction_all_kernels"] = side["decoder_bytes"] / per_step / 1e9 / bandwidth
        enc = side.get(f"encode_b{batch}_s")
        if enc is not None and gen > enc:
            loop = (gen - enc) / side["code_len"]
            side["decode_loop_step_s"] = loop
            side["decode_loop_bw_fraction"] = side["decode_step_bytes"] / loop / 1e9 / bandwidth


def run(args):
    result = {"preset": args.preset, "config": args.config, "backend": args.backend,
              "precisions": list(args.precisions), "batches": list(args.batches),
              "repeats": args.repeats, "block": args.block, "host_memory": args.host_memory,
              "reference_with": None if args.skip_reference else args.reference_with,
              "figures": list(args.figures), "python": platform.python_version(),
              "loadavg_start": list(os.getloadavg())}
    cfg = model_configs(args.preset, args.config)
    result["code_len"] = cfg["lm"]["seq_len"]
    result["input_size"] = list(cfg["lm"]["input_size"])
    if args.bandwidth_mib > 0:
        say(f"memory bandwidth over {args.bandwidth_mib} MiB ...")
        proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--worker",
                               "bandwidth", "--bandwidth-mib", str(args.bandwidth_mib)],
                              capture_output=True, text=True)
        if proc.returncode:
            sys.stderr.write(proc.stderr[-4000:])
            raise RuntimeError("bandwidth measurement failed")
        result["bandwidth"] = json.loads(proc.stdout.strip().splitlines()[-1])
        say(f"bandwidth {result['bandwidth']['gbs']:.1f} GB/s")
    bandwidth = result.get("bandwidth", {}).get("gbs")
    plan = figure_plan(args.batches, args.figures)
    env = dict(os.environ, KERAS_BACKEND=args.backend)

    ref = None
    if not args.skip_reference:
        say("building big_vision's models ...")
        ref = Worker("big_vision", worker_argv(args, "reference"), reference_env(args))
        say(f"big_vision ready ({ref.info['build_s']:.1f} s)")
    ours, pairs, ref_times = {}, {}, {}
    for i, precision in enumerate(args.precisions):
        say(f"building ours ({args.backend}, {precision}) ...")
        w = Worker(f"ours {precision}", worker_argv(args, "ours", precision), env)
        say(f"ours {precision} ready ({w.info['build_s']:.1f} s)")
        if w.info["value_dtype_mismatches"]:
            say(f"warning: ours {precision}: {len(w.info['value_dtype_mismatches'])} variables "
                "hold values of another dtype than declared (the second predict call "
                f"compiles again): {w.info['value_dtype_mismatches'][:4]}")
        paired = ref is not None and (args.reference_with == "each" or i == 0)
        sides = [("big_vision", ref), ("ours", w)] if paired else [("ours", w)]
        times = take_turns(sides, plan, args, i)
        ours[precision] = {**w.info, **summarize({k: v["ours"] for k, v in times.items()}),
                           **w.close()}
        del ours[precision]["ready"]
        if paired:
            pairs[precision] = {k: v["big_vision"] for k, v in times.items()}
            for k, v in pairs[precision].items():
                rec = ref_times.setdefault(k, {"times": [], "first": None})
                rec["times"] += v["times"]
                rec["first"] = rec["first"] if v["first"] is None else v["first"]
    if ref is not None:
        reference = {**ref.info, **summarize(ref_times), **ref.close()}
        del reference["ready"]
        result["reference"] = reference
    bmin = min(args.batches)
    for side in list(ours.values()) + ([result["reference"]] if ref is not None else []):
        memory_and_bandwidth(side, bandwidth, bmin)
    result["ours"] = ours
    result["versions"] = next(iter(ours.values()))["versions"] if ours else {}

    if ref is not None:
        ratio = {}
        for precision, side in ours.items():
            # over the reference calls taken in turn with this precision's
            # (the first precision's with --reference-with first)
            turns = pairs.get(precision) or pairs[args.precisions[0]]
            r, reference = {}, result["reference"]
            for key, rec in turns.items():
                if key + "_s" in side:
                    r[key] = side[key + "_s"] / float(np.median(rec["times"]))
                if key + "_first_s" in side and key + "_first_s" in reference:
                    r[key + "_first"] = side[key + "_first_s"] / reference[key + "_first_s"]
            ratio[precision] = r
        result["ratio"] = ratio
    result["targets"] = targets(result, bmin)
    result["loadavg_end"] = list(os.getloadavg())
    return result


def targets(result, bmin):
    """{name: {"value", "bound", "op", "meets"}} for the issue's targets that
    this run measured."""
    ratio, ours = result.get("ratio", {}), result["ours"]
    values = {}
    if "float32" in ratio and f"predict_b{bmin}" in ratio["float32"]:
        values["float32_predict_ratio"] = ratio["float32"][f"predict_b{bmin}"]
    if "int8" in ratio and f"predict_b{bmin}" in ratio["int8"]:
        values["int8_predict_ratio"] = ratio["int8"][f"predict_b{bmin}"]
    if "float32" in ratio and f"predict_b{bmin}_first" in ratio["float32"]:
        values["float32_first_call_ratio"] = ratio["float32"][f"predict_b{bmin}_first"]
    for precision, side in ours.items():
        # The target is the decode loop's: generate - encode when both were timed.
        loop = side.get("decode_loop_bw_fraction", side.get("decode_bw_fraction"))
        if loop is not None:
            values[f"{precision}_decode_bw_fraction"] = loop
        values[f"{precision}_rss_over_weights"] = side["rss_over_weights"]
    out = {}
    for name, value in values.items():
        for tname, what, bound, op in TARGETS:
            if name == tname or name.endswith("_" + tname):
                meets = value <= bound if op == "<=" else value >= bound
                out[name] = {"value": value, "bound": bound, "op": op, "meets": bool(meets),
                             "what": what, "batch": bmin}
    return out


# -----------------------------------------------------------------------------
# Report
# -----------------------------------------------------------------------------
def _fmt(v, unit=""):
    if v is None:
        return "-"
    if unit == "MB":
        return f"{v / 1e6:.1f}"
    if unit == "%":
        return f"{100 * v:.1f}%"
    return f"{v:.4g}"


def table(result):
    cols = [("big_vision f32", result["reference"])] if "reference" in result else []
    cols += [(f"ours {p}", s) for p, s in result["ours"].items()]
    ratio = result.get("ratio", {})
    head = ["figure"] + [c for c, _ in cols] + [f"ratio {p}" for p in ratio]
    rows = []
    keys = []
    for fig, b in figure_plan(result["batches"], result["figures"]):
        keys += [f"{fig}_b{b}", f"{fig}_b{b}_first"]
    for key in keys:
        row = [key + " (s)"] + [_fmt((s or {}).get(key + "_s")) for _, s in cols]
        row += [_fmt(ratio[p].get(key)) for p in ratio]
        rows.append(row)
    for key, unit in (("weights_bytes", "MB"), ("peak_rss_bytes", "MB"),
                      ("peak_rss_since_ready_bytes", "MB"), ("rss_over_weights", ""),
                      ("decode_step_bytes", "MB"), ("decode_gbs", ""),
                      ("decode_bw_fraction", "%"), ("decode_loop_bw_fraction", "%")):
        label = key.replace("_bytes", " (MB)") if unit == "MB" else key
        rows.append([label] + [_fmt((s or {}).get(key), unit) for _, s in cols]
                    + [""] * len(ratio))
    widths = [max(len(str(r[i])) for r in [head] + rows) for i in range(len(head))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)) for r in [head] + rows]
    bw = result.get("bandwidth")
    if bw:
        lines.append(f"memory bandwidth: {bw['gbs']:.2f} GB/s (" + ", ".join(
            f"{k[:-4]} {v:.2f}" for k, v in bw.items() if k.endswith("_gbs") and k != "gbs")
            + f"; {bw['bytes'] / 2**20:.0f} MiB)")
    for name, t in result["targets"].items():
        lines.append(f"target {name}: {t['value']:.3g} {t['op']} {t['bound']} "
                     f"({t['what']}): {'met' if t['meets'] else 'NOT met'}")
    return "\n".join(lines)


# -----------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="panoptic_coco",
                    help="a complete preset of the registry (panoptic_coco, depth_nyu, "
                         "colorization_imagenet)")
    ap.add_argument("--config", choices=("released", "tiny"), default="released",
                    help="released: the preset's architecture; tiny: a small stand-in "
                         "(smoke tests)")
    ap.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 8])
    ap.add_argument("--figures", nargs="+", choices=FIGURES, default=list(FIGURES))
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed calls per figure and side after the first")
    ap.add_argument("--block", type=int, default=1, help="calls per turn")
    ap.add_argument("--backend", default=os.environ.get("KERAS_BACKEND", "jax"),
                    choices=("jax", "tensorflow", "torch"),
                    help="KERAS_BACKEND of ours (default: the environment's, else jax)")
    ap.add_argument("--reference-python", default="/work/bv_venv/bin/python",
                    help="python of a venv with big_vision's deps (jax, flax, ...)")
    ap.add_argument("--big-vision", default="/work/bv_src",
                    help="big_vision source dir (put on the reference's PYTHONPATH)")
    ap.add_argument("--bench-dir", default=DEFAULT_BENCH_DIR,
                    help="the folder of bench_big_vision.py (its imports are reused)")
    ap.add_argument("--skip-reference", action="store_true", help="ours only")
    ap.add_argument("--reference-with", choices=("each", "first"), default="each",
                    help="each: the reference takes turns with every precision; first: "
                         "with the first only (shorter)")
    ap.add_argument("--host-memory", choices=("reuse", "default"), default="reuse",
                    help="glibc's malloc in both sides: keep freed memory (as "
                         "bench_uvim.py) or glibc's defaults")
    ap.add_argument("--bandwidth-mib", type=int, default=None,
                    help="MiB streamed to measure bandwidth (default 1024; tiny: 256; "
                         "0: skip)")
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--worker", choices=("ours", "bandwidth"), help=argparse.SUPPRESS)
    ap.add_argument("--precision", choices=PRECISIONS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.bandwidth_mib is None:
        args.bandwidth_mib = 256 if args.config == "tiny" else 1024
    args.repeats, args.block = max(args.repeats, 1), max(args.block, 1)
    args.precisions = list(dict.fromkeys(args.precisions))
    args.batches = list(dict.fromkeys(args.batches))
    args.bench_dir = os.path.abspath(args.bench_dir)
    if not args.skip_reference:
        missing = [p for p in (args.reference_python, args.big_vision,
                               os.path.join(args.bench_dir, "bench_big_vision.py"))
                   if not os.path.exists(p)]
        if missing:
            ap.error(f"reference: {missing} not found (--skip-reference runs ours only)")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.worker == "ours":
        os.environ["KERAS_BACKEND"] = args.backend
        return ours_worker(args)
    if args.worker == "bandwidth":
        print(json.dumps(measure_bandwidth(args.bandwidth_mib)))
        return
    os.environ["KERAS_BACKEND"] = args.backend  # for the registry's import of keras
    result = run(args)
    print(table(result), flush=True)
    line = json.dumps(result)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(line + "\n")
    print(line)


if __name__ == "__main__":
    main()
