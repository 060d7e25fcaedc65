"""Run a conversion: plan -> shards written by worker processes -> manifest.json.

Resumable: each finished shard leaves a record in ``OUT/.hide-convert/``, written after
the shard itself was renamed into place; a re-run with the same arguments skips shards
that have a record and writes the rest. Shards are not fsynced (a killed process loses
nothing that reached the page cache, and flushing every shard cost 13 % of a pass-through
conversion); after a machine crash a shard may be torn, so a record also holds the byte
sizes of its files and a shard whose files differ from them is written again. The manifest is written by whichever run finds
every shard's record present (the last job of a split conversion, or any re-run), after
which the state folder is removed. For FFCV the shards are part tars inside the state
folder and finishing streams them into ``data.beton``.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from data.images import BadImage, configure_pillow, prepare
from data.shards.ffcv import BETON, write_beton
from data.shards.manifest import MANIFEST, VERSION, write_json_atomic
from data.shards.plan import ConvertError, ConvertOptions, Plan, make_plan
from data.shards.webdataset import ShardWriter, shard_stem
from data.sources import Source, read_bytes

STATE = ".hide-convert"


class ConvertInterrupted(Exception):
    """Ctrl-C or SIGTERM: finished shards are kept; the same command resumes."""


@dataclass
class Summary:
    out: str
    format: str
    complete: bool            # manifest.json is written
    already_complete: bool    # it was written before this run
    num_read: int             # inputs accounted for so far (all of them once complete)
    num_written: int
    num_skipped: int
    shards_done: int
    shards_total: int
    images_this_run: int
    seconds: float
    job_index: int = 0
    num_jobs: int = 1
    stats: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def images_per_s(self) -> float:
        return self.images_this_run / self.seconds if self.seconds > 0 else 0.0


def convert(source: Source, out: str | Path, opts: ConvertOptions, progress: bool = True) -> Summary:
    """Convert `source` into `out`. Raises ConvertError / ConvertInterrupted, never half-writes."""
    opts.validate()
    out, t0 = Path(out), time.perf_counter()
    plan = make_plan(source, opts)
    state = out / STATE
    identity = {"options": opts.identity(), "source": source.describe(), "plan": plan.fingerprint}
    manifest = _claim_out(out, identity)
    if manifest is not None:
        return _summary(out, manifest, opts, len(plan.shards), 0, 0.0, already=True)
    write_json_atomic(state / "state.json", identity)

    mine = plan.shards_of_job(opts.job_index, opts.num_jobs)
    _remove_stale_tmp(out, state, mine)
    todo = [s for s in mine if not _shard_done(out, state, s, opts.format)]
    images = sum(len(plan.shards[s]) for s in todo)
    _run(todo, plan, source.classes, out, state, opts, images, progress)

    records = [_load_record(state, s) for s in range(len(plan.shards))]
    seconds = time.perf_counter() - t0
    if all(r is not None for r in records):
        manifest = _finalize(out, state, source, opts, plan, records)
        return _summary(out, manifest, opts, len(plan.shards), images, seconds, notes=source.notes)
    done = [r for r in records if r is not None]
    partial = _totals(source, done)
    return Summary(str(out), opts.format, False, False, partial["num_read"], partial["num_written"],
                   len(partial["skipped"]), len(done), len(plan.shards), images, seconds,
                   opts.job_index, opts.num_jobs, partial["stats"], source.notes)


# ----------------------------------------------------------------------------- OUT and state

def _claim_out(out: Path, identity: dict) -> dict | None:
    """Check that OUT is ours to write. Returns the manifest if this conversion is complete."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise ConvertError(f"cannot write to OUT {out}: {err.strerror or err}; "
                           f"pass a folder you can create and write") from None
    for path in (out / MANIFEST, out / STATE / "state.json"):
        if path.is_file():
            try:
                previous = json.loads(path.read_text())
            except json.JSONDecodeError:
                raise ConvertError(f"{path} is damaged; delete OUT {out} and convert again") from None
            if previous.get("plan") != identity["plan"]:
                raise ConvertError(f"OUT {out} holds a different conversion "
                                   f"({_difference(previous, identity)}); pass a new OUT or delete it")
            return previous if path.name == MANIFEST else None
    foreign = sorted(e.name for e in os.scandir(out) if e.name != STATE)
    if foreign:
        raise ConvertError(f"OUT {out} is not empty ({len(foreign)} entries, e.g. {foreign[:3]}) and "
                           f"holds no conversion; pass an empty or new folder")
    (out / STATE).mkdir(exist_ok=True)
    return None


