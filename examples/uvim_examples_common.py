"""What `train_stage1.py` and `train_stage2.py` share: flags, distribution,
data, optimizer and the resumable run. (Named uniquely: the scripts import it
from their directory, where a generic `common` could be shadowed.)"""

import argparse
import contextlib
import importlib.util
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _load_configs():
    """examples/configs as the module `uvim_examples_configs`."""
    name = "uvim_examples_configs"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(
            name, os.path.join(HERE, "configs", "__init__.py"),
            submodule_search_locations=[os.path.join(HERE, "configs")])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


configs = _load_configs()


def base_parser(description):
    p = argparse.ArgumentParser(description=description,
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--task", required=True, choices=configs.TASKS)
    p.add_argument("--workdir", required=True,
                   help="checkpoints (workdir/checkpoints), logs (workdir/logs: TensorBoard + "
                        "metrics.jsonl) and the final model go here")
    p.add_argument("--singlehost", action="store_true",
                   help="big_vision's low-resource ':singlehost' variant of the recipe")
    p.add_argument("--smoke", action="store_true",
                   help="tiny model, 2 steps, batch 2, small images, tfds mock data (no "
                        "download): checks that the script runs end to end")
    p.add_argument("--data-dir", default=None, help="tensorflow-datasets data directory")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size")
    p.add_argument("--steps", type=int, default=None, help="total steps (overrides --epochs)")
    p.add_argument("--epochs", type=float, default=None, help="total epochs (default: recipe)")
    p.add_argument("--distribution", choices=("none", "data", "model"), default="none",
                   help="keras.distribution (JAX): data parallel over all devices, or model "
                        "parallel on a --mesh")
    p.add_argument("--mesh", default=None,
                   help="model parallelism: device mesh 'data,model', e.g. 2,4 (default "
                        "1,<all devices>)")
    p.add_argument("--multi-host", action="store_true",
                   help="call keras.distribution.initialize() first (TPU pods: no settings; "
                        "GPU hosts: set KERAS_DISTRIBUTION_JOB_ADDRESSES, _NUM_PROCESSES and "
                        "_PROCESS_ID), then --distribution spans all hosts' devices")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from the newest checkpoint in the workdir (--no-resume: "
                        "refuse a workdir that has checkpoints)")
    p.add_argument("--data-resume", choices=("skip", "reseed"), default="skip",
                   help="after a resume, 'skip' re-reads the consumed batches (exactly the "
                        "uninterrupted run's data, slow after many steps); 'reseed' starts "
                        "a new shuffle/augmentation stream seeded by the step (fast)")
    p.add_argument("--seed", type=int, default=None, help="default: the recipe's (0)")
    p.add_argument("--checkpoint-every", type=int, default=None)
    p.add_argument("--log-every", type=int, default=None)
    p.add_argument("--dtype-policy", default=None,
                   help="e.g. mixed_bfloat16 (big_vision trains in float32)")
    p.add_argument("--reuse-host-memory", action="store_true",
                   help="CPU training: keep glibc from unmapping each step's large scratch "
                        "buffer (uvim_keras.runtime.host_memory; 20-25%% faster steps at the "
                        "benchmark config); the process keeps the memory it frees")
    p.add_argument("--verbose", type=int, default=1, choices=(0, 1, 2))
    p.add_argument("--dry-run", action="store_true",
                   help="print the resolved recipe (JSON) and exit without building anything")
    return p


def config_from_args(args, stage):
    variant = "smoke" if args.smoke else ("singlehost" if args.singlehost else "paper")
    cfg = configs.get_config(args.task, stage, variant)
    train = cfg["train"]
    for key in ("batch_size", "steps", "epochs", "seed", "checkpoint_every", "log_every"):
        value = getattr(args, key)
        if value is not None:
            train[key] = value
    if args.epochs is not None and args.steps is None:
        train["steps"] = None
    return cfg


def setup(args, cfg):
    """Host memory, seeds, dtype policy and the distribution (before any
    model is built)."""
    if args.reuse_host_memory:
        from uvim_keras.runtime.host_memory import reuse_host_memory

        reuse_host_memory()
    import keras

    if args.multi_host:
        keras.distribution.initialize()
    keras.utils.set_random_seed(cfg["train"]["seed"])
    if args.dtype_policy:
        keras.config.set_dtype_policy(args.dtype_policy)
    set_distribution(args.distribution, args.mesh)


def set_distribution(kind, mesh=None):
    import keras

    if kind == "none":
        return None
    if keras.backend.backend() != "jax":
        raise SystemExit(f"--distribution {kind} needs the JAX backend (KERAS_BACKEND=jax); "
                         f"this is {keras.backend.backend()}.")
    if kind == "data":
        try:
            from uvim_keras.models.sharding import data_parallel
        except ImportError:
            distribution = keras.distribution.DataParallel()
        else:
            distribution = data_parallel()
    else:
        try:
            from uvim_keras.models.sharding import model_parallel
        except ImportError as e:
            raise SystemExit(f"--distribution model needs uvim_keras.models.sharding ({e}).")
        n = len(keras.distribution.list_devices())
        shape = (1, n) if mesh is None else tuple(int(x) for x in mesh.split(","))
        distribution = model_parallel(shape)
    keras.distribution.set_distribution(distribution)
    return distribution


def mock_data(cfg):
    """tfds mock data for a smoke run (offline), else nothing."""
    n = cfg["train"]["mock_examples"]
    if not n:
        return contextlib.nullcontext()
    import tensorflow_datasets as tfds
    from absl import logging

    logging.set_verbosity(logging.ERROR)  # mock examples warn about deprecated dtype fields
    return tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE)


