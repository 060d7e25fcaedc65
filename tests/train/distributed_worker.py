"""Run by test_distributed.py under ``torchrun --nproc_per_node {1,2}``: a Trainer takes a few
steps on one fixed global batch, each rank its slice, and rank 0 saves the rank-averaged
losses and the full teacher. Same global batch, any process count -> same numbers.

    torchrun --nproc_per_node 2 tests/train/distributed_worker.py OUT.pt STEPS key=value ...
"""
import os
import sys

sys.path[0] = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from data.loader import Views  # noqa: E402
from train.config import load_config  # noqa: E402
from train.engine import Trainer  # noqa: E402


def fixed_views(trainer, global_batch: int) -> Views:
    """One fixed global batch shaped like the method's view recipe; this rank's slice."""
    from train.config import view_recipe

    g = torch.Generator().manual_seed(1234)
    recipe = view_recipe(trainer.cfg)
    per = global_batch // trainer.world
    part = slice(trainer.rank * per, (trainer.rank + 1) * per)
    views = {}
    for group in recipe.groups:
        size = recipe.size_of(group)
        views[group] = [torch.randn(global_batch, 3, size, size, generator=g)[part] for _ in recipe.group(group)]
    return Views(views, torch.zeros(per, dtype=torch.long), torch.arange(per))


def main() -> None:
    out, steps, overrides = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    trainer = Trainer(load_config(None, overrides))
    views = fixed_views(trainer, trainer.global_batch)
    losses = []
    for _ in range(steps):
        row = trainer.train_step(views)
        trainer.step += 1
        loss = torch.tensor([row["loss"], row.get("mim", 0.0)], dtype=torch.float64)  # rank means
        if trainer.world > 1:
            torch.distributed.all_reduce(loss)
        losses.append((loss / trainer.world).tolist())
    b = trainer.backend
    saved = {"losses": losses}
    for name, module in (("teacher", b.teacher_module), ("student", b.module)):
        if module is None:
            continue
        if b.name == "deepspeed" and b.stage == 3:
            import deepspeed

            with deepspeed.zero.GatheredParameters(list(module.parameters())):
                saved[name] = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            saved[name] = {k: v.detach().clone() for k, v in module.state_dict().items()}
    saved["method"] = {k: v.clone() for k, v in trainer.method.state_dict().items()}
    if trainer.rank == 0:
        torch.save(saved, out)
    trainer.close()  # every rank leaves the process group together


if __name__ == "__main__":
    main()