def _difference(previous: dict, identity: dict) -> str:
    old, new = previous.get("options", {}), identity["options"]
    diffs = [f"{k}: {old.get(k)} -> {new[k]}" for k in new if old.get(k) != new[k]]
    if previous.get("source") != identity["source"]:
        diffs.append(f"source: {previous.get('source', {}).get('root')} -> {identity['source']['root']}")
    return "; ".join(diffs) or "same options, but the inputs changed (files added, removed or relabelled)"


def _record_path(state: Path, s: int) -> Path:
    return state / f"{shard_stem(s)}.json"


def _shard_path(out: Path, state: Path, s: int, fmt: str) -> Path:
    """Final tar of shard s: OUT/shard-*.tar (webdataset) or a part tar in the state dir (ffcv)."""
    return (out if fmt == "webdataset" else state) / f"{shard_stem(s)}.tar"


def _load_record(state: Path, s: int) -> dict | None:
    path = _record_path(state, s)
    return json.loads(path.read_text()) if path.is_file() else None


def _shard_done(out: Path, state: Path, s: int, fmt: str) -> bool:
    record = _load_record(state, s)
    if record is None:
        return False
    tar = _shard_path(out, state, s, fmt)
    files = {tar.name: tar, tar.with_suffix(".idx").name: tar.with_suffix(".idx")}
    for name, size in record.get("sizes", {}).items():
        if not files[name].is_file() or files[name].stat().st_size != size:
            _record_path(state, s).unlink()  # deleted or torn since: write it again
            return False
    return True


def _remove_stale_tmp(out: Path, state: Path, shards: list[int]) -> None:
    """Temporary files of this job's shards left by an interrupted run (never another job's)."""
    stems = {shard_stem(s) for s in shards}
    for folder in (out, state):
        for entry in os.scandir(folder):
            if ".tmp-" in entry.name and entry.name.split(".", 1)[0] in stems:
                os.unlink(entry.path)


# ----------------------------------------------------------------------------- workers

_WORKER: dict = {}  # per-process context: classes, options, progress tick


def _setup_worker(classes: list[str], opts: dict, counter) -> None:
    configure_pillow()
    _WORKER.update(classes=classes, opts=ConvertOptions(**opts), counter=counter)


def _pool_init(classes, opts, counter) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)   # the parent decides what Ctrl-C does
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # so Pool.terminate() ends us
    _setup_worker(classes, opts, counter)


def _write_shard(task: tuple) -> dict:
    """Worker: prepare every sample of one shard, publish the shard, then its record."""
    s, samples, tar_path, record_path, with_index = task
    opts, classes, counter = _WORKER["opts"], _WORKER["classes"], _WORKER["counter"]
    writer = ShardWriter(Path(tar_path), index=with_index)
    skipped, stats, modes, ticks = [], Counter(), Counter(), 0
    try:
        for key, path, label, ref in samples:
            try:
                p = prepare(read_bytes(ref), opts.max_side, opts.quality, opts.passthrough)
            except BadImage as err:
                skipped.append({"path": path, "reason": str(err)})
            except OSError as err:
                skipped.append({"path": path, "reason": f"unreadable file: {err.strerror or err}"})
            else:
                writer.write(key, p.jpeg, label, {
                    "source": path, "label": label, "class": classes[label],
                    "size": list(p.size), "source_size": list(p.source_size),
                    "passthrough": p.passthrough})
                stats["passthrough" if p.passthrough else "reencoded"] += 1
                stats["resized"] += p.resized
                if p.source_mode != "RGB":
                    modes[p.source_mode] += 1
            ticks += 1
            if ticks == 16:  # the shared counter feeds the progress bar; its lock is not free
                with counter.get_lock():
                    counter.value += ticks
                ticks = 0
        with counter.get_lock():
            counter.value += ticks
        published = writer.commit()
    except BaseException:
        writer.abort()
        raise
    files = [writer.tar_path, writer.idx_path] if published else []
    record = {"index": s, "file": Path(tar_path).name if published else None,
              "sizes": {p.name: p.stat().st_size for p in files if p is not None},
              "num_samples": writer.num_samples, "num_read": len(samples), "skipped": skipped,
              "stats": dict(stats), "source_modes": dict(modes)}
    write_json_atomic(Path(record_path), record)
    return record


