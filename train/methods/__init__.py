"""Methods: the views each needs, its teacher targets, its student passes and its loss.

    build_student, build_teacher, method = build_method(cfg)

``method`` is pure (train/methods/passes.py: targets, masks, student_passes, losses); the
two builders make the student (with drop-path) and the teacher (without; ExtreMA's without
the predictor), which the engine hands to its backend.
"""
from __future__ import annotations

from omegaconf import OmegaConf


def build_method(cfg):
    m, mc = cfg.model, cfg.method
    kwargs = OmegaConf.to_container(m.kwargs, resolve=True)
    from train.config import patch_size_of

    patch = patch_size_of(m.arch, kwargs)
    if mc.name == "extrema":
        from train.methods.extrema import ExtreMA, ExtremaNet

        def net(drop_path: float, predictor: bool) -> ExtremaNet:
            return ExtremaNet(m.arch, kwargs, drop_path, m.pool_depth, m.proj_hidden, m.proj_dim, m.pred_hidden,
                              predictor=predictor)

        method = ExtreMA(mc.mask_ratio[0], mc.n_masks, mc.disjoint, mc.loss, mc.infonce_temp, patch)
        return (lambda: net(m.drop_path, True)), (lambda: net(0.0, False)), method

    from train.methods.ibot import IBOT, IBOTNet

    def ibot_net(drop_path: float) -> IBOTNet:
        return IBOTNet(m.arch, kwargs, drop_path, m.out_dim, m.head_hidden, m.head_bottleneck, m.norm_last_layer,
                       patches=mc.patch_weight > 0)

    method = IBOT(mc.masking, tuple(mc.mask_ratio), mc.mask_prob, mc.hint_max, mc.patch_weight,
                  mc.student_temp, mc.center_momentum, m.out_dim, patch)
    return (lambda: ibot_net(m.drop_path)), (lambda: ibot_net(0.0)), method
