"""Methods: the views each needs, its teacher targets, its student passes and its loss.

    build_student, build_teacher, method = build_method(cfg)

``method`` is pure (train/methods/passes.py: targets, masks, student_passes, losses) and
declares what the engine applies:

    step_order   TARGETS_THEN_MASKS (AttMask) | MASKS_THEN_TARGETS (MAE, SdAE, LC-MAE, ExtreMA)
    ema_every    "step" | "epoch" (the teacher EMA's cadence) | None: no teacher at all
    knn_on       "teacher" | "student": whose features the k-NN monitor reads
    schedules(iters_per_epoch, total) -> {name: [total] array}: its own per-step values
                 (iBOT's teacher temperatures), handed to it in ``sched`` every step

The two builders make the student (with drop-path) and the teacher (without; ExtreMA's
without the predictor; SdAE's the encoder only); ``build_teacher`` is None when there is no
teacher (MAE); LC-MAE's target network is its encoder and head. This factory is the one place that reads the config tree.
"""
from __future__ import annotations

from omegaconf import OmegaConf

NAMES = ("ibot", "dino", "extrema", "mae", "sdae", "lcmae")


def build_method(cfg):
    from model.vit import patch_size_of

    m, mc = cfg.model, cfg.method
    kwargs = OmegaConf.to_container(m.kwargs, resolve=True)
    patch = patch_size_of(m.arch, kwargs)
    if mc.name == "extrema":
        from train.methods.extrema import ExtreMA, ExtremaNet

        def net(drop_path: float, predictor: bool) -> ExtremaNet:
            return ExtremaNet(m.arch, kwargs, drop_path, m.pool_depth, m.proj_hidden, m.proj_dim, m.pred_hidden,
                              predictor=predictor)

        method = ExtreMA(mc.mask_ratio[0], mc.n_masks, mc.disjoint, mc.loss, mc.infonce_temp, patch)
        student, teacher = (lambda: net(m.drop_path, True)), (lambda: net(0.0, False))
    elif mc.name == "lcmae":
        from train.methods.lcmae import LCMAE, LCMAENet, LCMAETarget

        grid = (cfg.data.global_size // patch,) * 2
        method = LCMAE(mc.mask_ratio[0], mc.n_masks, mc.guidance_weight, mc.views, mc.norm_pix, mc.disjoint, patch)
        student = lambda: LCMAENet(m.arch, kwargs, m.drop_path, grid, m.decoder_dim, m.decoder_depth,  # noqa: E731
                                   m.decoder_heads, m.guide_hidden, m.guide_head_depth, m.guide_pred_depth)
        teacher = lambda: LCMAETarget(m.arch, kwargs, m.guide_hidden, m.guide_head_depth)  # noqa: E731
    elif mc.name in ("mae", "sdae"):
        from train.methods.mae import MAE, MaskedAutoencoder

        grid = (cfg.data.global_size // patch,) * 2

        def autoencoder(predict: str) -> MaskedAutoencoder:
            return MaskedAutoencoder(m.arch, kwargs, m.drop_path, grid, predict, m.decoder_dim, m.decoder_depth,
                                     m.decoder_heads)

        if mc.name == "mae":
            method = MAE(mc.mask_ratio[0], mc.n_masks, mc.disjoint, mc.norm_pix, patch)
            student, teacher = (lambda: autoencoder("pixels")), None
        else:
            from train.methods.sdae import SdAE, SdAETeacher

            method = SdAE(mc.mask_ratio[0], mc.folds, mc.teacher_input, patch_size=patch)
            student, teacher = (lambda: autoencoder("features")), (lambda: SdAETeacher(m.arch, kwargs))
    else:
        from train.methods.ibot import IBOT, IBOTNet

        def ibot_net(drop_path: float) -> IBOTNet:
            return IBOTNet(m.arch, kwargs, drop_path, m.out_dim, m.head_hidden, m.head_bottleneck,
                           m.norm_last_layer, patches=mc.patch_weight > 0)

        method = IBOT(mc.masking, tuple(mc.mask_ratio), mc.mask_prob, mc.hint_max, mc.patch_weight,
                      mc.student_temp, mc.center_momentum, m.out_dim, patch,
                      (mc.warmup_teacher_temp, mc.teacher_temp), (mc.warmup_teacher_patch_temp, mc.teacher_patch_temp),
                      mc.warmup_teacher_temp_epochs)
        student, teacher = (lambda: ibot_net(m.drop_path)), (lambda: ibot_net(0.0))
    if teacher is not None and mc.ema_every != "auto":  # else the method's own cadence
        method.ema_every = mc.ema_every
    return student, teacher, method
