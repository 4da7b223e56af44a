"""The scripts in benchmarks/ are not a package: tests load them as modules through here."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def load_benchmark(name: str, module_name: str | None = None) -> ModuleType:
    """``benchmarks/<name>.py`` executed as a fresh module, registered in ``sys.modules`` as
    ``module_name`` (default ``name``): dataclasses look their module up there while being
    defined. Give another ``module_name`` where ``name`` would shadow a real module (train)."""
    module_name = module_name or name
    spec = importlib.util.spec_from_file_location(module_name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module
