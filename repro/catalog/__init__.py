"""Catalog stage: what a recipe is (schema), loading and validating recipes/, flag schemas, seeds."""

from repro.catalog.loader import (
    RECIPES_DIR, config_file_path, get, load_all, load_model, recipe_path, recipe_paths,
)

__all__ = ["RECIPES_DIR", "config_file_path", "get", "load_all", "load_model", "recipe_path", "recipe_paths"]
