"""fastmem report (issue 27): the figure choice on grids of several shapes, the compare table on
two sweeps that differ in one cell by construction, bad input, a damaged chunk and a partial
sweep, and the page as a person sees it, in headless Chromium."""

import base64
import io
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fastmem as fm
from fastmem.sweeps.report import Layout, choose_layout, report

pytest.importorskip("pandas")
pytest.importorskip("jinja2")

GRID = {"d": [4, 8, 16], "seed": [1, 2, 3], "lr": [1.0, 100.0], "batch_size": [4], "ntrain": [64],
        "optimizer": ["sgd", "adam"], "model": ["matrix", "learnable"], "N": 12, "M": 3}
CELL = {"d": 8, "lr": 1.0, "optimizer": "sgd", "model": "matrix"}  # the cell changed by construction


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("report") / "sweep"
    fm.sweep(GRID, out, workers=1, quiet=True, trajectory=6, chunk_size=8)
    return out


def _copy(src, dst):
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns(".lock", "report.html"))
    return dst


@pytest.mark.parametrize("axes, kw, want", [
    # the published grid's shape: d (7 values, 10 to 1000) on a log x; the two-valued categorical
    # axes as lines; the next axes, fewest values first, as panels; the rest a figure each
    ({"d": [10, 20, 50, 100, 200, 500, 1000], "seed": list(range(10)), "lr": [0.1, 1.0, 10.0, 100.0],
      "batch_size": [16, 64, 256, 1024], "ntrain": [1024, 10240, 102400], "layernorm": [False, True],
      "optimizer": ["adam", "sgd"], "model": ["exponential", "learnable", "matrix"], "N": [100]}, {},
     Layout("d", ["layernorm", "optimizer"], ["ntrain", "model"], ["lr", "batch_size"], True)),
    ({"d": [1, 2, 3], "seed": [1, 2], "N": [5]}, {}, Layout("d", [], [], [], False)),
    ({"optimizer": ["adam", "sgd"], "model": ["a", "b", "c"], "seed": [1, 2]}, {},
     Layout("model", ["optimizer"], [], [], False)),
    ({"d": [4, 8, 16], "lr": [1.0, 10.0, 100.0, 1000.0], "model": ["a", "b"]}, {"x": "lr", "by": ["model"]},
     Layout("lr", ["model"], ["d"], [], True)),
])
def test_the_figures_are_chosen_from_the_grid(axes, kw, want):
    assert choose_layout(axes, **kw) == want


def test_a_cell_that_differs_by_construction_is_the_one_listed(swept, tmp_path):
    import pandas as pd

    other = _copy(swept, tmp_path / "other")
    for f in sorted((other / "runs").glob("chunk-*.parquet")):
        df = pd.read_parquet(f)
        hit = np.logical_and.reduce([df[k] == val for k, val in CELL.items()])
        df.loc[hit, "error"] = df.loc[hit, "error"] + 0.5
        df.to_parquet(f)
    page = report(swept, html=tmp_path / "compare.html", compare=other).read_text()
    table = page.split('<table id="differing-error">')[1].split("</table>")[0]
    rows = re.findall(r"<tr><td>([^<]*)</td>", table)
    assert rows == [", ".join(f"{k}={CELL[k]}" for k in ("model", "optimizer", "d", "lr"))]
    same = report(swept, html=tmp_path / "same.html", compare=_copy(swept, tmp_path / "same")).read_text()
    assert re.findall(r"<tr><td>", same.split('<table id="differing-error">')[1].split("</table>")[0]) == []


