"""build_loader(folder, engine, recipe, ...) -> an iterable of ``Views`` batches on the device.

Engines:
- ``dali``       production: data/dali.py (GPU with CUDA, DALI's CPU mode without).
- ``ffcv``       FFCV's JIT pipeline decodes once and cuts every crop on the CPU
                 (data/ffcv_ops.py); flip and colour run batched on the device (data/color.py).
                 FFCV betons only; its simple resized crop stays inside the image (no padding).
- ``reference``  torchvision v2 / PIL in DataLoader workers (data/reference.py): the baseline.

All read the shards in the order of data/sampler.py (dali and reference through
data/shards/samples.py, ffcv through FFCV's sequential order over those indices), so
the same (seed, epoch, rank, world size) gives the same samples in the same order on
every engine, every rank yields the same number of batches, and ``state()`` /
``load_state()`` resume mid-epoch: the sample order is exact on every engine. With
``exact_resume=True`` the dali and reference engines also give the same augmentations as an
uninterrupted run (they replay the epoch's augmentation stream up to the position); without
it, and always on ffcv (its JIT crops draw from per-thread generators), the draws after a
resume are fresh.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from data.sampler import LoaderPosition, eval_order, rank_order
from data.shards.samples import check_sample, open_samples, replacement_sources
from data.views import Recipe

ENGINES = ("dali", "ffcv", "reference")


class LoaderError(ValueError):
    """A loader cannot be built as asked; the message names the option and the fix."""


@dataclass
class Views:
    """One batch. ``views[group]`` is a list of [B, 3, S, S] tensors (recipe order)."""
    views: dict[str, list[torch.Tensor]]
    labels: torch.Tensor               # [B] int64
    ids: torch.Tensor                  # [B] global sample ids (data/shards/samples.py)

    @property
    def global_views(self) -> list[torch.Tensor]:
        return self.views.get("global", [])

    @property
    def local_views(self) -> list[torch.Tensor]:
        return self.views.get("local", [])


@dataclass
class LoaderStats:
    batches: int = 0
    images: int = 0
    corrupt: list[dict] = field(default_factory=list)  # {shard, key, epoch}, skipped samples


class Positioned:
    """A loader's place in training (``self.position``), kept in checkpoints to resume."""

    position: LoaderPosition

    def set_epoch(self, epoch: int) -> None:
        self.position = LoaderPosition(epoch, 0)

    def state(self) -> dict:
        return self.position.as_dict()

    def load_state(self, state: dict) -> None:
        self.position = LoaderPosition.from_dict(state)


