"""ExtreMA on the shared-teacher step: K disjoint masks, one teacher forward, batched student passes."""
import pytest
import torch
import torch.nn.functional as F

from train.config import CONFIGS, ConfigError, load_config
from train.engine import Trainer
from train.metrics import read_metrics
from train.methods.extrema import ExtreMA, ExtremaNet, byol_loss, infonce_loss
from train.methods.passes import StudentPass, run_passes

RECIPE = str(CONFIGS / "extrema_vits16.yaml")


def _params(module):
    return torch.cat([p.detach().flatten().clone() for p in module.parameters()])


def _net(predictor=True):
    torch.manual_seed(0)
    return ExtremaNet("vit_tiny_patch16_224", dict(patch_size=8, img_size=32, embed_dim=32, num_heads=2, depth=2),
                      0.0, 2, 48, 16, 48, predictor=predictor).eval()


def test_batched_passes_equal_the_loop():
    net = _net()
    images = torch.randn(3, 3, 32, 32)
    keep = torch.stack([torch.randperm(16)[:12].reshape(3, 4).sort(-1).values for _ in range(3)])  # [B, K, n]
    passes = [StudentPass("masked", {"images": images}, {"keep": keep[:, k]}) for k in range(3)]
    batched, loop = net(passes, "batched"), net(passes, "loop")
    for b, l, k in zip(batched, loop, range(3)):
        assert b["q"].shape == (3, 16)
        torch.testing.assert_close(b["q"], l["q"], rtol=1e-5, atol=1e-5)
        # each pass really is image b under keep-set k
        alone = net([StudentPass("masked", {"images": images}, {"keep": keep[:, k]})], "loop")[0]["q"]
        torch.testing.assert_close(b["q"], alone, rtol=1e-5, atol=1e-5)


def test_passes_of_one_group_must_share_their_images():
    a, b = torch.zeros(2, 3, 32, 32), torch.zeros(2, 3, 32, 32)
    keep = torch.zeros(2, 4, dtype=torch.long)
    with pytest.raises(ValueError, match="share the same tensors"):
        run_passes(lambda *a: {}, [StudentPass("masked", {"images": a}, {"keep": keep}),
                                   StudentPass("masked", {"images": b}, {"keep": keep})])


def test_losses_against_hand_computation():
    torch.manual_seed(1)
    q, k = torch.randn(5, 8), torch.randn(5, 8)
    hand = sum(float(((q[i] / q[i].norm() - k[i] / k[i].norm()) ** 2).sum()) for i in range(5)) / 5
    assert abs(float(byol_loss(q, k)) - hand) < 1e-5
    qn, kn = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
    t = 0.2
    nll = [-(qn[i] @ kn[i] / t - torch.logsumexp(qn[i] @ kn.T / t, 0)) for i in range(5)]
    assert abs(float(infonce_loss(q, k, t)) - float(sum(nll) / 5 * 2 * t)) < 1e-5


def test_target_spread_and_the_collapse_warning():
    method = ExtreMA(mask_ratio=0.75, n_masks=2, patch_size=8)
    masks = {"keep": torch.zeros(4, 2, 4, dtype=torch.long), "tokens": 16}
    q = [{"q": torch.randn(4, 8)} for _ in range(2)]
    z = torch.randn(4, 8)
    zn = F.normalize(z, dim=-1)
    hand = sum(float(zn[:, j].var(unbiased=False)) ** 0.5 for j in range(8)) / 8 * 8 ** 0.5
    out = method.losses(q, {"z": z}, masks, {})
    assert abs(float(out["target_spread"]) - hand) < 1e-5 and method.collapse_warning({"target_spread": hand}) is None
    same = method.losses(q, {"z": z[:1].expand(4, 8) * torch.tensor([[1.0], [2.0], [3.0], [4.0]])}, masks, {})
    assert float(same["target_spread"]) < 1e-6  # one direction for every image, whatever the norms
    message = method.collapse_warning({k: float(v) for k, v in same.items()})
    assert message and "nearly the same for every image" in message
    assert method.collapse_warning({"loss": 1.0}) is None


