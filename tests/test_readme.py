"""The Python examples of README.md run as written."""

import re
from pathlib import Path

import pytest

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
SETUP = ("import fastmem as fm\n"
         "task = fm.Task.zipf(N=100, M=5, alpha=2.0)\n"
         "mem = fm.AssociativeMemory(*fm.embeddings.gaussian(N=100, M=5, d=32, seed=0))\n"
         "trajectory = fm.train(mem, task, fm.SGD(lr=1.0), 50, batch_size=16,\n"
         "                      record=fm.Record('all', ('W',))).W_history.reshape(51, -1)\n")


@pytest.mark.parametrize("i", range(len(BLOCKS)))
def test_readme_python_block(i, tmp_path, monkeypatch):
    block = BLOCKS[i]
    if "torch" in block:
        pytest.importorskip("torch")
    if "fm.sweep(" in block:
        block = block.replace('workers=2', 'workers=1').replace('"d": [10, 100]', '"d": [4]')
    monkeypatch.chdir(tmp_path)
    exec(compile(SETUP + block, f"README block {i}", "exec"), {})
