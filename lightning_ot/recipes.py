"""Finding the recipe files (``recipes/NAME.yaml``) from a source checkout or an installed wheel."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["RecipeNotFoundError", "available_recipes", "recipe_path"]


class RecipeNotFoundError(LookupError):
    """No recipe of that name exists."""


def _recipe_folders() -> list[Path]:
    folders = []
    packaged = resources.files("lightning_ot") / "recipes"  # installed wheel: shipped as package data
    if packaged.is_dir():
        folders.append(Path(str(packaged)))
    checkout = Path(__file__).resolve().parent.parent / "recipes"  # source checkout / editable install
    if checkout.is_dir():
        folders.append(checkout)
    return folders


def available_recipes() -> list[str]:
    """Sorted names of every recipe that ``--recipe`` accepts."""
    return sorted({path.stem for folder in _recipe_folders() for path in folder.glob("*.yaml")})


def recipe_path(name: str) -> Path:
    """Path of the recipe ``name`` (without ``.yaml``).

    Raises:
        RecipeNotFoundError: naming the recipes that exist.
    """
    for folder in _recipe_folders():
        candidate = folder / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    raise RecipeNotFoundError(
        f"no recipe named {name!r}; available recipes: {', '.join(available_recipes()) or '(none found)'}"
    )
