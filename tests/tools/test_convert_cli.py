"""tools/convert.py as a user runs it: summary, clear errors, interruption and resume."""
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def test_summary_accounts_for_every_input(run_cli, class_tree, tmp_path):
    proc = run_cli("convert.py", class_tree.root, tmp_path / "out", "--shard-size", "5", "--quiet", check=True)
    n = len(class_tree.expected)
    n_skip = sum(fate == "skip" for _, fate in class_tree.expected.values())
    assert f"read {n} = written {n - n_skip} + skipped {n_skip}" in proc.stdout
    assert "manifest.json" in proc.stdout and "images/s" in proc.stdout
    again = run_cli("convert.py", class_tree.root, tmp_path / "out", "--shard-size", "5", "--quiet", check=True)
    assert "already holds this conversion" in again.stdout


def _error(proc) -> str:
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1
    return proc.stderr


def test_bad_input_is_a_one_line_error_naming_the_fix(run_cli, class_tree, tmp_path, images):
    out = tmp_path / "out"
    assert "does not exist" in _error(run_cli("convert.py", tmp_path / "nope", out))
    (tmp_path / "empty").mkdir()
    assert "is empty" in _error(run_cli("convert.py", tmp_path / "empty", out))
    (tmp_path / "file").write_text("x")
    assert "cannot write to OUT" in _error(run_cli("convert.py", class_tree.root, tmp_path / "file" / "out"))
    assert "--quality must be between 1 and 100" in _error(run_cli("convert.py", class_tree.root, out, "--quality", "0"))
    assert "--job-index must be in [0, 1]" in _error(
        run_cli("convert.py", class_tree.root, out, "--job-index", "2", "--num-jobs", "2"))
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "thesis.pdf").write_text("precious")
    assert "is not empty" in _error(run_cli("convert.py", class_tree.root, foreign))
    assert (foreign / "thesis.pdf").read_text() == "precious"

    val = tmp_path / "val"
    val.mkdir()
    for i in range(3):
        (val / f"ILSVRC2012_val_{i + 1:08d}.JPEG").write_bytes(images.encode(images.photo(32, 32, i)))
    labels = tmp_path / "LOC_val_solution.csv"
    labels.write_text("ImageId,PredictionString\nILSVRC2012_val_00000001,n01440764 1 2 3 4\n")
    assert "does not match the images" in _error(run_cli("convert.py", val, out, "--val-labels", labels))
    assert "--val-labels" in _error(run_cli("convert.py", val, out))


def test_out_holding_a_different_conversion_is_refused(run_cli, tmp_path):
    run_cli("convert.py", "embedded:val", tmp_path / "out", "--quiet", check=True)
    before = files(tmp_path / "out")
    err = _error(run_cli("convert.py", "embedded:val", tmp_path / "out", "--quality", "80", "--quiet"))
    assert "holds a different conversion" in err and "quality: 90 -> 80" in err
    err = _error(run_cli("convert.py", "embedded:train", tmp_path / "out", "--quiet"))
    assert "embedded:val -> embedded:train" in err
    assert files(tmp_path / "out") == before


ARGS = ["--shard-size", "4", "--workers", "1", "--quiet"]


@pytest.fixture(scope="module")
def slow_tree(tmp_path_factory, images):
    """Images that need resizing, enough for a one-worker conversion to take seconds, plus the
    result of converting them uninterrupted."""
    root = tmp_path_factory.mktemp("slow") / "src"
    for c in range(3):
        (root / f"n{c:08d}").mkdir(parents=True)
        for i in range(40):
            (root / f"n{c:08d}" / f"{i}.JPEG").write_bytes(images.encode(images.photo(1024, 768, 100 * c + i)))
    reference = root.parent / "reference"
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "convert.py"), str(root), str(reference), *ARGS],
                          capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return root, reference


def _default_sigint() -> None:
    """The converter gets Ctrl-C as a user's terminal gives it, whatever this process ignores
    (a child inherits an ignored SIGINT, and Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_interrupted_conversion_resumes_to_the_same_result(run_cli, slow_tree, tmp_path, sig):
    root, reference = slow_tree
    for attempt in range(3):  # the signal races the converter: on a busy machine it may finish first
        out = tmp_path / f"out{attempt}"
        proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "convert.py"), str(root), str(out), *ARGS],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                                preexec_fn=_default_sigint)
        deadline = time.monotonic() + 60
        while not list((out / ".hide-convert").glob("shard-*.json")) and time.monotonic() < deadline \
                and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(sig)  # a no-op if the converter has already exited
        _, stderr = proc.communicate(timeout=60)
        if not (out / "manifest.json").exists():
            break
    assert not (out / "manifest.json").exists(), (
        f"the run finished before it could be interrupted, 3 times (SIGINT in this process: "
        f"{signal.getsignal(signal.SIGINT)}; converter stderr: {stderr[-500:]})")
    if sig == signal.SIGINT:
        assert proc.returncode == 130 and "run the same command again to resume" in stderr
        assert "Traceback" not in stderr
    assert 1 <= len(list(out.glob("shard-*.tar"))) < 30
    resumed = run_cli("convert.py", root, out, *ARGS, check=True)
    assert "this run: " in resumed.stdout
    assert files(out) == files(reference)
    assert not (out / ".hide-convert").exists()
