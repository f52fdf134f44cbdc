"""The skip-connection homotopy (paper, Sections 4 and 5.3): blends whose weight t training drives
to 0, the schedules, the training loop and its data. A side product built on the compiler core:
the core never imports this package; `foldpass optimize` removes what is left at t == 0.

    blend.py       Blend, MultiBlend, blend_residuals (the converter), set_t / get_t
    schedules.py   t per epoch or step (paper, linear, cosine, exp, threshold, static)
    training.py    the training loop (DDP under torchrun), checkpoints, export_pt2
    recipe.py      train_homotopy() and deskip(): all of the above in one call, as `foldpass train`
                   and `foldpass deskip` run them; the recipes (paper, foldpass)
"""

from .blend import Blend, MultiBlend, blend_residuals, blends, get_t, residual_roles, set_t
from .schedules import SCHEDULES, Schedule, make_schedule
from .recipe import RECIPES, DeskipResult, Recipe, TrainResult, deskip, recipe, train_homotopy
from .training import EpochLog, evaluate, export_pt2, init_distributed, recalibrate_batchnorm, train

__all__ = [
    "Blend", "DeskipResult", "EpochLog", "RECIPES", "Recipe", "deskip", "recipe", "MultiBlend", "SCHEDULES",
    "Schedule", "blend_residuals", "blends", "evaluate",
    "export_pt2", "get_t", "init_distributed", "make_schedule", "recalibrate_batchnorm", "residual_roles", "set_t",
    "train", "TrainResult", "train_homotopy",
]
