"""Package names loaded on first use (PEP 562), so that importing a package stays cheap.

Usage (in a package's ``__init__.py``)::

    __getattr__ = lazy_names(__name__, {"Analyzer": ".pipeline"})
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_names"]


def lazy_names(package: str, homes: Mapping[str, str]) -> Callable[[str], Any]:
    """A module `__getattr__` that imports `homes[name]` (relative to `package`) on first use."""

    def __getattr__(name: str) -> Any:
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(importlib.import_module(homes[name], package), name)

    return __getattr__
