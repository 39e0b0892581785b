"""A sweep's folder never blocks, mixes or duplicates runs, and a killed sweep leaves nothing running."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import fastmem as fm
from fastmem import sweeps as sw
from fastmem.sweeps import runner, store
from fastmem.memory import experiments as scaling_law
from fastmem.memory.experiments import SCALING_LAW as SL

TINY = {"d": [4, 6], "seed": [1, 2, 3], "lr": [1.0], "batch_size": [4], "ntrain": [16], "N": 6, "M": 3}


def _sweep(grid, out, **kw):
    return fm.sweep(grid, out, workers=1, chunk_size=2, quiet=True, **kw)


def _rows_on_disk(out):
    import pandas as pd

    return pd.concat([pd.read_parquet(f) for f in (Path(out) / "runs").glob("chunk-*.parquet")])


DAMAGE = {
    "truncated": lambda b: b[: len(b) // 2],
    "empty": lambda b: b"",
    "random": lambda b: np.random.default_rng(0).bytes(len(b)),
}


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("where", ["runs", "trajectories"])
def test_a_damaged_chunk_is_reported_moved_aside_and_redone(tmp_path, how, where):
    first = _sweep(TINY, tmp_path, trajectory=3)
    victim = sorted((tmp_path / where).glob("chunk-*.parquet"))[0]
    victim.write_bytes(DAMAGE[how](victim.read_bytes()))
    with pytest.warns(store.SweepStoreWarning, match=victim.name):
        good = fm.load_sweep(tmp_path, trajectories=where == "trajectories")
    good = good[0] if isinstance(good, tuple) else good
    assert 0 < len(good) < len(first)  # every good chunk is read
    with pytest.warns(store.SweepStoreWarning, match=f"moved to .*damaged.*{victim.name}"):
        again = _sweep(TINY, tmp_path, trajectory=3)
    assert (tmp_path / "damaged" / where / victim.name).exists()  # moved, not deleted
    assert sorted(again["run_id"]) == sorted(first["run_id"]) and (again["status"] == "ok").all()
    assert _rows_on_disk(tmp_path)["run_id"].is_unique
    runs, ds = fm.load_sweep(tmp_path, trajectories=True)
    assert ds.sizes["run_id"] == len(first)
    np.testing.assert_array_equal(runs.set_index("run_id").loc[first["run_id"], "loss"], first["loss"])


@pytest.mark.parametrize("intruder", ["copied chunk", "foreign parquet"])
def test_a_store_reads_only_what_it_wrote_once_per_run(tmp_path, intruder):
    import pandas as pd

    first = _sweep(TINY, tmp_path)
    chunks = sorted((tmp_path / "runs").glob("chunk-*.parquet"))
    fake = tmp_path / "runs" / "chunk-0000000000000000.parquet"
    if intruder == "copied chunk":
        fake.write_bytes(chunks[-1].read_bytes())
    else:  # valid Parquet, another schema: its rows must never be returned as runs
        pd.DataFrame({"x": [1.0, 2.0], "loss": [0.0, 0.0]}).to_parquet(fake, index=False)
    with pytest.warns(store.SweepStoreWarning, match="set aside|foreign"):
        runs = fm.load_sweep(tmp_path)
    assert len(runs) == len(first) and runs["run_id"].is_unique
    assert set(runs["run_id"]) == set(first["run_id"])
    with pytest.warns(store.SweepStoreWarning, match="moved to"):
        again = _sweep(TINY, tmp_path)  # the store sets the intruder aside and says so
    assert len(again) == len(first) and again["run_id"].is_unique
    # one of the two copies (whichever is read second) is moved aside, nothing deleted
    assert len(list((tmp_path / "runs").glob("chunk-*.parquet"))) == len(chunks)
    assert len(list((tmp_path / "damaged" / "runs").glob("chunk-*.parquet"))) == 1


def test_another_grid_is_refused_unless_extended_and_a_sweep_returns_its_own_runs(tmp_path):
    a, b = {**TINY, "seed": [1]}, {**TINY, "seed": [1, 2]}
    assert len(_sweep(a, tmp_path)) == 2
    with pytest.raises(fm.InvalidArgumentError, match="out: .*extend.*holds another grid"):
        _sweep(b, tmp_path)
    assert len(_sweep(a, tmp_path)) == 2  # the same grid resumes
    both = _sweep(b, tmp_path, extend=True)
    assert sorted(both["run_id"]) == sorted(scaling_law.run_id(c) for c in sw.expand(b))
    assert len(_sweep({**TINY, "seed": [2]}, tmp_path, extend=True)) == 2  # exactly its own runs
    assert len(json.loads((tmp_path / "sweep.json").read_text())["grids"]) == 3


def test_a_grid_is_the_set_of_its_runs(tmp_path):
    first = _sweep(TINY, tmp_path)
    again = _sweep({**TINY, "seed": [3, 2, 1, 1], "d": [6, 4]}, tmp_path)  # the same runs, listed otherwise
    assert sorted(again["run_id"]) == sorted(first["run_id"])
    assert len(json.loads((tmp_path / "sweep.json").read_text())["grids"]) == 1


def test_a_folder_in_use_by_another_sweep_is_refused(tmp_path):
    with store.Store(tmp_path, SL.name, [sw.axes(TINY)]):
        with pytest.raises(fm.InvalidArgumentError, match=f"out: .*locked by pid {os.getpid()}"):
            _sweep(TINY, tmp_path)
    assert len(_sweep(TINY, tmp_path)) == 6  # released on exit


def _toml(path, seeds):  # runs of 16,384 steps: a sweep of 40 lasts seconds, long past another's start
    path.write_text(f"d = [4, 6]\nseed = {seeds}\nlr = 1.0\nbatch_size = 4\nntrain = [65536]\nN = 6\nM = 3\n")
    return path


def _cli(*args, pipe=subprocess.PIPE):
    return subprocess.Popen([sys.executable, "-m", "fastmem", "sweep", *map(str, args)], stdout=pipe, stderr=pipe,
                            text=True, cwd="/")  # the installed fastmem, not a checkout's source tree


def test_two_sweeps_with_overlapping_grids_into_one_folder_write_each_run_once(tmp_path):
    out = tmp_path / "out"
    a = _cli(_toml(tmp_path / "a.toml", list(range(1, 21))), "--out", out, "--workers", "1", "--chunk-size", "1")
    deadline = time.time() + 60
    while not (out / "runs").is_dir() and time.time() < deadline:  # a holds the lock and has written a chunk
        time.sleep(0.05)
    b = _cli(_toml(tmp_path / "b.toml", list(range(11, 31))), "--out", out, "--workers", "1")
    _, err = b.communicate(timeout=60)
    assert b.returncode == 2 and "locked by pid" in err, err
    _, err = a.communicate(timeout=120)
    assert a.returncode == 0, err
    b = _cli(tmp_path / "b.toml", "--out", out, "--workers", "1", "--extend")
    _, err = b.communicate(timeout=120)
    assert b.returncode == 0, err
    rows = _rows_on_disk(out)
    assert len(rows) == 60 and rows["run_id"].is_unique  # 30 seeds x 2 d


@pytest.mark.parametrize("make", ["file", "below a file"])
def test_an_unusable_out_is_refused_before_any_run(tmp_path, make):
    (tmp_path / "f").write_text("x")
    out = tmp_path / "f" if make == "file" else tmp_path / "f" / "sub"
    with pytest.raises(fm.InvalidArgumentError, match="^out: "):
        _sweep(TINY, out)
    assert (tmp_path / "f").read_text() == "x"


def test_huge_grids_are_counted_without_expanding_and_refused_above_max_runs(tmp_path, capsys):
    huge = {**TINY, "seed": list(range(10**4)), "lr": [float(x) for x in range(1, 10**4 + 1)],
            "d": list(range(1, 10**4 + 1))}
    assert sw.count(huge) == 10**12
    t0 = time.perf_counter()
    with pytest.raises(fm.InvalidArgumentError, match=r"at most max_runs = 1,000,000 runs .*got 1,000,000,000,000"):
        _sweep(huge, tmp_path)
    assert time.perf_counter() - t0 < 5
    assert not (tmp_path / "runs").exists()
    with pytest.raises(fm.InvalidArgumentError, match="max_runs = 5"):
        _sweep(TINY, tmp_path, max_runs=5)
    fm.sweep(TINY, tmp_path, workers=1, max_runs=6)
    assert "fastmem sweep: 6 runs, 0 on disk" in capsys.readouterr().err


def test_failed_runs_are_retried_once_on_resume_and_diverged_stays(tmp_path, capsys):
    grid = {**TINY, "lr": [1.0, 3e38]}
    first = _sweep(grid, tmp_path)
    diverged = set(first["run_id"][first["status"] == "diverged"])
    assert diverged
    # record two ok runs as failed, as a worker that kept dying would have
    victims = [c for c in sw.expand(grid) if scaling_law.run_id(c) not in diverged][:2]
    with store.Store(tmp_path, SL.name, [sw.axes(grid)]) as st:
        st.drop_runs([scaling_law.run_id(c) for c in victims])
        runner._write_chunk(tmp_path, SL, runner._failed_rows(SL, victims, "RuntimeError: the machine fell over"))
    diverged_files = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "runs").glob("*.parquet")}
    again = fm.sweep(grid, tmp_path, workers=1)
    assert "2 of them recorded failed before and retried" in capsys.readouterr().err
    assert set(again["run_id"][again["status"] == "diverged"]) == diverged  # final: not rerun
    assert (again["status"] != "failed").all() and len(again) == len(first)
    assert _rows_on_disk(tmp_path)["run_id"].is_unique
    kept = {f.name: f.stat().st_mtime_ns for f in (tmp_path / "runs").glob("*.parquet")}
    assert sum(kept.get(name) == t for name, t in diverged_files.items()) >= len(diverged_files) - 2


def test_load_sweep_of_a_missing_folder_raises(tmp_path):
    with pytest.raises(fm.InvalidArgumentError, match="out: .*does not exist"):
        fm.load_sweep(tmp_path / "nowhere")


def test_an_empty_axis_is_refused():
    with pytest.raises(fm.InvalidArgumentError, match=r"grid\['d'\]: expected a value or a non-empty list"):
        sw.count({**TINY, "d": []})


def test_cli_missing_toml_is_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "fastmem", "sweep", str(tmp_path / "no.toml"), "--out",
                        str(tmp_path / "o")], capture_output=True, text=True, cwd="/")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "grid: expected a readable TOML file" in r.stderr


def _descendants(pid):
    children = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _alive(pid):
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_workers_exit_when_the_sweep_is_killed(tmp_path):
    grid = tmp_path / "g.toml"
    grid.write_text("d = [64]\nseed = [1, 2, 3, 4]\nlr = 1.0\nbatch_size = 1\nntrain = [2000000]\nN = 6\nM = 3\n"
                    "optimizer = 'adam'\nlayernorm = true\n")
    p = _cli(grid, "--out", tmp_path / "o", "--workers", "2", "--chunk-size", "1", pipe=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(_descendants(p.pid)) < 3 and time.time() < deadline:  # forkserver and 2 workers (+ tracker)
        time.sleep(0.1)
    kids = _descendants(p.pid)
    assert len(kids) >= 3 and p.poll() is None
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    deadline = time.time() + 15
    while any(map(_alive, kids)) and time.time() < deadline:
        time.sleep(0.1)
    assert not [k for k in kids if _alive(k)]


NO_MAIN_GUARD = """
import fastmem as fm
df = fm.sweep({"d": [4], "seed": [1, 2, 3], "lr": 1.0, "batch_size": 4, "ntrain": [16], "N": 6, "M": 3},
              OUT, workers=2, chunk_size=1, quiet=True)