def test_bad_input_is_named_listing_what_is_there(swept, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(fm.InvalidArgumentError, match=r"^out: expected a sweep's folder"):
        report(tmp_path / "empty")
    nothing = tmp_path / "nothing"
    nothing.mkdir()
    (nothing / "sweep.json").write_text((swept / "sweep.json").read_text())
    with pytest.raises(fm.InvalidArgumentError, match=r"^out: expected a sweep with runs on disk"):
        report(nothing)
    with pytest.raises(fm.InvalidArgumentError, match=r"^--by: expected axes of the grid \[.*'d'.*\], got 'width'"):
        report(swept, html=tmp_path / "r.html", by=["width"])
    with pytest.raises(fm.InvalidArgumentError, match=r"^--y: expected metrics of this sweep \['error', 'loss'"):
        report(swept, html=tmp_path / "r.html", y=["accuracy"])
    snap = tmp_path / "snap"
    fm.sweep({"steps": 2, "seed": [0], "batch": 8, "L": 8, "lr_z": 1.0, "num_last": 1, "ratio": 1.0}, snap,
             experiment="scan-snap", workers=1, quiet=True)
    with pytest.raises(fm.InvalidArgumentError, match=r"^--compare: expected a sweep of 'scaling-law'"):
        report(swept, html=tmp_path / "r.html", compare=snap)


def test_a_damaged_chunk_is_said_and_a_partial_sweep_marked(swept, tmp_path):
    import pandas as pd

    folder = _copy(swept, tmp_path / "damaged")
    chunks = sorted((folder / "runs").glob("chunk-*.parquet"))
    lost = len(pd.read_parquet(chunks[0]))
    chunks[0].write_bytes(b"not parquet")
    page = report(folder).read_text()
    assert "Not read:" in page and chunks[0].name in page
    on_disk = 72 - lost  # the grid's 72 runs, less the damaged chunk's
    assert f'id="runs-on-disk">{on_disk}<' in page and f'id="runs-missing">{lost}<' in page
    assert 'id="partial"' in page and f"{on_disk} of 72 runs" in page
    assert page.count('<img class="figure"') >= 2  # the rest is drawn


def test_the_cli_writes_the_page(swept, tmp_path):
    r = subprocess.run([sys.executable, "-m", "fastmem", "report", str(swept), "--html", str(tmp_path / "p.html"),
                        "--y", "loss", "--by", "optimizer"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "p.html").read_text()
    assert "lines: <code>optimizer</code>" in page and "http" not in page.split("<body>")[1].split("Made by")[0]
    r = subprocess.run([sys.executable, "-m", "fastmem", "report", str(tmp_path)], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 2 and "fastmem report: error: out: expected a sweep's folder" in r.stderr


def _browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        pytest.skip(f"selenium is not installed ({exc})")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    if not chromium or not driver:
        pytest.skip("no headless Chromium here (Debian's chromium and chromium-driver; .ci/run installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1300,1600"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver), options=opts)


# Each figure drawn on a canvas: decoded (its natural size) and not blank (more than one colour).
_IMAGES = """
return Array.from(document.querySelectorAll('img.figure')).map(function (img) {
  var c = document.createElement('canvas'); c.width = img.naturalWidth; c.height = img.naturalHeight;
  var ctx = c.getContext('2d'); ctx.drawImage(img, 0, 0);
  var d = ctx.getImageData(0, 0, c.width, c.height).data, colours = {};
  for (var i = 0; i < d.length; i += 4 * 97) { colours[d[i] + ',' + d[i + 1] + ',' + d[i + 2]] = 1; }
  return [img.complete, img.naturalWidth, Object.keys(colours).length];
});
"""


def test_the_page_in_a_real_browser(swept, tmp_path):
    from selenium.webdriver.common.by import By

    page = report(swept, html=tmp_path / "report.html")
    runs = fm.sweeps.load_sweep(swept)
    browser = _browser()
    try:
        browser.get(page.resolve().as_uri())
        shot = tmp_path / "page.png"
        browser.save_screenshot(str(shot))
        errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
        images = browser.execute_script(_IMAGES)
        header = {k: browser.find_element(By.ID, f"runs-{k}").text for k in ("on-disk", "ok", "diverged", "failed")}
    finally:
        browser.quit()
    assert errors == []
    assert len(images) >= 3 and all(done and width > 100 and colours > 3 for done, width, colours in images), images
    status = runs["status"].value_counts()
    assert header == {"on-disk": str(len(runs)), "ok": str(status.get("ok", 0)),
                      "diverged": str(status.get("diverged", 0)), "failed": str(status.get("failed", 0))}
    import matplotlib.image as mpimg

    pixels = mpimg.imread(io.BytesIO(shot.read_bytes()))
    assert pixels.shape[0] > 500 and pixels.std() > 0.05  # the screenshot shows a page, not a blank


def test_every_inline_figure_is_a_png_that_decodes(swept, tmp_path):
    import matplotlib.image as mpimg

    page = report(swept, html=tmp_path / "r.html").read_text()
    pngs = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(pngs) >= 3  # the error figure and the two trajectory figures
    for data in pngs:
        img = mpimg.imread(io.BytesIO(base64.b64decode(data)))
        assert img.std() > 0.01
