"""The loss-geometry analyzers of ``vitsam.analysis`` under the evaluator protocol: each
runs on un-augmented images of the run (a class-stratified prefix, as many as its
options ask for) with the run's own training loss, in eval mode.

The paper measures on training images (``split="train"``). A model trained to zero
training loss has a vanishing training-loss Hessian (the softmax saturates: the
curvature J^T (diag(p) - p p^T) J goes to zero with the loss), so the same measures on
held-out images of the same distribution (``split="val"``, the run's validation hold-out)
are offered beside them (docs/calibration.md).
"""
from __future__ import annotations

import dataclasses

from vitsam.analysis.activations import ActivationSparsity
from vitsam.analysis.attention import AttentionMaps
from vitsam.analysis.hessian import GaussNewtonAnalysis, HessianAnalysis
from vitsam.analysis.landscape import GaussianPerturbation, LossLandscape
from vitsam.analysis.ntk import NTKConditioning
from vitsam.analysis.sharpness import SharpnessAnalysis
from vitsam.errors import VitsamError
from vitsam.evaluators.protocol import Result, register

ANALYZERS = (HessianAnalysis, GaussNewtonAnalysis, NTKConditioning, LossLandscape, GaussianPerturbation,
             SharpnessAnalysis, ActivationSparsity, AttentionMaps)
DEFAULT_EXAMPLES = 256


def examples_needed(options) -> int:
    """How many training images an analyzer uses: its ``examples`` option, else what its
    other options imply (NTK: blocks x block size; attention: the images it draws)."""
    if hasattr(options, "examples"):
        return options.examples
    if hasattr(options, "blocks") and hasattr(options, "block_size"):
        return options.blocks * options.block_size
    return getattr(options, "images", DEFAULT_EXAMPLES)


def _number(value) -> str:
    return "inf" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def hessian_summary(record: dict) -> str:
    blocks = record.get("blocks", {}).get("lambda_max", {})
    text = f"lambda_max {_number(record.get('lambda_max'))}"
    if "trace" in record:
        text += f", trace {_number(record['trace'])}"
    return text + ("; per block: " + ", ".join(f"{k} {_number(v)}" for k, v in blocks.items()) if blocks else "")


def ntk_summary(record: dict) -> str:
    kernels = {k: v for k, v in record.items() if isinstance(v, dict) and "kappa" in v}
    return ", ".join(f"kappa[{k}] {_number(v['kappa'])}" for k, v in kernels.items())


def sparsity_summary(record: dict) -> str:
    return ", ".join(f"{k} {[round(100 * v, 1) for v in vs]}% active" for k, vs in record.get("per_block", {}).items())


def sharpness_summary(record: dict) -> str:
    parts = [f"{key} {_number(record[key]['sharpness'])}" for key in ("worst_case", "adaptive", "m_sharpness")
             if key in record]
    return "sharpness: " + ", ".join(parts)


SUMMARIES = {"hessian": hessian_summary, "ggn": hessian_summary, "ntk": ntk_summary, "sparsity": sparsity_summary,
             "sharpness": sharpness_summary}


SPLITS = ("train", "val")


def _register(cls) -> None:
    # the analyzer's own options plus the split it measures on
    options = dataclasses.make_dataclass(f"{cls.__name__}Options", [("split", str, dataclasses.field(default="train"))],
                                         bases=(cls,))
    options.__doc__ = cls.__doc__

    def run(model, data, opts) -> Result:
        if opts.split not in SPLITS:
            raise VitsamError(f"{cls.name}.split={opts.split!r}; valid choices: {', '.join(SPLITS)}")
        analysis = opts.run(model, data.batches(opts.split, examples_needed(opts)), data.loss_fn)
        return Result({**analysis.metrics, "split": opts.split}, analysis.figures)

    run.__doc__ = (cls.__doc__ or "").strip()
    register(cls.name, options, section="geometry", summary=SUMMARIES.get(cls.name))(run)


for _cls in ANALYZERS:
    _register(_cls)
