"""Optimizers: the SAM family as wrappers around a base optimizer, LR schedules, a factory."""
from vitsam.optim.factory import build_optimizer, parameter_groups
from vitsam.optim.sam import GSAM, SAM, LookSAM
from vitsam.optim.schedules import build_scheduler, lr_lambda

__all__ = ["SAM", "GSAM", "LookSAM", "build_optimizer", "parameter_groups",
           "build_scheduler", "lr_lambda"]
