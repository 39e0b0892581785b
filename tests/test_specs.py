"""Every spec that crosses the binding has the fields and defaults of the C++ struct it becomes
(read from the headers themselves, so that a field added or a default changed on one side only
fails here)."""

import importlib
import re
from pathlib import Path

import numpy as np
import pytest

from fastmem import specs
from fastmem.scansnap import data as scansnap_data

scansnap_train = importlib.import_module("fastmem.scansnap.train")  # the module: fm.scansnap.train is its function

INCLUDE = Path(__file__).resolve().parents[1] / "csrc" / "include" / "fastmem"

# (Python spec, header, C++ struct, the struct's fields that the binding derives from the others)
PAIRS = [
    pytest.param(specs.OptimizerSpec, "params.hpp", "OptimizerParams", (), id="OptimizerParams"),
    pytest.param(specs.TrainSpec, "params.hpp", "TrainParams", (), id="TrainParams"),
    pytest.param(specs.RecordSpec, "train.hpp", "TrainRecord", ("count",), id="TrainRecord"),
    pytest.param(specs.ModelOptimizerSpec, "train_models.hpp", "ModelOptimizer", (), id="ModelOptimizer"),
    pytest.param(scansnap_train.Spec, "train_scansnap.hpp", "Spec", ("n_record",), id="scansnap::Spec"),
    pytest.param(scansnap_train.Outputs, "train_scansnap.hpp", "Output", (), id="scansnap::Output"),
    pytest.param(scansnap_data.FactTables, "kernels/scansnap.hpp", "Facts", ("F",), id="scansnap::Facts"),
    pytest.param(scansnap_data.SequenceTables, "kernels/scansnap.hpp", "Sequences", ("S", "L"),
                 id="scansnap::Sequences"),
]


def struct_fields(header, name):
    """{field: default as written (None where it has none)} of ``struct name`` in a header: its
    data members, one declaration a line (``type a = x, b = y;``), methods and comments skipped."""
    text = (INCLUDE / header).read_text()
    m = re.search(r"^struct " + name + r" \{\n(.*?)^\};", text, re.S | re.M)
    assert m, f"struct {name} not found in {header}"
    fields = {}
    for line in m.group(1).splitlines():
        line = line.split("//")[0].strip()
        if not line.endswith(";") or "(" in line or line.startswith(("using", "static", "enum")):
            continue
        decl = re.sub(r"^(const )?[\w:<>]+\*?\s+(\*\s*)?", "", line[:-1])
        for part in decl.split(","):
            key, _, default = part.partition("=")
            fields[key.strip()] = default.strip() or None
    return fields


def same_default(cpp, py):
    """Whether the header's default ``cpp`` (as written) is the Python default ``py``."""
    if cpp is None:  # no initialiser in the header
        return False
    if isinstance(py, specs.enum.IntEnum):
        return cpp.split("::")[-1].lower() == py.name.lower()
    if py is None:
        return cpp == "nullptr"
    if isinstance(py, bool):
        return cpp == ("true" if py else "false")
    return cpp not in ("nullptr", "true", "false") and float(cpp) == float(py)


@pytest.mark.parametrize("spec, header, struct, derived", PAIRS)
def test_a_spec_has_the_fields_and_defaults_of_its_struct(spec, header, struct, derived):
    cpp = struct_fields(header, struct)
    assert set(spec._fields) == set(cpp) - set(derived), (sorted(spec._fields), sorted(cpp))
    for name, default in spec._field_defaults.items():
        assert same_default(cpp[name], default), f"{struct}.{name}: {cpp[name]} in {header}, {default!r} in Python"


def test_the_header_parser_reads_what_a_header_declares():
    # the parser itself, on a struct whose fields and defaults are known: a broken parser would
    # make the test above vacuous
    got = struct_fields("params.hpp", "OptimizerParams")
    assert got["kind"] == "OptimizerKind::SGD" and got["beta2"] == "0.999" and got["schedule_steps"] == "0"
    assert struct_fields("train.hpp", "TrainRecord")["W"] == "nullptr"
    assert not same_default("0.9", 0.0) and not same_default("nullptr", 0) and same_default("1e-8", 1e-8)
    assert np.isclose(float(got["eps"]), specs.OptimizerSpec._field_defaults["eps"])
