"""tools/profile.py convert: runs end to end and reports its figures as JSON (no timing asserted)."""
import json


def test_convert_benchmark_reports_every_figure_as_json(run_cli, tmp_path):
    proc = run_cli("profile.py", "convert", "--images", "24", "--repeats", "1", "--shard-size", "6",
                   "--workdir", tmp_path, check=True)
    result = json.loads(proc.stdout)
    for tree in ("within", "mixed"):
        assert result[tree]["images"] == 24
        assert set(result[tree]["images_per_s"]) == {"naive", "reencode", "passthrough"}
        assert all(v > 0 for v in result[tree]["images_per_s"].values())
        rates = result[tree]["images_per_s"]
        # the ratio comes from the unrounded rates, the printed rates are rounded to 0.1 image/s
        assert abs(result[tree]["ratios"]["reencode_vs_naive"] - rates["reencode"] / rates["naive"]) <= 0.006
    assert set(result["goals_met"]) == {"reencode_vs_naive", "passthrough_vs_reencode"}
    assert list(tmp_path.iterdir()) == []  # the generated trees are removed


def test_bad_benchmark_arguments_are_a_one_line_error(run_cli):
    proc = run_cli("profile.py", "convert", "--images", "3")
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
