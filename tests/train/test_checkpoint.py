import pytest
import torch

from train.checkpoint import (CheckpointError, complete_checkpoints, load_checkpoint, resolve_resume,
                              save_checkpoint)


def _save(run, step, keep=2, extra=None):
    return save_checkpoint(run, step, 0, {"step": step, "world": 1, "w": torch.full((3,), float(step))},
                           {"rng": step}, barrier=lambda: None, keep=keep, extra=extra)


def test_newest_complete_checkpoint_is_resumed_and_old_ones_pruned(tmp_path):
    for step in (10, 20, 30):
        _save(tmp_path, step)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_000000020", "step_000000030"]
    path = resolve_resume(tmp_path, "auto")
    state, rank_state = load_checkpoint(path, 0, 1)
    assert state["step"] == 30 and rank_state["rng"] == 30
    assert resolve_resume(tmp_path, "never") is None
    assert resolve_resume(tmp_path / "fresh", "auto") is None


def test_a_crash_while_saving_leaves_the_previous_checkpoint_intact(tmp_path):
    _save(tmp_path, 10)

    def crash(tmp):
        (tmp / "partial.bin").write_bytes(b"half a file")
        raise KeyboardInterrupt("killed while saving")

    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 20, extra=crash)
    assert [p.name for p in complete_checkpoints(tmp_path)] == ["step_000000010"]
    assert load_checkpoint(resolve_resume(tmp_path, "auto"), 0, 1)[0]["step"] == 10
    _save(tmp_path, 30)  # the next save clears the torn temporary folder
    assert not list((tmp_path / "checkpoints").glob(".*.tmp"))


def test_bad_resume_paths_and_world_sizes_are_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not a complete checkpoint"):
        resolve_resume(tmp_path, str(tmp_path / "nope"))
    path = _save(tmp_path, 5)
    with pytest.raises(CheckpointError, match="written by 1 processes and this run has 2"):
        load_checkpoint(path, 0, 2)