def _run(todo: list[int], plan: Plan, classes: list[str], out: Path, state: Path,
         opts: ConvertOptions, images: int, progress: bool) -> None:
    def task(s: int) -> tuple:
        return (s, [(x.key, x.item.path, x.item.label, x.item.ref) for x in plan.shards[s]],
                str(_shard_path(out, state, s, opts.format)), str(_record_path(state, s)),
                opts.format == "webdataset")

    if todo:
        import webdataset  # noqa: F401  -- once here, so forked workers inherit it
    counter = mp.Value("q", 0)
    bar = tqdm(total=images, unit="img", disable=not progress, smoothing=0.05,
               desc=f"convert {opts.format}" + (f" job {opts.job_index}/{opts.num_jobs}" if opts.num_jobs > 1 else ""))
    try:
        if opts.workers == 1 or len(todo) <= 1:
            _setup_worker(classes, opts.__dict__, counter)
            for s in todo:
                _write_shard(task(s))
                bar.update(counter.value - bar.n)
        else:
            with mp.Pool(min(opts.workers, len(todo)), initializer=_pool_init,
                         initargs=(classes, opts.__dict__, counter)) as pool:
                # tasks are built as the pool takes them: no second copy of a 14 M-image plan
                results = pool.imap_unordered(_write_shard, (task(s) for s in todo))
                for _ in range(len(todo)):
                    while True:
                        try:
                            results.next(timeout=0.1)  # a worker's unexpected error surfaces here
                            break
                        except mp.TimeoutError:
                            bar.update(counter.value - bar.n)
                    bar.update(counter.value - bar.n)
        bar.update(counter.value - bar.n)
    except KeyboardInterrupt:
        raise ConvertInterrupted(f"interrupted after {counter.value} of {images} images; "
                                 f"finished shards are kept: run the same command again to resume") from None
    finally:
        bar.close()


# ----------------------------------------------------------------------------- finishing

def _totals(source: Source, records: list[dict]) -> dict:
    stats, modes = Counter(), Counter()
    for r in records:
        stats.update(r["stats"])
        modes.update(r["source_modes"])
    skipped = list(source.skipped) + [x for r in records for x in r["skipped"]]
    written = sum(r["num_samples"] for r in records)
    return {"num_read": len(source.skipped) + sum(r["num_read"] for r in records),
            "num_written": written, "skipped": skipped,
            "stats": {**{k: stats.get(k, 0) for k in ("passthrough", "reencoded", "resized")},
                      "source_modes": dict(sorted(modes.items()))}}


def _finalize(out: Path, state: Path, source: Source, opts: ConvertOptions, plan: Plan,
              records: list[dict]) -> dict:
    with _Lock(state / "finalize.lock"):
        totals = _totals(source, records)
        if opts.format == "webdataset":
            shards = [{"file": r["file"], "index": Path(r["file"]).with_suffix(".idx").name,
                       "num_samples": r["num_samples"]} for r in records if r["file"]]
        else:
            parts = [state / r["file"] for r in records if r["file"]]
            n = write_beton(parts, out / BETON, opts.workers) if parts else 0
            if n != totals["num_written"]:
                raise ConvertError(f"FFCV wrote {n} samples, the parts hold {totals['num_written']}; "
                                   f"delete OUT and convert again")
            shards = [{"file": BETON, "num_samples": n}] if parts else []
        manifest = {
            "version": VERSION, "format": opts.format, "num_samples": totals["num_written"],
            "num_read": totals["num_read"], "classes": list(source.classes), "shards": shards,
            "skipped": totals["skipped"], "options": opts.identity(), "source": source.describe(),
            "plan": plan.fingerprint, "stats": totals["stats"]}
        write_json_atomic(out / MANIFEST, manifest, durable=True)
    shutil.rmtree(state, ignore_errors=True)
    return manifest


def _summary(out: Path, manifest: dict, opts: ConvertOptions, shards_total: int, images: int,
             seconds: float, already: bool = False, notes: list[str] | None = None) -> Summary:
    return Summary(str(out), manifest["format"], True, already,
                   manifest["num_read"], manifest["num_samples"], len(manifest["skipped"]),
                   shards_total, shards_total, images, seconds, opts.job_index, opts.num_jobs,
                   manifest["stats"], list(notes or []))


class _Lock:
    """An exclusive lock file for writing the manifest; a dead owner's lock on this host is taken over."""

    def __init__(self, path: Path):
        self.path, self.owner = path, f"{socket.gethostname()} {os.getpid()}"

    def __enter__(self):
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                host, _, pid = self.path.read_text().partition(" ")
                if host == socket.gethostname() and not _alive(int(pid or 0)):
                    self.path.unlink(missing_ok=True)
                    continue
                raise ConvertError(f"another job ({host} pid {pid}) is writing the manifest of this "
                                   f"conversion; wait for it (if it was killed, delete {self.path} "
                                   f"and run again)") from None
            os.write(fd, self.owner.encode())
            os.close(fd)
            return self
        raise ConvertError(f"cannot take the lock {self.path}; delete it and run again")

    def __exit__(self, *exc):
        self.path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return pid > 0
