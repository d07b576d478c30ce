"""The loss-geometry analyzers of ``vitsam.analysis`` under the evaluator protocol: each
runs on the run's un-augmented training images (a class-stratified prefix, as many as
its options ask for) with the run's own training loss, in eval mode."""
from __future__ import annotations

from vitsam.analysis.activations import ActivationSparsity
from vitsam.analysis.attention import AttentionMaps
from vitsam.analysis.hessian import HessianAnalysis
from vitsam.analysis.landscape import GaussianPerturbation, LossLandscape
from vitsam.analysis.ntk import NTKConditioning
from vitsam.evaluators.protocol import Result, register

ANALYZERS = (HessianAnalysis, NTKConditioning, LossLandscape, GaussianPerturbation, ActivationSparsity,
             AttentionMaps)
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


SUMMARIES = {"hessian": hessian_summary, "ntk": ntk_summary, "sparsity": sparsity_summary}


def _register(cls) -> None:
    def run(model, data, options) -> Result:
        analysis = options.run(model, data.batches("train", examples_needed(options)), data.loss_fn)
        return Result(analysis.metrics, analysis.figures)

    run.__doc__ = (cls.__doc__ or "").strip()
    register(cls.name, cls, section="geometry", summary=SUMMARIES.get(cls.name))(run)


for _cls in ANALYZERS:
    _register(_cls)
