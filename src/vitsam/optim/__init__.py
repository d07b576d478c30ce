"""Optimizers: the SAM family as wrappers around a base optimizer, LR schedules, a factory."""
from vitsam.optim.factory import build_optimizer, parameter_groups
from vitsam.optim.sam import GSAM, SAM, SINGLE_PASS, LookSAM, Pass, call_closure
from vitsam.optim.schedules import build_scheduler, lr_lambda

__all__ = ["SAM", "GSAM", "LookSAM", "Pass", "SINGLE_PASS", "call_closure", "build_optimizer", "parameter_groups",
           "build_scheduler", "lr_lambda"]