def test_a_few_steps_one_teacher_forward_disjoint_masks(tiny_extrema):
    cfg = load_config(RECIPE, tiny_extrema + ["run.max_steps=3"])
    trainer = Trainer(cfg)
    b = trainer.backend
    assert b.teacher_module.predictor is None and b.module.predictor is not None
    student0, teacher0 = _params(b.module.encoder), _params(b.teacher_module.encoder)
    assert torch.equal(student0, teacher0)  # the teacher starts as a copy (of the parts it has)
    teacher_calls, student_calls, keeps = [], [], []
    b.teacher_module.encoder.trunk.patch_embed.register_forward_hook(lambda *a: teacher_calls.append(a[1][0].shape))
    b.module.encoder.trunk.patch_embed.register_forward_hook(lambda *a: student_calls.append(1))
    masks = trainer.method.masks
    trainer.method.masks = lambda *a, **k: keeps.append(masks(*a, **k)) or keeps[-1]
    trainer.fit()
    assert len(teacher_calls) == 3 and len(student_calls) == 3  # one teacher and one student forward per step
    for m in keeps:
        keep = m["keep"]
        assert keep.shape == (16, 4, 4) and m["tokens"] == 16
        for img in keep:  # the K keep-sets of an image are disjoint (here they tile the 16 tokens)
            assert sorted(img.flatten().tolist()) == list(range(16))
    student, teacher = _params(b.module.encoder), _params(b.teacher_module.encoder)
    assert not torch.equal(student, student0)
    assert (teacher - teacher0).norm() < (student - student0).norm()  # EMA: moved less than the student
    rows = [r for r in read_metrics(cfg.run.dir) if "loss" in r]
    assert len(rows) == 3 and all(0 <= r["loss"] <= 4 for r in rows)
    assert all(r["mask_ratio"] == 0.75 for r in rows)
    assert all(r["weight_decay"] == pytest.approx(0.1) for r in rows)  # constant (RECIPES.md)
    assert rows[0]["momentum"] == pytest.approx(0.996) and rows[-1]["momentum"] > 0.996
    assert "teacher_temp" not in rows[0]  # iBOT's schedules are not ExtreMA's
    assert all(0 < r["target_spread"] <= 1 + 1e-6 for r in rows)  # at most 1: unit vectors


def test_shared_step_equals_the_naive_step(tiny_extrema):
    """Same masks: one teacher forward + batched passes == the teacher per mask + a loop."""
    from train.benchmark import naive_losses
    from train.engine import step_seed

    trainer = Trainer(load_config(RECIPE, tiny_extrema + ["run.max_steps=1"]))
    views = next(iter(trainer.loader))
    sched = {k: float(v[0]) for k, v in trainer.schedules.items()}

    def generator():
        return torch.Generator().manual_seed(step_seed(0, 0, 0))

    calls = []
    trainer.backend.teacher_module.encoder.trunk.patch_embed.register_forward_hook(lambda *a: calls.append(1))
    shared = trainer.compute_losses(views, sched, generator())
    assert len(calls) == 1
    naive = naive_losses(trainer, views, sched, generator())
    assert len(calls) == 1 + 4  # the naive way: the teacher once per mask
    torch.testing.assert_close(shared["loss"], naive["loss"], rtol=1e-5, atol=1e-6)
    loop = Trainer(load_config(RECIPE, tiny_extrema + ["run.max_steps=1", "train.student_passes=loop"]))
    torch.testing.assert_close(loop.compute_losses(views, sched, generator())["loss"], shared["loss"],
                               rtol=1e-5, atol=1e-6)


