"""Robustness: ImageNet-C-style corruptions, adversarial attacks, shifted test sets.

- ``corruptions.corrupt(images, name, severity, generator)``: the 19 corruptions, batched torch;
- ``adversarial.pgd`` / ``fgsm``: attacks in [0, 1] pixel units;
- ``evaluate``: corrupted / adversarial accuracy, mCE, stored corrupted layouts;
- ``shifted.evaluate_shift``: ImageNet-R, -A, -V2 and ReaL;
- ``runner.run_robustness`` / ``add_cli``: ``vitsam robust RUN_DIR``;
- ``report.robustness_section``: the report's robustness section.
"""
from vitsam.robustness.adversarial import fgsm, pgd
from vitsam.robustness.corruptions import ALL_CORRUPTIONS, CORRUPTIONS, EXTRA_CORRUPTIONS, corrupt
from vitsam.robustness.evaluate import corruption_errors, evaluate_corrupted_sets, evaluate_corruptions, evaluate_pgd
from vitsam.robustness.report import robustness_section
from vitsam.robustness.runner import add_cli, run_robustness
from vitsam.robustness.shifted import evaluate_shift

__all__ = ["corrupt", "ALL_CORRUPTIONS", "CORRUPTIONS", "EXTRA_CORRUPTIONS", "pgd", "fgsm",
           "evaluate_corruptions", "evaluate_pgd", "evaluate_corrupted_sets", "corruption_errors",
           "evaluate_shift", "run_robustness", "add_cli", "robustness_section"]
