"""The training loop behind ``accelerate launch train.py``.

    trainer = Trainer(cfg)      # runtime, data, student / teacher, optimizer, schedules, resume
    trainer.fit()               # the loop; k-NN at the start, every eval.knn_every epochs, the end

The engine owns everything around the method: backward, clipping, the optimizer step, the
schedules, the EMA teacher update, the skipping of non-finite steps, logging and checkpoints.
Randomness: the global torch generator (drop-path) and the masking streams are re-seeded every
step, from (seed, step, rank) and, for masks drawn for the world's batch, from (seed, step), so
a resumed run draws what the uninterrupted one would have.
"""
from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch

from train import state
from train.config import save_config, view_recipe
from train.methods import build_method
from train.methods.passes import MaskDraws, shared_step
from train.metrics import MetricsLog
from train.schedules import warmup_cosine


class TrainingError(RuntimeError):
    """The run cannot go on; the message says what to change."""


SHARED = 2**31  # step_seed's "rank" of the stream every rank shares (masks drawn for the world's batch)


def step_seed(seed: int, step: int, rank: int) -> int:
    return int(np.random.default_rng([seed, step, rank]).integers(2**62))


class Trainer:
    def __init__(self, cfg):
        from accelerate import Accelerator
        from accelerate.utils import DistributedType

        self.cfg = cfg
        self.accelerator = Accelerator(cpu=not torch.cuda.is_available())
        if self.accelerator.distributed_type == DistributedType.DEEPSPEED:
            raise TrainingError("the accelerate config selects DeepSpeed; use a MULTI_GPU accelerate config "
                                "(train/configs/accelerate/) and set distributed.backend=deepspeed instead")
        self.rank, self.world = self.accelerator.process_index, self.accelerator.num_processes
        self.device = self.accelerator.device
        self.run_dir = Path(cfg.run.dir)
        precision = cfg.distributed.precision
        bf16 = precision == "bf16" or (precision == "auto" and self.device.type == "cuda")
        self.autocast_dtype = torch.bfloat16 if bf16 else None
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        torch.manual_seed(cfg.run.seed)
        self._build_data()
        self._build_model()
        self._build_schedules()
        self.step, self.nonfinite_run, self.nonfinite_total = 0, 0, 0
        self.collapse_warned = False
        self.resumed_from = state.resume_trainer(self)
        if self.rank == 0:
            save_config(cfg, self.run_dir)
        self.log = MetricsLog(self.run_dir, enabled=self.rank == 0)

    # ------------------------------------------------------------------ setup

    def _barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    def _data_folder(self, value: str) -> str:
        """A shards folder; embedded:* splits are converted once (rank 0) on first use, into a
        folder named by the generator's version, so a copy made by an older one is never used."""
        if not value.startswith("embedded:"):
            return value
        from data import embedded
        from data.shards.convert import convert
        from data.shards.plan import ConvertOptions
        from data.sources import open_source

        out = Path(self.cfg.data.embedded_dir) / f"hide-shapes-v{embedded.VERSION}" / value.split(":", 1)[1]
        if self.rank == 0 and not (out / "manifest.json").is_file():
            convert(open_source(value), out, ConvertOptions(shard_size=300, workers=1), progress=False)
        self._barrier()
        return str(out)

    def _build_data(self) -> None:
        from data.loader import build_loader

        d = self.cfg.data
        self.train_folder = self._data_folder(d.train)
        self.val_folder = self._data_folder(d.val) if d.val else ""
        recipe = view_recipe(self.cfg)
        self.loader = build_loader(self.train_folder, d.engine, recipe, batch_size=d.batch_size, rank=self.rank,
                                   world=self.world, seed=self.cfg.run.seed, device=str(self.device),
                                   workers=d.workers, exact_resume=d.exact_resume)
        self.iters_per_epoch = len(self.loader)
        self.global_batch = d.batch_size * self.world

    def _build_model(self) -> None:
        from model.heads import sync_batchnorm
        from train.backends import DDPBackend, DeepSpeedBackend
        from train.ema import copy_into_teacher

        o = self.cfg.optim
        build_method_student, build_teacher, self.method = build_method(self.cfg)

        def build_student():  # any BatchNorm in it normalises over the whole world's batch
            return sync_batchnorm(build_method_student(), self.device)

        self.method.to(self.device)
        if self.cfg.distributed.backend == "deepspeed":
            self.backend = DeepSpeedBackend(build_student, build_teacher, lambda s: s.last_layer_parameters(),
                                            self.cfg.distributed.zero_stage, self.cfg.data.batch_size,
                                            o.clip_grad, o.betas, external_of=lambda s: s.top_level_parameters())
        else:
            student = build_student().to(self.device)
            teacher = build_teacher() if build_teacher is not None else None
            if teacher is not None:
                copy_into_teacher(teacher, student)  # the teacher starts as an exact copy
                teacher.requires_grad_(False).to(self.device)
            self.backend = DDPBackend(self.accelerator, student, teacher, student.last_layer_parameters(), o.betas)
        if self.backend.teacher_module is not None:
            self.backend.teacher_module.eval()  # no dropout / drop-path; never trained by gradients
        self.student_runner = self.backend.student
        self.cuda_graphs = bool(self.cfg.train.cuda_graphs)
        if self.cuda_graphs:
            from train.config import ConfigError
            from train.graphs import GraphedStudent, GraphsUnsupported, check_supported

            try:
                check_supported(self.device, self.backend.name, self.world)
            except GraphsUnsupported as err:
                raise ConfigError(str(err)) from None
            self.student_runner = GraphedStudent(self.backend.module)

    def _build_schedules(self) -> None:
        """Per-iteration arrays indexed by the global step: the engine's (lr, weight decay, the
        teacher momentum and the steps that apply the EMA, at the cadence the method declares)
        and the method's own (``method.schedules``)."""
        o = self.cfg.optim
        ipe, total = self.iters_per_epoch, self.iters_per_epoch * o.epochs
        self.total_steps = min(total, self.cfg.run.max_steps) if self.cfg.run.max_steps else total
        # lr = base_lr x batch / 256 (linear), or x sqrt(batch) / 4 (sqrt; equal at batch 4096)
        scale = self.global_batch / 256 if o.lr_scaling == "linear" else math.sqrt(self.global_batch) / 4
        self.schedules = {  # [total] per-iteration values, indexed by the global step
            "lr": warmup_cosine(o.base_lr * scale, o.min_lr, total, int(o.warmup_epochs * ipe)),
            "weight_decay": warmup_cosine(o.weight_decay, o.weight_decay_end, total),
        }
        every = self.method.ema_every
        self.ema_at = np.zeros(total, dtype=bool)  # steps after which the teacher EMA runs
        if every == "step":
            self.schedules["momentum"] = warmup_cosine(o.momentum_teacher, o.momentum_teacher_end, total)
            self.ema_at[:] = True
        elif every == "epoch":  # once per epoch, at its last step, with that epoch's value
            per_epoch = warmup_cosine(o.momentum_teacher, o.momentum_teacher_end, o.epochs)
            self.schedules["momentum"] = np.repeat(per_epoch, ipe)
            self.ema_at[ipe - 1::ipe] = True
        self.schedules.update(self.method.schedules(ipe, total))

    # ------------------------------------------------------------------ checkpoints

    def save(self) -> Path:
        return state.save_trainer(self)

    # ------------------------------------------------------------------ evaluation

    def knn(self) -> float | None:
        """Weighted k-NN top-1 (%) on the held-out split (train = gallery) of the features the
        method declares (``knn_on``: the teacher's or the student's; ``eval.feature``: [CLS] or
        the patch tokens' mean), the module in eval mode."""
        if not self.val_folder:
            return None
        from data.loader import build_loader
        from data.views import build_recipe
        from train.knn import features, knn_top1

        e = self.cfg.eval
        recipe = build_recipe("center_crop", size=e.knn_size)
        kw = dict(batch_size=self.cfg.data.batch_size, rank=self.rank, world=self.world, device=str(self.device),
                  workers=self.cfg.data.workers, evaluation=True)
        b = self.backend
        module = b.teacher_module if self.method.knn_on == "teacher" else b.module
        gather = (b.deepspeed.zero.GatheredParameters(list(module.parameters()))
                  if b.name == "deepspeed" and b.stage == 3 else nullcontext())
        was_training = module.training
        module.eval()
        try:
            with gather:
                def encode(images):
                    return module.features(images, e.feature)

                train_f, train_l = features(encode, build_loader(self.train_folder, e.knn_engine, recipe, **kw),
                                            self.autocast_dtype)
                test_f, test_l = features(encode, build_loader(self.val_folder, e.knn_engine, recipe, **kw),
                                          self.autocast_dtype)
        finally:
            module.train(was_training)
        return knn_top1(train_f, train_l, test_f, test_l, e.knn_k, e.knn_temperature)

    # ------------------------------------------------------------------ the step

    def compute_losses(self, views, sched: dict, draws) -> dict[str, torch.Tensor]:
        """One teacher forward, the masks, the student passes (batched / looped / graphed), the losses."""
        return shared_step(self.method, self.student_runner, self.backend.teacher, views, sched, draws,
                           self.cfg.train.student_passes)

    def train_step(self, views) -> dict[str, float] | None:
        """One iteration; None when the loss was not finite on some rank (nothing updated)."""
        i = self.step
        sched = {k: float(v[i]) for k, v in self.schedules.items()}
        seed = step_seed(self.cfg.run.seed, i, self.rank)
        torch.manual_seed(seed)  # drop-path draws
        draws = MaskDraws(torch.Generator(self.device).manual_seed(step_seed(self.cfg.run.seed, i, SHARED)),
                              torch.Generator(self.device).manual_seed(seed), self.rank, self.world)  # masks
        epoch = i // self.iters_per_epoch
        freeze_last = epoch < self.cfg.optim.freeze_last_layer_epochs
        b = self.backend

        # compute losses (one teacher forward, the masks, the student, the loss module)
        with torch.autocast(self.device.type, dtype=self.autocast_dtype or torch.float32,
                            enabled=self.autocast_dtype is not None, cache_enabled=not self.cuda_graphs):
            losses = self.compute_losses(views, sched, draws)
        loss = losses["loss"]
        finite = torch.isfinite(loss.detach()).float()
        if self.world > 1:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        ok = bool(finite.item())

        # backward, clip, step (a non-finite step updates nothing)
        if ok or b.name == "ddp":  # DDP's reducer expects the backward either way
            b.backward(loss)
        if ok:
            b.step(sched["lr"], sched["weight_decay"], self.cfg.optim.clip_grad, freeze_last)
            # teacher EMA update, at the method's cadence (every step, or an epoch's last step)
            if self.ema_at[i]:
                b.ema(sched["momentum"])
        b.zero_grad()
        if not ok:
            return None
        values = torch.stack([v.detach().float() for v in losses.values()]).tolist()  # one device sync
        out = dict(zip(losses, values))
        out.update(sched)
        return out

    def fit(self) -> dict:
        from tqdm import tqdm

        cfg = self.cfg
        summary = {"resumed_from": str(self.resumed_from) if self.resumed_from else None}
        if cfg.eval.knn_at_start and self.resumed_from is None:
            summary["knn_start"] = self._log_knn("start")
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not (cfg.run.progress and self.rank == 0),
                   dynamic_ncols=True, unit="step")
        window = {"images": 0, "wait": 0.0, "start": time.perf_counter(), "losses": []}
        last = {}
        while self.step < self.total_steps:
            epoch_before = self.loader.position.epoch
            it = iter(self.loader)
            while self.step < self.total_steps:
                t0 = time.perf_counter()
                try:
                    views = next(it)
                except StopIteration:
                    break
                window["wait"] += time.perf_counter() - t0
                out = self.train_step(views)
                self.step += 1
                window["images"] += views.labels.shape[0] * self.world
                if out is None:
                    self.nonfinite_run += 1
                    self.nonfinite_total += 1
                else:
                    self.nonfinite_run = 0
                    window["losses"].append(out)
                    last = out
                if self.step % cfg.run.log_every == 0 or self.step == self.total_steps \
                        or self.nonfinite_run >= cfg.run.max_nonfinite:
                    self._log_window(window, bar)
                self._stop_if_nonfinite()
                if self.step % cfg.run.checkpoint_every == 0 and self.step < self.total_steps:
                    self.save()
            it.close()  # the loader's generator: shuts its pipeline down now, not at garbage collection
            epoch_done = self.loader.position.epoch > epoch_before
            if epoch_done and cfg.eval.knn_every and self.loader.position.epoch % cfg.eval.knn_every == 0 \
                    and self.step < self.total_steps:
                self._log_knn(f"epoch {self.loader.position.epoch}")
        bar.close()
        self.save()
        summary["knn_end"] = self._log_knn("end")
        summary.update(steps=self.step, loss=last.get("loss"), nonfinite_steps=self.nonfinite_total,
                       skipped_samples=len(self.loader.stats.corrupt))
        self._write_skipped()
        self.close()
        return summary

    def close(self) -> None:
        """Flush the logs and leave the process group together (a rank exiting while its
        peers still hold gloo / NCCL connections can abort them)."""
        self.log.close()
        if self.world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            self._barrier()
            torch.distributed.destroy_process_group()

    # ------------------------------------------------------------------ failures and logging

    def _stop_if_nonfinite(self) -> None:
        if self.nonfinite_run >= self.cfg.run.max_nonfinite:
            path = self.save()
            raise TrainingError(
                f"{self.nonfinite_run} non-finite losses in a row (at step {self.step}); stopped with a checkpoint "
                f"in {path}. Lower optim.base_lr, lengthen optim.warmup_epochs or lower optim.clip_grad, "
                f"then resume (run.resume=auto)")

    def _log_window(self, window: dict, bar) -> None:
        elapsed = time.perf_counter() - window["start"]
        row = {"step": self.step, "epoch": round(self.step / self.iters_per_epoch, 3)}
        if window["losses"]:
            keys = window["losses"][-1].keys()
            mean = torch.tensor([[o[k] for k in keys] for o in window["losses"]], dtype=torch.float64).mean(0)
            if self.world > 1:  # the mean over ranks of the window's losses
                mean = mean.to(self.device)
                torch.distributed.all_reduce(mean)
                mean = mean.cpu() / self.world
            row.update({k: float(v) for k, v in zip(keys, mean)})
        row["images_per_s"] = window["images"] / max(elapsed, 1e-9)
        row["data_wait_fraction"] = window["wait"] / max(elapsed, 1e-9)
        row["nonfinite_steps"] = self.nonfinite_total
        row["skipped_samples"] = len(self.loader.stats.corrupt)
        if self.device.type == "cuda":
            row["gpu_memory_gb"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.log.write(row)
        self._warn_collapse(row)
        bar.update(self.step - bar.n)
        if "loss" in row:
            bar.set_postfix(loss=f"{row['loss']:.4f}", img_s=f"{row['images_per_s']:.0f}")
        window.update(images=0, wait=0.0, start=time.perf_counter(), losses=[])

    def _warn_collapse(self, row: dict) -> None:
        """Print the method's collapse warning (e.g. uniform [CLS] targets), if it has one, once per run."""
        check = getattr(self.method, "collapse_warning", None)
        if self.collapse_warned or check is None:
            return
        message = check(row)
        if message:
            self.collapse_warned = True
            if self.rank == 0:
                print(f"warning (step {self.step}): {message}", flush=True)

    def _log_knn(self, when: str) -> float | None:
        top1 = self.knn()
        if top1 is not None:
            self.log.write({"step": self.step, "knn_top1": top1})
            if self.rank == 0:
                print(f"k-NN top-1 ({when}, step {self.step}): {top1:.2f}%", flush=True)
        return top1

    def _write_skipped(self) -> None:
        """Every skipped (corrupt) sample of this rank, one JSON line each, in the run dir."""
        import json

        if not self.loader.stats.corrupt:
            return
        path = self.run_dir / f"skipped_samples.rank{self.rank}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in self.loader.stats.corrupt))
        if self.rank == 0:
            print(f"skipped {len(self.loader.stats.corrupt)} corrupt samples on rank 0; listed in {path}", flush=True)


def format_summary(summary: dict) -> str:
    parts = [f"{k}={v:.4f}" if isinstance(v, float) and not math.isnan(v) else f"{k}={v}" for k, v in summary.items()]
    return "done: " + ", ".join(parts)
