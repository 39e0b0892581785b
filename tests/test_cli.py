"""The command line, run as a user would."""

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _fastmem(*args, cwd):
    return subprocess.run([sys.executable, "-m", "fastmem", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120)


def test_run_writes_metrics_and_plot(tmp_path):
    r = _fastmem("run", "--N", "20", "--M", "3", "--d", "8", "--optimizer", "sgd", "--lr", "1", "--batch-size", "4",
                 "--steps", "300", "--out", "m.json", "--plot", "run.png", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "status ok: 300 steps" in r.stdout
    data = json.loads((tmp_path / "m.json").read_text())
    losses = [row["loss"] for row in data["records"]]
    assert data["records"][-1]["step"] == 300 and losses[-1] < losses[0]
    assert (tmp_path / "run.png").read_bytes()[:4] == b"\x89PNG"


def test_run_csv_full_batch(tmp_path):
    r = _fastmem("run", "--N", "5", "--M", "2", "--d", "5", "--embeddings", "orthogonal", "--steps", "3",
                 "--record", "all", "--dtype", "float64", "--out", "m.csv", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = (tmp_path / "m.csv").read_text().splitlines()
    assert lines[0] == "step,loss,accuracy" and len(lines) == 5


def test_bad_argument_is_reported_not_raised(tmp_path):
    r = _fastmem("run", "--lr", "-1", cwd=tmp_path)
    assert r.returncode == 2 and "lr: expected a number > 0" in r.stderr


def test_info(tmp_path):
    r = _fastmem("info", cwd=tmp_path)
    assert r.returncode == 0
    assert "backend numpy: available" in r.stdout


def test_console_script(tmp_path):
    exe = Path(sys.executable).parent / "fastmem"
    if not exe.exists():
        pytest.skip(f"no console script beside {sys.executable} (fastmem not installed there)")
    r = subprocess.run([str(exe), "info"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.startswith("fastmem ")


def test_reproduce_list_and_one(tmp_path):
    r = _fastmem("reproduce", "--list", cwd=tmp_path)
    assert r.returncode == 0 and "margins-log" in r.stdout and "one-step" in r.stdout
    r = _fastmem("reproduce", "one-step", "--out", "figs", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "figs" / "one-step.json").read_text())["holds"] is True
    r = _fastmem("reproduce", "nonsense", cwd=tmp_path)
    assert r.returncode == 2 and "name: expected one of" in r.stderr


def test_reproduce_list_gives_whole_sentences_and_refuses_a_name_with_all(tmp_path):
    from fastmem.reproduce import EXPERIMENTS

    lines = _fastmem("reproduce", "--list", cwd=tmp_path).stdout.splitlines()
    assert len(lines) == len(EXPERIMENTS)
    for line in lines:
        summary = line.split(" (about")[0].rstrip()
        assert summary.endswith((".", ")")), line
    r = _fastmem("reproduce", "spike", "--all", cwd=tmp_path)
    assert r.returncode == 2 and "--all" in r.stderr and not (tmp_path / "reproduce-out").exists()


@pytest.mark.parametrize("flag, name", [("--plot", "p.txt"), ("--out", "m.txt")])
def test_run_refuses_an_unknown_format_before_the_run(tmp_path, flag, name):
    r = _fastmem("run", "--steps", "100000000", flag, name, cwd=tmp_path)  # the run would take minutes
    assert r.returncode == 2 and f"{flag}: expected a file ending in one of" in r.stderr, r.stderr
    assert "status" not in r.stdout and list(tmp_path.iterdir()) == []


def test_run_writes_its_files_whole(tmp_path):
    r = _fastmem("run", "--steps", "20", "--out", "m.json", "--plot", "p.svg", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.json", "p.svg"]  # no temporary file left
    assert json.loads((tmp_path / "m.json").read_text())["steps_done"] == 20


# The child's files limited to 200 bytes once fastmem is imported (RLIMIT_FSIZE, SIGXFSZ ignored):
# a write past it fails with EFBIG, as a write to a full disk fails with ENOSPC.
_LIMITED = """
import resource, signal, sys
import fastmem, fastmem.cli, matplotlib.pyplot
fastmem.backends()  # loaded (an editable install rebuilds here) before the limit
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (200, 200))
sys.exit(fastmem.cli.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("flag, name", [("--out", "m.csv"), ("--plot", "p.png")])
def test_a_write_that_fails_is_named_and_leaves_no_partial_file(tmp_path, flag, name):
    pytest.importorskip("resource")
    (tmp_path / name).write_text("kept")  # an earlier file of that name stays as it was
    r = subprocess.run([sys.executable, "-c", _LIMITED, "run", "--steps", "300", "--record", "all", flag, name],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and f"error: {flag}: could not write" in r.stderr and "Traceback" not in r.stderr, \
        r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [name] and (tmp_path / name).read_text() == "kept"


def test_help_reads_as_plain_text_with_every_command_and_default(tmp_path):
    top = _fastmem("--help", cwd=tmp_path).stdout
    assert "``" not in top and all(c in top.split("options:")[0] for c in ("run", "reproduce", "sweep", "info"))
    run = " ".join(_fastmem("run", "--help", cwd=tmp_path).stdout.split())
    for flag, default in (("--lr", "1.0"), ("--steps", "1000"), ("--optimizer", "sgd"), ("--dtype", "float32"),
                          ("--seed", "0"), ("--batch-size", "0")):
        assert f"(default: {default})" in run.split(flag, 2)[-1].split(" --")[0], flag
    assert "(default: None)" not in run and "(default 0) (default" not in run
    assert "(default:" in " ".join(_fastmem("reproduce", "--help", cwd=tmp_path).stdout.split()).split("--out")[-1]


def test_bad_sizes_and_folders_are_named_before_the_work(tmp_path):
    r = _fastmem("run", "--N", "1000000000", "--d", "1000", cwd=tmp_path)  # ~16 TB of embeddings
    assert r.returncode == 2 and "--N, --M, --d: expected embeddings that fit in memory" in r.stderr, r.stderr
    r = _fastmem("run", "--d", "0", cwd=tmp_path)
    assert r.returncode == 2 and "--d: expected" in r.stderr
    (tmp_path / "afile").write_text("")
    r = _fastmem("reproduce", "one-step", "--out", "afile", cwd=tmp_path)
    assert r.returncode == 2 and "--out: expected a folder" in r.stderr and "Traceback" not in r.stderr


def test_reproduce_exits_4_for_a_check_not_seen_and_0_for_a_documented_miss(tmp_path, monkeypatch, capsys):
    # a known, explained miss (the JSON's known_misses, said in the docs) is printed as such and
    # is not an error exit; any other check not seen is
    from fastmem import cli, reproduce

    def numbers(known):
        return {"seconds": 0.1, "holds": False, "checks": {"a": True, "b": False}, "known_misses": known}

    for known, code, said in (({"b": "why"}, 0, "known miss: b: why"), ({}, 4, "not seen: b")):
        monkeypatch.setattr(reproduce, "reproduce", lambda name, out, full, source=None, k=known: numbers(k))
        assert cli.main(["reproduce", "one-step", "--out", str(tmp_path)]) == code
        assert said in capsys.readouterr().out
