"""The zoo's recipes, one file each; `RECIPES` maps a recipe name to its Recipe."""

from __future__ import annotations

from ..recipe import Recipe
from . import bytegpt2, fmnist_cnn, fmnist_resnet, induction, modadd, textlm, tms

RECIPES: dict[str, Recipe] = {r.name: r for r in (modadd.RECIPE, tms.RECIPE, induction.RECIPE, induction.CONTROL,
                                                       fmnist_cnn.RECIPE, fmnist_resnet.RECIPE, textlm.RECIPE,
                                                       bytegpt2.RECIPE)}