class Loader(Positioned):
    def __init__(self, folder, engine: str, recipe: Recipe, batch_size: int, rank: int = 0, world: int = 1,
                 seed: int = 0, device: str = "cpu", workers: int = 2, dtype=torch.float32,
                 strict: bool = False, exact_resume: bool = False, evaluation: bool = False):
        if engine not in ENGINES:
            raise LoaderError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
        if batch_size < 1:
            raise LoaderError("batch_size must be at least 1")
        self.samples = open_samples(folder)
        self.engine, self.recipe, self.batch_size = engine, recipe.validate(), batch_size
        self.rank, self.world, self.seed = rank, world, seed
        self.device, self.workers, self.dtype, self.strict = torch.device(device), workers, dtype, strict
        self.exact_resume, self.evaluation = exact_resume, evaluation
        self.position = LoaderPosition()
        self.stats = LoaderStats()
        self.order(0)  # fails early (one line) when the data cannot fill a batch on every rank
        if engine == "ffcv":
            self._check_ffcv(folder)
            if any(v.crop is not None and v.crop.kind == "center" for v in self.recipe.views):
                raise LoaderError("engine ffcv has no centre-crop (evaluation) transform; use engine dali or reference")

    def _check_ffcv(self, folder) -> None:
        if self.samples.manifest["format"] != "ffcv":
            raise LoaderError(f"engine ffcv reads FFCV betons, and {folder} holds WebDataset shards; "
                              f"convert with --format ffcv or use engine dali")


    def order(self, epoch: int) -> np.ndarray:
        """This rank's sample ids for the epoch. evaluation=True: every sample once over the
        ranks, in id order, the last batch padded with repeats (drop them by ``Views.ids``)."""
        if self.evaluation:
            return eval_order(int(sum(self.samples.counts)), self.rank, self.world, self.batch_size)
        return rank_order(self.samples.counts, self.seed, epoch, self.rank, self.world, self.batch_size)

    def __len__(self) -> int:
        return len(self.order(self.position.epoch)) // self.batch_size

    def __iter__(self):
        epoch, start = self.position.epoch, self.position.batches
        ids = self.order(epoch)
        # exact_resume: the dali and reference engines draw their augmentations from one stream
        # per (seed, epoch, rank); a mid-epoch resume replays that stream from the epoch's start
        # and drops the batches already consumed, so it yields the very batches an uninterrupted
        # run would (cost: decoding those batches again). Otherwise the stream is re-seeded at
        # the position (fresh draws, no replay).
        replay = start if self.exact_resume and self.engine != "ffcv" else 0
        first = start - replay
        engines = {"dali": lambda: self._dali(epoch, first), "ffcv": lambda: self._ffcv(epoch, first, ids),
                   "reference": lambda: self._reference(epoch, first, ids)}
        batches = engines[self.engine]()
        for _ in range(replay):
            next(batches)
        for b, (views, labels) in enumerate(batches, start=start):
            batch_ids = torch.from_numpy(ids[b * self.batch_size:(b + 1) * self.batch_size])
            self.position = LoaderPosition(epoch, b + 1)
            self.stats.batches += 1
            self.stats.images += len(labels)
            yield Views(views, labels, batch_ids)
        self.position = LoaderPosition(epoch + 1, 0)

    # ------------------------------------------------------------------ engines

    def _dali(self, epoch: int, start: int):
        from data.dali import SampleFeed, views_pipeline

        feed = SampleFeed(self.samples, self.batch_size, self.seed, self.rank, self.world,
                          start_epoch=epoch, start_batch=start, strict=self.strict, order_fn=self.order)
        gpu = self.device.type == "cuda"
        pipe = views_pipeline(self.recipe, feed, decode_device="mixed" if gpu else "cpu",
                              batch_size=self.batch_size, num_threads=max(1, self.workers),
                              device_id=(self.device.index or 0) if gpu else None,
                              seed=int(np.random.default_rng([self.seed, epoch, start, self.rank]).integers(2**31)))
        pipe.build()
        seen = 0  # feed.corrupt entries already in the stats (the feed may run ahead by the prefetch depth)
        try:
            for _ in range(feed.num_batches(epoch) - start):
                outs = pipe.run()
                self.stats.corrupt.extend(feed.corrupt[seen:])
                seen = len(feed.corrupt)
                tensors = [self._to_torch(o) for o in outs]
                yield self._group(tensors[:-1]), tensors[-1]
        finally:
            self.stats.corrupt.extend(feed.corrupt[seen:])
            del pipe

    def _to_torch(self, tensor_list) -> torch.Tensor:
        from nvidia.dali.tensors import TensorListGPU

        if isinstance(tensor_list, TensorListGPU):  # copy device to device, no host trip
            from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

            t = tensor_list.as_tensor()
            out = torch.empty(t.shape(), dtype=to_torch_type[t.dtype], device=self.device)
            feed_ndarray(t, out, cuda_stream=torch.cuda.current_stream(self.device))
        else:
            out = torch.from_numpy(np.array(tensor_list.as_tensor()))
        return out if out.dtype == torch.int64 else out.to(self.device, self.dtype, non_blocking=True)

    def _group(self, tensors: list[torch.Tensor]) -> dict[str, list[torch.Tensor]]:
        out = {g: [] for g in self.recipe.groups}
        for v, t in zip(self.recipe.views, tensors):
            out[v.group].append(t)
        return out

    def _ffcv(self, epoch: int, start: int, ids: np.ndarray):
        from ffcv.fields.decoders import IntDecoder
        from ffcv.loader import Loader as FFCVLoader
        from ffcv.loader import OrderOption
        from ffcv.transforms import ToTensor

        from data.color import apply_color
        from data.ffcv_ops import MultiCropRGBImageDecoder, split_views

        own = [v for v in self.recipe.views if v.crop is not None]
        groups = [(v.crop.size, 1, v.crop.scale, v.crop.ratio, v.crop.kind) for v in own]
        indices = ids[start * self.batch_size:]
        if getattr(self, "_ffcv_loader", None) is None:  # built once: a new one per epoch leaked ~16 MB
            self._ffcv_loader = FFCVLoader(
                str(self.samples.path), batch_size=self.batch_size, num_workers=max(1, self.workers),
                order=OrderOption.SEQUENTIAL, indices=indices, drop_last=True,
                pipelines={"image": [MultiCropRGBImageDecoder(groups), ToTensor()],
                           "label": [IntDecoder(), ToTensor()]})
        loader = self._ffcv_loader
        loader.indices = loader.traversal_order.indices = np.asarray(indices)  # this epoch's order
        g = torch.Generator(self.device).manual_seed(
            int(np.random.default_rng([self.seed, epoch, start, self.rank]).integers(2**31)))
        for k, (rows, labels) in enumerate(loader):
            batch_ids = indices[k * self.batch_size:(k + 1) * self.batch_size]
            bad = self._corrupt_in(batch_ids, epoch)
            if bad:  # FFCV decodes a damaged JPEG into garbage silently: reuse good samples instead
                src = torch.tensor(replacement_sources(len(batch_ids), bad))
                rows, labels = rows.clone(), labels.clone()
                rows[torch.tensor(bad)], labels[torch.tensor(bad)] = rows[src], labels[src]
            # rows live in FFCV's reused buffers: apply_color's float conversion below copies them
            crops = dict(zip((v.name for v in own), (c[0] for c in split_views(rows.to(self.device), groups))))
            flips, out = {}, {grp: [] for grp in self.recipe.groups}
            for v in self.recipe.views:
                source = v.name if v.crop is not None else v.shares_crop_of
                if source not in flips:  # a crop's flip is drawn once and shared with its sharers
                    flips[source] = torch.rand(len(labels), generator=g, device=self.device) < self.recipe.crop_of(v).flip_p
                x = apply_color(crops[source], v.color, 0.0, self.recipe.mean, self.recipe.std, g, flip=flips[source])
                out[v.group].append(x.to(self.dtype))
            yield out, labels.view(-1).to(torch.int64).clone()  # FFCV reuses its output buffers

    def _corrupt_in(self, ids: np.ndarray, epoch: int) -> list[int]:
        """Positions in `ids` whose JPEG is not complete; their records go to the stats."""
        bad = []
        for pos, i in enumerate(ids.tolist()):
            data, _, key = self.samples.read(i)
            record = check_sample(self.samples, i, data, key, epoch, self.strict)
            if record is not None:
                self.stats.corrupt.append(record)
                bad.append(pos)
        return bad

    def _reference(self, epoch: int, start: int, ids: np.ndarray):
        from data.reference_loader import reference_batches

        for views, labels in reference_batches(self.samples, self.recipe, ids[start * self.batch_size:],
                                               self.batch_size, self.workers,
                                               seed=int(np.random.default_rng([self.seed, epoch, start, self.rank]).integers(2**31)),
                                               stats=self.stats, epoch=epoch, strict=self.strict):
            yield ({g: [t.to(self.device, self.dtype, non_blocking=True) for t in ts] for g, ts in views.items()},
                   labels)


def build_loader(folder, engine: str = "dali", recipe: Recipe | None = None, **kwargs) -> Loader:
    """``folder="synthetic"``: noise batches of the recipe's shapes made on the device
    (data/synthetic.py; any engine), for measuring the model side alone."""
    from data.views import build_recipe

    recipe = recipe or build_recipe("multicrop")
    if str(folder) == "synthetic":
        from data.synthetic import SyntheticLoader

        return SyntheticLoader(recipe, kwargs["batch_size"], kwargs.get("rank", 0), kwargs.get("seed", 0),
                               kwargs.get("device", "cpu"))
    return Loader(folder, engine, recipe, **kwargs)
