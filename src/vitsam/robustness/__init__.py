"""Robustness: ImageNet-C-style corruptions, adversarial attacks, shifted test sets.

- ``corruptions.corrupt(images, name, severity, generator)``: the 19 corruptions, batched torch;
- ``adversarial.pgd`` / ``apgd`` / ``fgsm``: attacks in [0, 1] pixel units;
- ``evaluate``: corrupted / adversarial accuracy with intervals and per-image correctness, mCE;
- ``layouts``: stored corrupted sets (ImageNet-C, CIFAR-10/100-C, MNIST-C);
- ``shifted.evaluate_shift``: ImageNet-R, -A, -V2 and ReaL;
- ``report.robustness_section``: the report's robustness section.
``vitsam robust`` and the evaluators built on these live in ``vitsam.evaluators.robustness``.
"""
from vitsam.robustness.adversarial import apgd, fgsm, pgd
from vitsam.robustness.corruptions import ALL_CORRUPTIONS, CORRUPTIONS, EXTRA_CORRUPTIONS, corrupt
from vitsam.robustness.evaluate import (corruption_errors, evaluate_apgd, evaluate_attack, evaluate_corrupted_sets,
                                        evaluate_corruptions, evaluate_pgd)
from vitsam.robustness.report import robustness_section
from vitsam.robustness.shifted import evaluate_shift

__all__ = ["corrupt", "ALL_CORRUPTIONS", "CORRUPTIONS", "EXTRA_CORRUPTIONS", "pgd", "apgd", "fgsm",
           "evaluate_corruptions", "evaluate_attack", "evaluate_pgd", "evaluate_apgd", "evaluate_corrupted_sets",
           "corruption_errors", "evaluate_shift", "robustness_section"]