print(sorted(set(df["status"])), len(df))
"""


@pytest.mark.parametrize("how", ["script without a main guard", "standard input"])
def test_a_sweep_runs_from_any_main_module(tmp_path, how):
    # the workers must not re-run the caller's script (it would sweep again) or look for a
    # file that does not exist (<stdin>)
    code = NO_MAIN_GUARD.replace("OUT", repr(str(tmp_path / "out")))
    if how == "standard input":
        r = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True, timeout=120, cwd="/")
    else:
        script = tmp_path / "sweep_script.py"
        script.write_text(code)
        r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd="/")
    assert r.returncode == 0 and r.stdout.strip() == "['ok'] 3", r.stderr


def test_the_cli_says_a_store_warning_in_one_line(tmp_path):
    import pandas as pd

    grid = _toml(tmp_path / "g.toml", "[1]")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "fastmem", "sweep", str(grid), "--out", str(out), "--workers", "1", "--quiet"]
    first = subprocess.run(cmd, capture_output=True, text=True, cwd="/", timeout=120)
    assert first.returncode == 0, first.stderr
    pd.DataFrame({"x": [1.0]}).to_parquet(out / "runs" / "chunk-0000000000000000.parquet", index=False)
    again = subprocess.run(cmd, capture_output=True, text=True, cwd="/", timeout=120)
    assert again.returncode == 0, again.stderr
    err = again.stderr.splitlines()
    said = [line for line in err if "SweepStoreWarning" in line]
    assert len(said) == 1 and said[0].startswith("fastmem: SweepStoreWarning: ") and "foreign" in said[0], err
    assert not any("warnings.warn" in line or ".py:" in line for line in err), err