def test_resume_gives_the_losses_of_a_straight_run(tiny_extrema, tmp_path):
    straight = load_config(RECIPE, tiny_extrema + ["run.max_steps=4", f"run.dir={tmp_path / 'a'}"])
    Trainer(straight).fit()
    first = load_config(RECIPE, tiny_extrema + ["run.max_steps=2", f"run.dir={tmp_path / 'b'}"])
    Trainer(first).fit()  # ends with a checkpoint at step 2
    second = load_config(RECIPE, tiny_extrema + ["run.max_steps=4", f"run.dir={tmp_path / 'b'}"])
    assert Trainer(second).fit()["resumed_from"].endswith("step_000000002")
    a = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "a") if "loss" in r}
    b = {r["step"]: r["loss"] for r in read_metrics(tmp_path / "b") if "loss" in r}
    assert sorted(b) == [1, 2, 3, 4]
    for step in (3, 4):
        assert b[step] == pytest.approx(a[step], rel=1e-6)


@pytest.mark.parametrize("override, message", [
    ("method.mask_ratio=[0.7,0.9]", "method.mask_ratio: extrema keeps one ratio"),
    ("method.n_masks=5", "method.n_masks: 5 disjoint masks keeping 4 of 16 tokens"),
    ("method.loss=mse", "method.loss: must be one of byol, infonce"),
    ("train.student_passes=graph", "train.student_passes: must be one of batched, loop"),
])
def test_config_errors_name_the_key(tiny_extrema, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(RECIPE, tiny_extrema + [override])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without CUDA")
def test_cuda_graphs_are_refused_without_cuda(tiny_extrema):
    with pytest.raises(ConfigError, match="train.cuda_graphs=true needs CUDA"):
        Trainer(load_config(RECIPE, tiny_extrema + ["train.cuda_graphs=true", "run.max_steps=1"]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
@pytest.mark.parametrize("recipe", [RECIPE, None], ids=["extrema", "ibot_attmask"])
def test_cuda_graphs_give_the_eager_losses(tiny_extrema, tiny, tmp_path, recipe):
    overrides = (tiny_extrema if recipe else tiny) + ["run.max_steps=4", "distributed.precision=fp32",
                                                      "data.train=synthetic"]  # no DALI needed
    eager = load_config(recipe, overrides + [f"run.dir={tmp_path / 'eager'}"])
    graphed = load_config(recipe, overrides + [f"run.dir={tmp_path / 'graphed'}", "train.cuda_graphs=true"])
    Trainer(eager).fit()
    Trainer(graphed).fit()
    a = [r["loss"] for r in read_metrics(tmp_path / "eager") if "loss" in r]
    b = [r["loss"] for r in read_metrics(tmp_path / "graphed") if "loss" in r]
    assert len(a) == len(b) == 4
    assert b == pytest.approx(a, rel=1e-4)


def test_graph_inputs_flatten_and_rebuild_the_passes():
    """The captured callable takes flat tensors: each shared tensor once, then every own one."""
    from train.graphs import flatten, unflatten

    images, locals_ = torch.zeros(2, 3, 8, 8), torch.ones(2, 3, 4, 4)
    keep = [torch.full((2, 3), k) for k in range(3)]
    passes = [StudentPass("masked", {"images": images}, {"keep": k}) for k in keep]
    passes.append(StudentPass("locals", {"images": locals_}))
    structure, tensors = flatten(passes)
    assert len(tensors) == 1 + 3 + 1
    rebuilt = unflatten(structure, tensors)
    assert [p.group for p in rebuilt] == ["masked"] * 3 + ["locals"]
    assert all(p.shared["images"] is images for p in rebuilt[:3]) and rebuilt[3].shared["images"] is locals_
    assert all(torch.equal(p.own["keep"], k) for p, k in zip(rebuilt, keep))
    # the rebuilt passes batch like the originals (their shared tensor is one object again)
    net = _net()
    real = torch.randn(2, 3, 32, 32)
    keep4 = [torch.randperm(16)[:4].sort().values.expand(2, 4) for _ in range(3)]
    passes = [StudentPass("masked", {"images": real}, {"keep": k}) for k in keep4]
    structure, tensors = flatten(passes)
    torch.testing.assert_close(net(unflatten(structure, tensors))[2]["q"], net(passes)[2]["q"])
