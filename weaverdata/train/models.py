"""Where trainer models come from: `module:Class` references and the tiny-model cache."""

from __future__ import annotations

import importlib
import os
import re
from pathlib import Path

CLASS_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
"""`package.module:ClassName` (a hub id has a slash and no colon; a path exists on disk)."""


def import_class(ref: str):
    from weaverdata.train.loop import TrainError

    module, _, name = ref.partition(":")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        raise TrainError(f"cannot import {ref}: {exc}") from exc


def cache_dir() -> Path:
    """Where `tiny` models are built: $WEAVERDATA_CACHE, else ~/.cache/weaverdata."""
    return Path(os.environ.get("WEAVERDATA_CACHE", Path.home() / ".cache" / "weaverdata"))
