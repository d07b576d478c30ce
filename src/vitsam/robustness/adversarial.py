"""Projected gradient descent (Madry et al. 2018) and FGSM on images in [0, 1].

The paper's adversarial column is PGD-10 with a random start under an L-inf ball
(PAPER.md, "Robustness evaluation"). vitsam models take [0, 1] pixels and normalise
inside, so ``eps`` and the step size are in pixel units of [0, 1] images whatever the
model's normalisation (ImageNet conventions: eps 1/255, 2/255, 4/255, step eps / 4).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vitsam.errors import VitsamError, unknown_choice

NORMS = ("linf", "l2")


def _per_sample_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.ndim - 1)))


def _project(delta: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    if norm == "linf":
        return delta.clamp(-eps, eps)
    return delta * (eps / _per_sample_norm(delta)).clamp(max=1.0)


def _random_start(images: torch.Tensor, eps: float, norm: str, generator) -> torch.Tensor:
    """Uniform in the L-inf cube, or uniform in the L2 ball (direction on the sphere,
    radius eps * u^(1/d))."""
    device = generator.device if generator is not None else images.device
    if norm == "linf":
        u = torch.rand(images.shape, generator=generator, device=device)
        return ((2 * u - 1) * eps).to(images)
    direction = torch.randn(images.shape, generator=generator, device=device).to(images)
    radius = torch.rand(images.shape[0], generator=generator, device=device).to(images)
    radius = eps * radius ** (1.0 / images[0].numel())
    return direction / _per_sample_norm(direction) * radius.view(-1, *([1] * (images.ndim - 1)))


def pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int = 10,
        step_size: float | None = None, norm: str = "linf", random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """Adversarial images for ``model`` (B, C, H, W) in [0, 1], inside the ``norm`` ball of
    radius ``eps`` around ``images`` and inside [0, 1]; maximises the cross-entropy.

    ``step_size`` defaults to 2.5 * eps / steps (eps / 4 for PGD-10). The model runs in
    eval mode (BatchNorm statistics and dropout frozen) and is restored afterwards;
    only the input gets gradients. FGSM is ``steps=1, step_size=eps, random_start=False``.
    """
    if norm not in NORMS:
        raise unknown_choice("PGD norm", norm, NORMS)
    if eps < 0 or steps < 1:
        raise VitsamError(f"PGD needs eps >= 0 and steps >= 1, got eps={eps}, steps={steps}")
    images = images.detach()
    if eps == 0:
        return images.clone()
    step_size = 2.5 * eps / steps if step_size is None else step_size
    was_training = model.training
    model.eval()
    try:
        delta = _random_start(images, eps, norm, generator) if random_start else torch.zeros_like(images)
        delta = (images + delta).clamp(0, 1) - images
        for _ in range(steps):
            delta.requires_grad_(True)
            # summed loss: each image's gradient is its own, independent of the batch size
            loss = F.cross_entropy(model(images + delta), labels, reduction="sum")
            grad, = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                ascent = grad.sign() if norm == "linf" else grad / _per_sample_norm(grad)
                delta = _project(delta + step_size * ascent, eps, norm)
                delta = (images + delta).clamp(0, 1) - images
        return (images + delta).detach()
    finally:
        model.train(was_training)


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """The fast gradient sign method (Goodfellow et al. 2015): one full step, no random start."""
    return pgd(model, images, labels, eps, steps=1, step_size=eps, norm=norm, random_start=False)
