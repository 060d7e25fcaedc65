"""tools/profile.py loader: one JSON line, engine vs reference (timings are not asserted)."""
import json


def test_loader_benchmark_compares_against_the_reference(run_cli, tmp_path):
    run_cli("convert.py", "embedded:val", tmp_path / "val", "--quiet", check=True)
    proc = run_cli("profile.py", "loader", "--data", tmp_path / "val", "--engine", "dali", "--recipe", "single_rrc",
                   "--batch-size", "8", "--batches", "3", "--workers", "1", "--device", "cpu", "--compare", check=True)
    lines = proc.stdout.strip().splitlines()
    assert len(lines) == 1
    result = json.loads(lines[0])
    for side in ("engine", "reference"):
        r = result[side]
        assert r["images_per_s"] > 0 and abs(r["views_per_s"] - r["images_per_s"]) < 0.2  # one view per image
        assert r["data_wait_ms_per_batch"] > 0 and r["batches"] == 3
    assert result["ratio"] == round(result["engine"]["images_per_s"] / result["reference"]["images_per_s"], 2)


def test_loader_benchmark_errors_are_one_line(run_cli, tmp_path):
    proc = run_cli("profile.py", "loader", "--data", tmp_path / "missing", "--device", "cpu")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