def schedule_steps(cfg, warn=False):
    """(total_steps, steps_per_epoch, warmup_steps) of the run."""
    train, module = cfg["train"], cfg["module"]
    batch = int(train["batch_size"])
    if train.get("steps"):
        total = int(train["steps"])
    else:  # big_vision's u.steps: round(epochs * examples / batch), at least 1
        total = max(1, round(float(train["epochs"]) * module.TRAIN_EXAMPLES / batch))
    per_epoch = total if cfg["variant"] == "smoke" else max(1, module.TRAIN_EXAMPLES // batch)
    warmup = int(train["warmup_steps"])
    if total > 1 and warmup >= total:
        if warn:
            print(f"warmup_steps {warmup} >= total_steps {total}: using {total // 10} warmup "
                  "steps instead.", flush=True)
        warmup = total // 10
    return total, min(per_epoch, total), warmup


def make_optimizer(cfg, total_steps, warmup_steps, lr_multipliers=None):
    from uvim_keras.optimizers import BigVisionAdafactor, CosineWarmup

    train = cfg["train"]
    return BigVisionAdafactor(
        learning_rate=CosineWarmup(train["lr"], total_steps, warmup_steps=warmup_steps),
        weight_decay=train["wd"], lr_multipliers=lr_multipliers,
        global_clipnorm=train["grad_clip_norm"])


def data_fn(cfg, args, size, label_size):
    """make_dataset(start_step) for `fit_resumable`: a freshly built training
    pipeline, positioned at `start_step` as --data-resume says."""
    train, module = cfg["train"], cfg["module"]
    split = "train" if cfg["variant"] == "smoke" else module.TRAIN_SPLIT
    seed = int(train["seed"])

    def make(start_step):
        import tensorflow as tf

        stream_seed = seed
        if start_step and args.data_resume == "reseed":
            stream_seed = (seed * 1_000_003 + start_step) % (2**31 - 1)
        tf.random.set_seed(stream_seed)  # tf.data combines shuffle seeds with it
        ds = module.dataset(split, data_dir=args.data_dir, train=True,
                            batch_size=train["batch_size"], size=size, label_size=label_size,
                            seed=stream_seed, shuffle_buffer=train["shuffle_buffer"],
                            **train["dataset_kwargs"])
        if start_step and args.data_resume == "skip":
            ds = ds.skip(start_step)
        return ds

    return make


def recipe(cfg, extra=None):
    """The resolved run as a JSON-able dict (written to <workdir>/config.json)."""
    total, per_epoch, warmup = schedule_steps(cfg)
    train = {k: v for k, v in cfg["train"].items() if k != "dataset_kwargs"}
    return json.loads(json.dumps(
        {"task": cfg["task"], "stage": cfg["stage"], "variant": cfg["variant"],
         "dataset": cfg["module"].DATASET, "train_split": cfg["module"].TRAIN_SPLIT,
         "model": cfg["model"], **train, "total_steps": total, "steps_per_epoch": per_epoch,
         "warmup_steps": warmup, **(extra or {})}, default=str))


def dry_run(cfg, extra=None):
    print(json.dumps(recipe(cfg, extra), indent=1), flush=True)


def write_recipe(cfg, workdir, extra=None):
    """Writes <workdir>/config.json; warns when a resumed run changed it."""
    from uvim_keras.training import is_main_process

    if not is_main_process():
        return
    describe = recipe(cfg, extra)
    path = os.path.join(workdir, "config.json")
    if os.path.exists(path):
        with open(path) as f:
            before = json.load(f)
        changed = sorted(k for k in set(before) | set(describe) if before.get(k) != describe.get(k))
        if changed:
            print(f"warning: the recipe differs from the one in {path}: "
                  + ", ".join(f"{k} {before.get(k)!r} -> {describe.get(k)!r}" for k in changed),
                  flush=True)
    os.makedirs(workdir, exist_ok=True)
    with open(path, "w") as f:
        json.dump(describe, f, indent=1)


def run(model, cfg, args, make_dataset, extra=None):
    """`fit_resumable` with the recipe's periods; returns its `FitResult`."""
    from uvim_keras.training import fit_resumable

    train = cfg["train"]
    total, per_epoch, _ = schedule_steps(cfg)
    write_recipe(cfg, args.workdir, extra)
    result = fit_resumable(
        model, make_dataset, workdir=args.workdir, total_steps=total, steps_per_epoch=per_epoch,
        checkpoint_every=train["checkpoint_every"], keep=2,
        keep_every_n_steps=train["keep_every_n_steps"], log_every=train["log_every"],
        resume=args.resume, extra={"task": cfg["task"], "stage": cfg["stage"]},
        verbose=args.verbose)
    if result.restored is not None:
        print(f"resumed from {result.restored.path} (step {result.restored.step})", flush=True)
    print(f"trained steps {result.start_step} -> {result.step} of {total}", flush=True)
    return result
