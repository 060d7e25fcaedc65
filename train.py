"""Entry point of the product: `accelerate launch train.py [--config FILE] [key=value ...]`.

The trainer (the `train/` package: config, methods, engine) is built by the trainer issue.
Until it lands this entry point says so and exits non-zero, rather than pretending to train.
"""
import sys


def main() -> int:
    print("error: the trainer is not built yet (it comes with the trainer issue). "
          "What works now: python tools/convert.py SRC OUT --format {webdataset,ffcv}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
