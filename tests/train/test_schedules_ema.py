"""train/schedules.py and train/ema.py against analytic values."""
import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from train.ema import ema_update, paired_parameters
from train.schedules import linear_warmup, warmup_cosine


def test_warmup_cosine_endpoints_and_shape():
    s = warmup_cosine(base=1e-3, final=1e-6, total=100, warmup=10, warmup_start=0.0)
    assert len(s) == 100 and s[0] == 0.0
    np.testing.assert_allclose(s[:10], np.arange(10) * 1e-4)            # linear warm-up
    assert s[10] == pytest.approx(1e-3)                                   # base right after warm-up
    assert np.all(np.diff(s[10:]) <= 0) and s[-1] > 1e-6 and s[-1] == pytest.approx(1e-6, abs=1e-6)
    assert s[10 + 45] == pytest.approx(1e-6 + 0.5 * (1e-3 - 1e-6), rel=1e-6)  # cosine midpoint
    momentum = warmup_cosine(0.996, 1.0, 50)                               # teacher momentum 0.996 -> 1
    assert momentum[0] == pytest.approx(0.996) and np.all(np.diff(momentum) >= 0) and momentum[-1] < 1.0
    with pytest.raises(ValueError, match="warmup"):
        warmup_cosine(1.0, 0.0, 10, warmup=11)


def test_linear_warmup_then_constant():
    s = linear_warmup(0.04, 0.07, warmup=30, total=100)
    assert len(s) == 100 and s[0] == pytest.approx(0.04) and s[29] == pytest.approx(0.07)
    assert np.all(s[30:] == 0.07) and np.all(np.diff(s[:30]) > 0)
    assert len(linear_warmup(0.04, 0.07, warmup=30, total=10)) == 10


def test_ema_update_is_the_exponential_average_and_leaves_students_alone():
    student = nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3))
    teacher = copy.deepcopy(student)
    with torch.no_grad():
        for p in student.parameters():
            p.add_(torch.randn_like(p))
    before_t = [p.clone() for p in teacher.parameters()]
    before_s = [p.clone() for p in student.parameters()]
    t, s = paired_parameters(teacher, student)
    ema_update(t, s, 0.9)
    for p, t0, s0 in zip(teacher.parameters(), before_t, before_s):
        torch.testing.assert_close(p, 0.9 * t0 + 0.1 * s0)
    assert all(torch.equal(p, s0) for p, s0 in zip(student.parameters(), before_s))
    ema_update(t, s, 1.0)
    assert all(torch.allclose(p, 0.9 * t0 + 0.1 * s0) for p, t0, s0 in zip(teacher.parameters(), before_t, before_s))
    ema_update(t, s, 0.0)
    assert all(torch.equal(p, s0) for p, s0 in zip(teacher.parameters(), before_s))


def test_pairing_refuses_teacher_parameters_the_student_lacks():
    with pytest.raises(ValueError, match="without a student counterpart"):
        paired_parameters(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)), nn.Sequential(nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="teacher"):
        paired_parameters(nn.Linear(2, 3), nn.Linear(2, 2))
