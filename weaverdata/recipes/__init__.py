"""Recipes: one module per command, each a config model plus a per-unit function."""
