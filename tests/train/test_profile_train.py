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
    assert proc.returncode == 2 and "--compare must be naive or one of" in proc.stderr
    proc = run_cli("profile.py", "train", "--recipe", "extrema", "--compare", "block")
    assert proc.returncode == 2 and "use --compare naive" in proc.stderr
    proc = run_cli("profile.py", "train", "--recipe", "demo", "--masks", "3")
    assert proc.returncode == 2 and "--masks K (>= 1) applies to the extrema recipes only" in proc.stderr


def test_train_profile_extrema_shared_against_naive(run_cli, tiny_extrema, embedded_dir):
    overrides = [o for o in _tiny_overrides(tiny_extrema) if not o.startswith("method.n_masks=")]
    proc = run_cli("profile.py", "train", "--recipe", "extrema", "--masks", "4", "--compare", "naive",
                   "--data", embedded_dir / "train", "--steps", "2", "--warmup", "1", *overrides, check=True)
    out = json.loads(proc.stdout)
    shared, naive = out["shared"], out["naive"]
    assert out["method"] == "extrema" and "4 masks x 4 of 16 tokens" in out["views"]
    # the naive step runs the teacher 4 times: its teacher phase is the longer one
    assert naive["phase_ms"]["teacher"] > shared["phase_ms"]["teacher"]
    ratio = out["ratio"]["step_time_shared_over_naive"]
    assert abs(ratio - shared["step_ms"] / naive["step_ms"]) < 1e-3 and out["ratio"]["goal"] == 0.55
