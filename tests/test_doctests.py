"""The examples in weaverdata's docstrings hold (they document pure rules: budgets, thread
shares, engine actor options, text cuts)."""

from __future__ import annotations

import doctest
import importlib
import pkgutil

import pytest

import weaverdata

MODULES = sorted(m.name for m in pkgutil.walk_packages(weaverdata.__path__, "weaverdata.") if not m.name.endswith("__main__"))  # importing __main__ runs the CLI


def modules_with_examples() -> list[str]:
    out = []
    for name in MODULES:
        module = importlib.import_module(name)
        if any(t.examples for t in doctest.DocTestFinder().find(module)):
            out.append(name)
    return out


@pytest.mark.parametrize("name", modules_with_examples())
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples in {name} failed (run: python -m doctest -v {name.replace('.', '/')}.py)"
