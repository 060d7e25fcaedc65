"""hide's trainer: ``accelerate launch train.py [--config FILE] [key=value ...]``.

Without --config it trains the embedded default (train/configs/demo.yaml): a tiny ViT on the
embedded hide-shapes dataset, on the CPU in minutes. Recipes: train/configs/*.yaml.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="recipe YAML (default: train/configs/demo.yaml)")
    parser.add_argument("overrides", nargs="*", help="dot-overrides, e.g. optim.epochs=300 data.batch_size=64")
    args = parser.parse_args(argv)

    from data.loader import LoaderError
    from data.sampler import SamplerError
    from data.shards.manifest import ManifestError
    from data.shards.samples import SampleError
    from train.checkpoint import CheckpointError
    from train.config import ConfigError, load_config

    try:
        cfg = load_config(args.config, args.overrides)
        from train.engine import Trainer, TrainingError, format_summary

        trainer = Trainer(cfg)
        try:
            summary = trainer.fit()
        finally:
            trainer.close()
    except (ConfigError, CheckpointError, LoaderError, SamplerError, ManifestError, SampleError) as err:
        print(f"train.py: error: {err}", file=sys.stderr)
        return 2
    except TrainingError as err:
        print(f"train.py: stopped: {err}", file=sys.stderr)
        return 1
    print(format_summary(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.path[0] = __import__("os").path.dirname(__import__("os").path.abspath(__file__))
    sys.exit(main())
