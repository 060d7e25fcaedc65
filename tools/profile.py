"""Throughput profiler. Prints its figures as JSON, each measured against its baseline in
the same run.

    python tools/profile.py convert [--images N] [--workers W] [--repeats R]

convert: the converter (re-encoding, and with pass-through) against a naive single-process
PIL loop on the same generated ImageNet-like trees (see data/shards/benchmark.py). (Loader and model profiles come with
their issues.)
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # `python tools/profile.py` from anywhere: find the project
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


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
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
