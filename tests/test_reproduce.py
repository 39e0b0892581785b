"""Every experiment of the paper, run as `fastmem reproduce` runs it, with its phenomenon asserted in numbers."""

import json

import numpy as np
import pytest

import fastmem as fm
from fastmem.errors import InvalidArgumentError
from fastmem.reproduce import EXPERIMENTS, reproduce


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out = tmp_path_factory.mktemp("reproduce")
    return out, {name: reproduce(name, out) for name in QUICK}


# the experiments of seconds; the longer ones (PathCond's) are tested at a smaller size below
QUICK = [name for name, e in EXPERIMENTS.items() if not e.minutes]


@pytest.mark.parametrize("name", QUICK)
def test_writes_figures_and_numbers(results, name):
    out, res = results
    assert json.loads((out / f"{name}.json").read_text())["files"] == res[name]["files"]
    for f in res[name]["files"]:
        head = (out / f).read_bytes()[:4]
        assert head == (b"\x89PNG" if f.endswith(".png") else b"%PDF")


def test_spike(results):
    r = results[1]["spike"]
    assert r["loss_rises_at_lr10"], "lr 10 should show a loss spike"
    assert r["final_loss"]["lr10"] < r["final_loss"]["lr1"]


def test_learning_rates(results):
    r = results[1]["learning-rates"]
    assert r["rank_correlation_lr"] <= -0.9  # larger lr: fewer steps
    assert r["rank_correlation_alpha"] >= 0.9  # alpha -> 1: more steps
    steps = np.array(r["steps_to_accuracy_1"], dtype=float)
    assert np.isnan(steps[:, -1, :]).all()  # alpha = 1: identical tokens never separate


def test_forgetting(results):
    r = results[1]["forgetting"]
    assert max(r["excess_error_N30"]) > 0
    assert min(r["excess_error_N30"]) >= 0 and min(r["excess_error_N3"]) >= 0


def test_sharpness_and_eos_cross_the_edge_and_converge(results):
    for key in ("N3_lr10", "N30_lr10"):
        r = results[1]["sharpness"][key]
        assert r["max_lr_sharpness_over_2"] > 1 and r["loss_end"] < r["loss_start"]
    eos = results[1]["eos"]
    for d in (3, 5, 10):
        r = eos[f"d{d}_lr20"]
        assert r["max_lr_sharpness_over_2"] > 1 and r["loss_end"] < r["loss_start"]
    assert eos["d3_lr20"]["loss_rises_at"] and eos["d3_lr20"]["margin_sign_changes"] > 10


def test_margins_grow_like_log_t_and_follow_the_theory(results):
    r = results[1]["margins-log"]
    assert min(r["r2"]) >= 0.99
    # rare tokens lag by about log p(x): b(x) - log p(x) varies by < 15% of the spread of log p
    assert r["lag_spread"] < 0.15 * r["log_p_spread"]
    assert r["recurrence_max_abs_err"] < 1e-9  # m_{t+1} = m_t + 2 lr p sigmoid(-m_t), exactly
    assert r["continuous_limit_max_rel_err_lr0.01_t>=1000"] < 0.02  # e^m + m = 2 lr p t + 1


def test_one_step(results):
    assert results[1]["one-step"]["min_accuracy"] == pytest.approx(1.0)


def test_imbalance(results):
    r = results[1]["imbalance"]
    assert r["rare_tokens_oscillating"] > 0 and sum(r["sign_changes_second_half"]) <= 2
    assert r["loss_end"] < r["loss_start"]


def test_every_claim_holds(results):
    assert {n: r.get("holds") for n, r in results[1].items() if r.get("holds") is not None} == {
        n: True for n, r in results[1].items() if r.get("holds") is not None}


def test_pathcond_moons_claim_holds_on_every_seed(tmp_path):
    # the authors' demo at its length up to the claim's epoch (1,500 of 3,000), 3 seeds
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from fastmem.reproduce import pathcond

    r = pathcond.moons_experiment(tmp_path, seeds=3, epochs=1500)
    assert r["holds"] and r["pathcond_below_baseline_per_seed"] == [True] * 3
    assert (tmp_path / "pathcond-moons.png").exists() and (tmp_path / "pathcond-moons.pdf").exists()


def test_pathcond_depth_runs_through_the_sweep_runner(tmp_path):
    # the machinery at a small size (narrow, shallow, few epochs); the full figure: fastmem reproduce
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from fastmem.reproduce import pathcond

    r = pathcond.depth_experiment(tmp_path, depths=(2, 3), seeds=(0,), width=32, max_epochs=3, workers=2)
    assert len(r["runs"]) == 6 and {x["method"] for x in r["runs"]} == {"baseline", "pathcond", "enorm"}
    assert all(0 < x["final_accuracy"] <= 1 and x["n_params"] > 0 for x in r["runs"])
    assert set(r["pathcond_faster_per_seed"]) == {"0"} and isinstance(r["holds"], bool)
    assert (tmp_path / "pathcond-depth.png").exists()


def test_scan_snap_small(results):
    r = results[1]["scan-snap-small"]
    assert r["holds"] and all(r["checks"].values())
    assert [run["ratio"] for run in r["runs"]] == [1.0, 10.0]
    for run in r["runs"]:
        assert len(run["loss"]) == 100 and run["loss"][0] == pytest.approx(np.log(34), abs=1e-6)
        assert [f["argmax"] for f in run["facts"]] == [19, 29]
        assert all(f["common_mass"] < f["common_mass_start"] for f in run["facts"])


