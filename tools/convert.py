"""Convert ImageNet-1k / IN-22k / the embedded default into WebDataset or FFCV shards.

    python tools/convert.py SRC OUT --format {webdataset,ffcv} [options]

SRC: a class-folder tree (train/), a flat folder + --val-labels (ImageNet val), a folder
of per-synset tars (IN-22k), or embedded:train / embedded:val. Run it again with the same
arguments to resume; split across machines with --job-index / --num-jobs.
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: the project root replaces tools/ on the path,
    sys.path[0] = str(Path(__file__).resolve().parents[1])  # or tools/profile.py shadows stdlib profile

from data.labels import LabelsError  # noqa: E402
from data.shards.convert import ConvertInterrupted, Summary, convert  # noqa: E402
from data.shards.manifest import MANIFEST  # noqa: E402
from data.shards.plan import ConvertError, ConvertOptions  # noqa: E402
from data.sources import SourceError, open_source  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    d = ConvertOptions()
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("src", metavar="SRC", help="image folder, folder of synset tars, or embedded:train|val")
    p.add_argument("out", metavar="OUT", help="output folder (created; must be empty or this conversion's)")
    p.add_argument("--format", choices=("webdataset", "ffcv"), default=d.format)
    p.add_argument("--source", choices=("auto", "folders", "val", "tars", "embedded"), default="auto",
                   help="how to read SRC (default: detected)")
    p.add_argument("--val-labels", metavar="FILE", help="LOC_val_solution.csv, the devkit ground truth, "
                   "or '<file> <synset|index>' lines")
    p.add_argument("--val-synsets", metavar="FILE", help="devkit meta.mat (or synsets in ILSVRC2012_ID order) "
                   "for the devkit ground truth")
    p.add_argument("--classes", metavar="FILE", help="label order: a manifest.json or one synset per line")
    p.add_argument("--max-side", type=int, default=d.max_side, help="px; longer sides are resized to this")
    p.add_argument("--quality", type=int, default=d.quality, help="JPEG quality when re-encoding")
    p.add_argument("--no-passthrough", dest="passthrough", action="store_false",
                   help="re-encode every image, even baseline JPEGs within --max-side")
    p.add_argument("--shard-size", type=int, default=d.shard_size, help="samples per shard")
    p.add_argument("--workers", type=int, default=d.workers, help="processes")
    p.add_argument("--seed", type=int, default=d.seed, help="shuffles samples across shards")
    p.add_argument("--job-index", type=int, default=d.job_index)
    p.add_argument("--num-jobs", type=int, default=d.num_jobs)
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p.parse_args(argv)


def report(s: Summary) -> str:
    where = f"{s.out}/{MANIFEST}" if s.complete else f"{s.out}/.hide-convert/shard-*.json"
    lines = []
    if s.already_complete:
        lines.append(f"{s.out} already holds this conversion; nothing to do.")
    lines.append(f"read {s.num_read} = written {s.num_written} + skipped {s.num_skipped}"
                 + (f" (listed under 'skipped' in {where})" if s.num_skipped else ""))
    if s.images_this_run:
        lines.append(f"this run: {s.images_this_run} images in {s.seconds:.1f} s = {s.images_per_s:.0f} images/s")
    st = s.stats
    if st:
        lines.append(f"stored byte-for-byte {st.get('passthrough', 0)}, re-encoded {st.get('reencoded', 0)} "
                     f"(resized {st.get('resized', 0)}; converted to RGB from {st.get('source_modes') or 'none'})")
    if s.complete:
        lines.append(f"{s.format} shards: {s.shards_total}; manifest: {s.out}/{MANIFEST}")
    else:
        lines.append(f"job {s.job_index} of {s.num_jobs} done: {s.shards_done} of {s.shards_total} shards exist; "
                     f"the manifest is written by the run that finds them all (re-run any job then)")
    lines.extend(f"note: {n}" for n in s.notes)
    return "\n".join(lines)


def _terminate(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)  # `kill` resumes as cleanly as Ctrl-C
    opts = ConvertOptions(format=args.format, max_side=args.max_side, quality=args.quality,
                          shard_size=args.shard_size, seed=args.seed, passthrough=args.passthrough,
                          workers=args.workers, job_index=args.job_index,
                          num_jobs=args.num_jobs)
    try:
        opts.validate()
        source = open_source(args.src, args.source, args.val_labels, args.val_synsets, args.classes)
        summary = convert(source, args.out, opts, progress=not args.quiet)
    except (SourceError, LabelsError, ConvertError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (ConvertInterrupted, KeyboardInterrupt) as err:
        print(f"\n{err or 'interrupted: run the same command again to resume'}", file=sys.stderr)
        return 130
    finally:  # the work is over (done or not): a late Ctrl-C must not break interpreter shutdown
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    print(report(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
