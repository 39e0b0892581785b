"""A smoke run of the asv suite: every benchmark's setup and body at its smallest parameters."""

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "benchmarks"
PACKAGE = "fastmem_asv_suite"  # the suite's package, imported under a private name


def _suite_modules():
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACKAGE, SUITE / "__init__.py",
                                                      submodule_search_locations=[str(SUITE)])
        sys.modules[PACKAGE] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[PACKAGE])
    return [importlib.import_module(f"{PACKAGE}.{p.stem}") for p in sorted(SUITE.glob("bench_*.py"))]


def _cases():
    for mod in _suite_modules():
        for cls in vars(mod).values():
            if (isinstance(cls, type) and hasattr(cls, "params") and cls.__module__ == mod.__name__
                    and not cls.__name__.startswith("_")):  # a shared base, no benchmark of its own
                yield pytest.param(cls, id=f"{mod.__name__.split('.')[-1]}.{cls.__name__}")


@pytest.mark.parametrize("cls", list(_cases()))
def test_benchmark_runs_at_its_smallest_parameters(cls):
    params = cls.params if isinstance(cls.params[0], list) else [cls.params]
    smallest = [p[0] for p in params]
    bench = cls()
    try:
        bench.setup(*smallest)
    except NotImplementedError as exc:
        pytest.skip(str(exc))
    methods = [m for m in dir(bench) if m.startswith(("time_", "track_", "peakmem_"))]
    assert methods, f"{cls.__name__} has no benchmark"
    for m in methods:
        out = getattr(bench, m)(*smallest)
        if m.startswith("track_"):
            assert out > 0, m
