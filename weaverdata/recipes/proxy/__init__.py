"""The proxy sources of build-proxy, one module each, behind one registry.

A new source is one module implementing :class:`~weaverdata.recipes.proxy.base.ProxySource`,
its prompts in ``pipelines/prompts/``, and a line here (and its name in ``ProxyConfig.recipe``).
"""

from __future__ import annotations

from weaverdata.recipes.proxy.base import ProxySource
from weaverdata.recipes.proxy.documents import Documents
from weaverdata.recipes.proxy.image_group import ImageGroup
from weaverdata.recipes.proxy.single_image import SingleImage
from weaverdata.recipes.proxy.text_seed import TextSeed

SOURCES: dict[str, ProxySource] = {s.name: s for s in (Documents(), SingleImage(), ImageGroup(), TextSeed())}


def source_for(recipe: str) -> ProxySource:
    """The registered source of a recipe name; an unknown name is an error, never a fallback."""
    try:
        return SOURCES[recipe]
    except KeyError:
        raise ValueError(f"unknown build-proxy recipe {recipe!r}; known: {', '.join(sorted(SOURCES))}") from None