def test_scan_snap_medium_on_a_smaller_grid(tmp_path):
    """The Fig. 6 pipeline (sweep runner, cells, figure) on 2 x 2 x 2 x 3 runs; the full grid is
    `fastmem reproduce scan-snap-medium` (BENCHMARKS.md)."""
    from fastmem.reproduce.scansnap import medium_experiment

    r = medium_experiment(tmp_path, num_last=(1, 3), lr_z=(0.5, 3.0), ratio=(1.0, 10.0), seeds=(1, 2, 3), workers=1)
    assert r["runs"] == 24 and len(r["cells"]) == 8
    assert {tuple(sorted(c)) for c in r["cells"]} == {("entropy_mean", "entropy_std", "lr_z", "n_seeds", "num_last",
                                                      "ratio")}
    assert all(c["n_seeds"] == 3 for c in r["cells"])
    assert r["holds"]  # both claims hold on these panels (see the note on 10/20 in BENCHMARKS.md)
    assert len(r["checks"]) == 2 * 2 + 2 and r["holds"] == all(r["checks"].values())  # what the CLI names
    assert all((tmp_path / f).stat().st_size > 0 for f in r["files"])


def test_ihead_wo2_at_the_papers_size(tmp_path):
    r = reproduce("ihead-wo2", tmp_path)
    assert all((tmp_path / f).stat().st_size > 0 for f in r["files"])
    assert r["checks"] and r["holds"], r["checks"]
    assert len(r["loss"]["100"]) == 51


def test_ihead_all_at_a_small_size(tmp_path):
    from fastmem.reproduce.transformer import all_experiment

    r = all_experiment(tmp_path, size=dict(batch_size=32, seq_len=32, steps=300))
    assert all((tmp_path / f).stat().st_size > 0 for f in r["files"])
    assert all(len(v) == 300 for v in r["loss"].values()) and set(r["status"].values()) == {"ok"}
    # what shows already at this size: the head forms and beats W_O^2 alone (docs/transformer.md)
    formed = [c for c in r["checks"] if c.startswith(("L_0", "the head loss", "an induction head", "W_K^1"))]
    assert len(formed) == 4 and all(r["checks"][c] for c in formed), r["checks"]
    assert r["holds"] == all(r["checks"].values())


def test_full_is_refused_where_there_is_no_reduced_size(tmp_path):
    with pytest.raises(InvalidArgumentError, match="full"):
        reproduce("ihead-wo2", tmp_path, full=True)


def test_scaling_law_figures_from_a_sweep_folder(tmp_path):
    # the published grid's keys at a size a test can run: every model, optimizer and LayerNorm
    # setting, two d, two lr; the curves are the sweep's own means
    pytest.importorskip("pandas")
    from fastmem.reproduce.scaling_law import scaling_law_experiment

    grid = {"N": 100, "M": 5, "alpha": 2.0, "d": [10, 40], "seed": [42, 43], "lr": [1.0, 100.0], "batch_size": [16],
            "ntrain": [1024, 4096], "layernorm": [False, True], "optimizer": ["sgd", "adam"],
            "model": ["matrix", "learnable", "exponential"]}
    fm.sweep(grid, tmp_path / "sweep", workers=2, quiet=True)
    r = scaling_law_experiment(tmp_path / "figs", source=tmp_path / "sweep", grid=grid)
    assert (tmp_path / "figs" / "scaling-law.png").exists() and r["runs_on_disk"] == r["runs_in_grid"] == 192
    runs = fm.load_sweep(tmp_path / "sweep")
    lr = r["best_lr_at_large_d"]["matrix/sgd/ln=False"]
    cell = runs[(runs["model"] == "matrix") & (runs["optimizer"] == "sgd") & ~runs["layernorm"] & (runs["d"] == 10)
                & (runs["lr"] == lr) & (runs["ntrain"] == 4096) & (runs["status"] == "ok")]
    assert np.isclose(r["error_against_d"]["matrix/sgd/ln=False"][0], cell["error"].mean())
    assert set(r["checks"]) and all(isinstance(x, bool) for x in r["checks"].values())
    assert r["holds"] == all(r["checks"].values())


@pytest.mark.parametrize("arch", ["full_conv", "resnet18"])
def test_pathcond_conv_runs_through_the_sweep_runner(tmp_path, arch):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    from fastmem.reproduce import pathcond

    r = pathcond.conv_experiment(tmp_path, arch=arch, seeds=(0,), epochs=2, width=4, workers=1)
    assert len(r["runs"]) == 4 and {x["method"] for x in r["runs"]} == {"baseline", "pathcond", "enorm",
                                                                         "pathcond-schedule"}
    assert all(len(x["loss"]) == 2 and len(x["accuracy"]) == 2 and np.isfinite(x["loss"]).all() for x in r["runs"])
    # the rescalings keep the function in eval mode, and their runs differ from the baseline's
    assert r["checks"]["each rescaling keeps the function in eval mode (float32, 1e-5)"]
    runs = {x["method"]: x for x in r["runs"]}
    assert runs["pathcond"]["loss"] != runs["baseline"]["loss"] and runs["pathcond"]["rescale_change"] > 0
    assert set(r["pathcond_no_slower_per_seed"]) == {"0"} and isinstance(r["holds"], bool)
    name = "pathcond-conv" if arch == "full_conv" else "pathcond-conv-resnet18"
    assert (tmp_path / f"{name}.png").exists() and (tmp_path / f"{name}.pdf").exists()
