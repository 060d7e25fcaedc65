"""Throughput profiler. Prints its figures as JSON, each measured against its baseline in
the same run.

    python tools/profile.py convert [--images N] [--workers W] [--repeats R]
    python tools/profile.py model [--model NAME] [--batch B] [--masks K] [--device cuda]
    python tools/profile.py loader --data OUT [--engine dali] [--recipe multicrop] [--batch-size B]
                                   [--batches N] [--compare]
    python tools/profile.py train --recipe ibot_attmask [--data OUT|synthetic] [--compare block] [--steps N]
                                  [--trace DIR] [key=value ...]
    python tools/profile.py train --recipe extrema [--masks K] --compare naive [key=value ...]
    python tools/profile.py train --recipe sdae --compare {mae,full_teacher} [key=value ...]
    python tools/profile.py train --recipe mae --masks K [key=value ...]     (against one mask)
    python tools/profile.py train --recipe lcmae [--masks K] --compare {mae,naive} [key=value ...]

convert: the converter (re-encoding, and with pass-through) against a naive single-process
PIL loop on the same generated ImageNet-like trees (see data/shards/benchmark.py).
model: the [CLS]-attention overhead of forward_full, and one batched B*K forward_visible
against a loop of K forwards (see model/benchmark.py).
loader: images/s, views/s and data wait per batch of a loader engine on converted shards;
--compare also runs the reference engine on the same shards (see data/loader_benchmark.py).
train: one training step of a recipe: images/s, the per-phase time split, FLOPs and MFU (on a
GPU). On a CPU the batch per process is min(the recipe's, 16) unless data.batch_size= is given;
a step that would not fit in memory is refused with its estimate before it is allocated; --compare MASKING runs the same steps with that masking interleaved and prints the
step-time ratio; --compare naive runs the same step computed the naive way (the teacher once
per mask, the student masks in a Python loop) and prints shared / naive (see
train/benchmark.py). key=value arguments override the recipe's config.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the project root replaces tools/ on the path,
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # or tools/profile.py shadows stdlib profile


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="what", required=True)
    c = sub.add_parser("convert", help="converter vs a naive PIL loop")
    c.add_argument("--images", type=int, default=4000, help="images in the generated tree")
    c.add_argument("--workers", type=int, default=2, help="converter processes")
    c.add_argument("--repeats", type=int, default=3, help="runs per figure (median reported)")
    c.add_argument("--shard-size", type=int, default=1000, help="samples per shard (the converter's default)")
    c.add_argument("--large-every", type=int, default=10, help="every Nth image of the mixed tree is 1024x768")
    c.add_argument("--workdir", help="where to generate the tree (default: a temporary folder)")
    m = sub.add_parser("model", help="[CLS]-attention overhead, batched vs looped masked forwards")
    m.add_argument("--model", default="vit_small_patch16_224", help="timm ViT name")
    m.add_argument("--batch", type=int, default=16)
    m.add_argument("--masks", type=int, default=5, help="K keep-sets per image")
    m.add_argument("--mask-ratio", type=float, default=0.8)
    m.add_argument("--repeats", type=int, default=10)
    m.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ld = sub.add_parser("loader", help="loader engine throughput, optionally against the reference")
    ld.add_argument("--data", required=True, help="a folder written by tools/convert.py")
    ld.add_argument("--engine", choices=("dali", "ffcv", "reference"), default="dali")
    ld.add_argument("--recipe", default="multicrop",
                    choices=("multicrop", "shared_crop_two_colors", "src_pair", "single_rrc"))
    ld.add_argument("--batch-size", type=int, default=32)
    ld.add_argument("--batches", type=int, default=20)
    ld.add_argument("--workers", type=int, default=2, help="DALI threads / DataLoader workers")
    ld.add_argument("--device", default="cuda" if _cuda() else "cpu")
    ld.add_argument("--compare", action="store_true", help="also run the reference engine and print the ratio")
    t = sub.add_parser("train", help="training-step throughput and phase split of a recipe")
    t.add_argument("--recipe", choices=sorted(TRAIN_RECIPES), default="ibot_attmask")
    t.add_argument("--data", default="embedded:train",
                   help="shards folder (default: the embedded dataset), or synthetic: batches of the recipe's "
                        "view shapes made on the device (the model side alone: no shards, no decoding)")
    t.add_argument("--compare", help="what to time the step against: another method.masking (e.g. block), "
                                     "naive, mae or full_teacher (sdae), one_mask (mae), mae or naive (lcmae)")
    t.add_argument("--masks", type=int, help="ExtreMA, LC-MAE: student masks K against one teacher forward; MAE: masks per "
                                                  "decoded image (method.n_masks)")
    t.add_argument("--steps", type=int, default=10, help="timed steps (medians reported)")
    t.add_argument("--trace", help="write a torch.profiler trace of the timed steps into this folder "
                                   "(TensorBoard, Perfetto); the times then include the profiler's overhead")
    t.add_argument("--warmup", type=int, default=2)
    t.add_argument("overrides", nargs="*", help="config overrides, e.g. data.batch_size=32 model.arch=vit_base_patch16_224")
    return p.parse_args(argv)


CPU_BATCH = 16  # train: the batch per process on a CPU, unless data.batch_size= is given

TRAIN_RECIPES = {"ibot_attmask": "ibot_attmask_vits16.yaml", "dino_attmask": "dino_attmask_vits16.yaml",
                 "demo": "demo.yaml", "extrema": "extrema_vits16.yaml", "extrema_vitb16": "extrema_vitb16.yaml",
                 "mae": "mae_vitb16.yaml", "sdae": "sdae_vitb16.yaml", "lcmae": "lcmae_vitb16.yaml",
                 "lcmae_vits16": "lcmae_vits16.yaml"}
# what each recipe's step can be timed against (train/benchmark.py); --masks: K masks of one image
COMPARES = {"ibot_attmask": "maskings", "dino_attmask": "maskings", "demo": "maskings",  # train.config.MASKINGS
            "extrema": ("naive",), "extrema_vitb16": ("naive",), "mae": ("one_mask",),
            "sdae": ("mae", "full_teacher", "naive"), "lcmae": ("mae", "naive"), "lcmae_vits16": ("mae", "naive")}
MASKS = ("extrema", "extrema_vitb16", "mae", "lcmae", "lcmae_vits16")


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.what == "model":
        return _model(args)
    if args.what == "loader":
        return _loader(args)
    if args.what == "train":
        return _train(args)
    if args.images < 10 or args.repeats < 1 or args.workers < 1 or args.large_every < 1:
        print("error: need --images >= 10, --repeats >= 1, --workers >= 1, --large-every >= 1",
              file=sys.stderr)
        return 2
    from data.shards.benchmark import benchmark_convert

    with tempfile.TemporaryDirectory(dir=args.workdir) as work:
        result = benchmark_convert(Path(work), args.images, args.workers, args.repeats, args.shard_size,
                                   args.large_every)
    result["cpus"] = os.cpu_count()
    print(json.dumps(result, indent=1))
    return 0


def _loader(args) -> int:
    from data.loader import LoaderError
    from data.loader_benchmark import benchmark_loader
    from data.sampler import SamplerError
    from data.shards.manifest import ManifestError

    if args.batch_size < 1 or args.batches < 1 or args.workers < 0:
        print("error: need --batch-size >= 1, --batches >= 1, --workers >= 0", file=sys.stderr)
        return 2
    try:
        result = benchmark_loader(args.data, args.engine, args.recipe, args.batch_size, args.batches,
                                  args.workers, args.device, args.compare)
    except (ManifestError, LoaderError, SamplerError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


def _train(args) -> int:
    import tempfile

    from train.benchmark import StepTooLarge, benchmark_train
    from train.config import CONFIGS, MASKINGS, ConfigError, load_config
    from data.loader import LoaderError

    if args.steps < 1 or args.warmup < 0:
        print("error: need --steps >= 1 and --warmup >= 0", file=sys.stderr)
        return 2
    allowed = MASKINGS if COMPARES[args.recipe] == "maskings" else COMPARES[args.recipe]
    if args.compare and args.compare not in allowed:
        print(f"error: --compare for the {args.recipe} recipe must be one of {', '.join(allowed)}", file=sys.stderr)
        return 2
    if args.masks is not None and (args.recipe not in MASKS or args.masks < 1):
        print(f"error: --masks K (>= 1) applies to the {', '.join(MASKS)} recipes only", file=sys.stderr)
        return 2
    trace = None
    if args.trace:
        trace = Path(args.trace).resolve()
        if trace.exists() and (not trace.is_dir() or any(f for f in trace.iterdir() if ".pt.trace.json" not in f.name)):
            print(f"error: --trace {args.trace} exists and holds something other than traces; give a new or "
                  f"empty folder", file=sys.stderr)
            return 2
        trace = str(trace)
    if args.recipe == "mae" and args.masks and args.masks > 1 and not args.compare:
        args.compare = "one_mask"  # K masks per decoded image, timed against one
    with tempfile.TemporaryDirectory() as work:
        overrides = [f"data.train={args.data}", "data.val=", f"run.dir={work}/run",
                     f"data.embedded_dir={work}/shards"] + list(args.overrides)
        if args.masks is not None:
            overrides.append(f"method.n_masks={args.masks}")
        recipe = str(CONFIGS / TRAIN_RECIPES[args.recipe])
        try:
            if not _cuda() and not any(o.startswith("data.batch_size=") for o in args.overrides):
                # the recipes' batches are a GPU's; a CPU runs the same step on CPU_BATCH images
                asked = load_config(recipe, overrides).data.batch_size
                overrides.append(f"data.batch_size={min(asked, CPU_BATCH)}")
            result = benchmark_train(recipe, overrides, args.steps, args.warmup, args.compare, trace)
        except (ConfigError, LoaderError, StepTooLarge) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    result["recipe"] = args.recipe
    print(json.dumps(result, indent=1))
    return 0


def _model(args) -> int:
    import torch

    from model.benchmark import benchmark_model

    if args.batch < 1 or args.masks < 1 or args.repeats < 1 or not 0 < args.mask_ratio < 1:
        print("error: need --batch, --masks, --repeats >= 1 and 0 < --mask-ratio < 1", file=sys.stderr)
        return 2
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is visible; use --device cpu", file=sys.stderr)
        return 2
    if args.masks * int(196 * (1 - args.mask_ratio)) > 196:
        print(f"error: {args.masks} disjoint masks keeping {1 - args.mask_ratio:.0%} do not fit in 196 tokens",
              file=sys.stderr)
        return 2
    try:
        result = benchmark_model(args.model, args.batch, args.masks, args.mask_ratio, args.repeats,
                                 device=args.device)
    except (RuntimeError, ValueError) as err:  # unknown model name, ...
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
