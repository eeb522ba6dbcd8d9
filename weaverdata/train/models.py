"""Where trainer models come from: `module:Class` references and the tiny-model cache."""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

CLASS_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
"""`package.module:ClassName` (a hub id has a slash and no colon; a path exists on disk)."""


def import_class(ref: str, search: str | None = None):
    """The class named by `module:Class`; the module is looked up in `search` (the directory the
    command ran in, as `python -m` does) and on the usual path."""
    import sys

    from weaverdata.train.contracts import TrainError

    where = search or os.getcwd()
    if where not in sys.path:
        sys.path.insert(0, where)
    module, _, name = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise TrainError(f"cannot import {ref}: {exc}") from exc


def cache_dir() -> Path:
    """Where `tiny` models are built: $WEAVERDATA_CACHE, else ~/.cache/weaverdata."""
    return Path(os.environ.get("WEAVERDATA_CACHE", Path.home() / ".cache" / "weaverdata"))
