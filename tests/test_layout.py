"""The product's layout: packages import from the repository root without PYTHONPATH."""
import os
import subprocess
import sys
from pathlib import Path

from data import embedded

ROOT = Path(__file__).resolve().parents[1]


def test_packages_import_from_the_root_without_pythonpath():
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", "import data, model, train, tools; print(train.__file__)"],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert Path(proc.stdout.strip()) == ROOT / "train" / "__init__.py"  # the package, not train.py


def test_train_entry_point_rejects_bad_input_in_one_line(tmp_path):
    for args, words in ([["optim.epochs=0"], "optim.epochs: must be >= 1"],
                        [["--config", str(tmp_path / "none.yaml")], "no such file"],
                        [["data.train=" + str(tmp_path)], "no manifest.json"],
                        [["data.local_size=0"], "data.local_size"],
                        [["data.batch_size=5000", f"run.dir={tmp_path / 'run'}", f"data.embedded_dir={tmp_path / 'shards'}", "data.val="], "no full batch of 5000"]):
        proc = subprocess.run([sys.executable, "train.py", *args], cwd=ROOT, capture_output=True, text=True)
        assert proc.returncode == 2 and words in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    # the last case converted embedded:train, into the folder of its generator's version
    assert (tmp_path / "shards" / f"hide-shapes-v{embedded.VERSION}" / "train" / "manifest.json").is_file()
