import json


def _tiny_overrides(tiny):
    return [o for o in tiny if not o.startswith(("run.dir=", "data.train=", "data.val=", "data.embedded_dir="))]


def test_train_profile_reports_phases_flops_and_the_attmask_ratio(run_cli, tiny, embedded_dir):
    proc = run_cli("profile.py", "train", "--recipe", "demo", "--data", embedded_dir / "train", "--steps", "2",
                   "--warmup", "1", "--compare", "block", *_tiny_overrides(tiny), check=True)
    out = json.loads(proc.stdout)
    main, other = out["attmask_high"], out["block"]
    assert set(main["phase_ms"]) >= {"teacher", "masks", "backward", "optimizer", "ema", "student_and_loss"}
    assert all(v >= 0 for v in main["phase_ms"].values()) and main["step_ms"] > 0 and other["step_ms"] > 0
    assert main["flops_per_step"] > 0 and main["mfu"] is None  # no peak figure for a CPU
    ratio = out["ratio"]["step_time_attmask_high_over_block"]
    assert abs(ratio - main["step_ms"] / other["step_ms"]) < 1e-3 and out["ratio"]["goal"] == 1.05


def test_train_profile_bad_arguments_are_one_line_errors(run_cli, tiny, tmp_path):
    proc = run_cli("profile.py", "train", "--recipe", "demo", "--data", tmp_path, *_tiny_overrides(tiny))
    assert proc.returncode == 2 and "no manifest.json" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("profile.py", "train", "--recipe", "demo", "--compare", "sideways")
    assert proc.returncode == 2 and "--compare must be one of" in proc.stderr
