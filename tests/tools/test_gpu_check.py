"""tools/gpu_check.sh --dry-run: every GPU check rehearsed on the CPU (tiny ViT, one step), so
that the device call does not fail on a typo; each check leaves its JSON and a summary line."""
import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_the_gpu_check_script_runs_every_check_on_the_cpu(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path)}
    proc = subprocess.run(["bash", "tools/gpu_check.sh", "--dry-run"], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "summary.jsonl").read_text().splitlines()]
    ran = {r["check"]: r for r in rows if "rc" in r}
    assert {"pytest_gpu", "ibot_vits16_eager", "extrema_vitb16_naive", "extrema_vitb16_trace",
            "lcmae_vitb16_vs_mae"} <= set(ran) and all(r["rc"] == 0 for r in ran.values())
    assert {r["check"] for r in rows if "skipped" in r} == {"ibot_vits16_graphs", "extrema_vitb16_graphs"}
    for name in set(ran) - {"pytest_gpu"}:
        out = json.loads((tmp_path / f"{name}.json").read_text())
        assert out["engine"] == "synthetic" and out["steps"] == 1, name
    assert json.loads((tmp_path / "extrema_vitb16_naive.json").read_text())["ratio"]["goal"] == 0.55
    assert list((tmp_path / "trace").glob("*.pt.trace.json.gz"))
    assert json.loads((tmp_path / "env.json").read_text())["device"] == "cpu"
