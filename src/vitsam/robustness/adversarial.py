"""Adversarial attacks on images in [0, 1]: PGD (Madry et al. 2018), FGSM (Goodfellow
et al. 2015) and APGD (Croce & Hein 2020, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks").

vitsam models take [0, 1] pixels and normalise inside, so ``eps`` and step sizes are in
pixel units of [0, 1] images whatever the model's normalisation (ImageNet conventions:
L-inf eps 1/255, 2/255, 4/255; the paper's adversarial-training table evaluates PGD-10).
Every attack returns images inside the ``norm`` ball of radius ``eps`` around the input
and inside [0, 1]. Attacks run the model in eval mode with its parameters frozen, and
work under ``torch.no_grad()`` and ``torch.inference_mode()``: the model's train flag and
each parameter's ``requires_grad`` are restored afterwards, and no ``.grad`` is written.

Losses the attacks maximise (``loss``): ``"ce"`` cross-entropy, ``"dlr"`` the difference
of logits ratio (Croce & Hein 2020, Sec. 4). With ``targets`` the attack is targeted:
it maximises -CE(logits, target), or the targeted DLR.
"""
from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from vitsam.errors import VitsamError, unknown_choice

NORMS = ("linf", "l2")
LOSSES = ("ce", "dlr")
APGD_MOMENTUM = 0.75   # alpha of Croce & Hein 2020, Sec. 3
APGD_RHO = 0.75        # rho of their checkpoint condition 1


@contextmanager
def attack_mode(model: nn.Module):
    """Gradients on (even inside no_grad / inference_mode), eval mode, parameters frozen
    (only the input needs a gradient); the model's flags restored afterwards."""
    was_training = model.training
    flags = [(p, p.requires_grad) for p in model.parameters()]
    model.eval()
    try:
        with torch.inference_mode(False), torch.enable_grad():
            for p, _ in flags:
                p.requires_grad_(False)
            yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
        model.train(was_training)


def check_settings(eps: float, steps: int, norm: str, loss: str) -> None:
    """A clear error for an unknown norm or loss, a negative eps or no steps."""
    if norm not in NORMS:
        raise unknown_choice("attack norm", norm, NORMS)
    if loss not in LOSSES:
        raise unknown_choice("attack loss", loss, LOSSES)
    if eps < 0 or steps < 1:
        raise VitsamError(f"attacks need eps >= 0 and steps >= 1, got eps={eps}, steps={steps}")


def _detached(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Plain copies: tensors made under inference_mode cannot enter autograd."""
    return [t.detach().clone() for t in tensors]


def _view(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B, 1, 1, 1) to broadcast over images like (B, C, H, W)."""
    return values.view(-1, *([1] * (like.ndim - 1)))


def _norm(t: torch.Tensor) -> torch.Tensor:
    """Per-image L2 norm, (B, ...) -> (B, 1, 1, 1)."""
    return _view(t.flatten(1).norm(dim=1).clamp_min(1e-12), t)


def _project(images: torch.Tensor, candidate: torch.Tensor, eps: float, norm: str) -> torch.Tensor:
    """Back into the eps-ball around ``images`` (clip for L-inf, rescale for L2), then into [0, 1]."""
    delta = candidate - images
    delta = delta.clamp(-eps, eps) if norm == "linf" else delta * (eps / _norm(delta)).clamp(max=1.0)
    return (images + delta).clamp(0, 1)


def _ascent(grad: torch.Tensor, norm: str) -> torch.Tensor:
    """Steepest-ascent direction of unit norm: sign for L-inf, grad / ||grad|| for L2."""
    return grad.sign() if norm == "linf" else grad / _norm(grad)


def dlr_loss(logits: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor | None = None) -> torch.Tensor:
    """Difference of logits ratio per image (Croce & Hein 2020, Sec. 4), logits (B, K):
    -(z_y - max_{i != y} z_i) / (z_pi1 - z_pi3), or targeted
    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2), pi sorting the logits in decreasing order."""
    top = logits.sort(dim=1, descending=True).values
    true = logits.gather(1, labels[:, None]).squeeze(1)
    if targets is None:
        best_other = logits.scatter(1, labels[:, None], float("-inf")).amax(dim=1)
        return -(true - best_other) / (top[:, 0] - top[:, 2] + 1e-12)
    target = logits.gather(1, targets[:, None]).squeeze(1)
    return -(true - target) / (top[:, 0] - (top[:, 2] + top[:, 3]) / 2 + 1e-12)


def attack_loss(logits: torch.Tensor, labels: torch.Tensor, loss: str = "ce",
                targets: torch.Tensor | None = None) -> torch.Tensor:
    """The per-image objective (B,) an attack maximises."""
    if loss == "dlr":
        needed = 3 if targets is None else 4
        if logits.shape[1] < needed:
            raise VitsamError(f"the {'targeted ' if targets is not None else ''}DLR loss needs at least "
                              f"{needed} classes, the model has {logits.shape[1]}")
        return dlr_loss(logits, labels, targets)
    if targets is not None:
        return -F.cross_entropy(logits, targets, reduction="none")
    return F.cross_entropy(logits, labels, reduction="none")


def _loss_and_grad(model, x, labels, loss, targets):
    """Objective (B,), its gradient w.r.t. x, and whether each image is still classified right."""
    x = x.detach().requires_grad_(True)
    logits = model(x)
    values = attack_loss(logits, labels, loss, targets)
    # summed: each image's gradient is its own, independent of the batch
    grad, = torch.autograd.grad(values.sum(), x)
    return values.detach(), grad.detach().contiguous(), logits.detach().argmax(1) == labels


def uniform_start(images: torch.Tensor, eps: float, norm: str, generator) -> torch.Tensor:
    """PGD's random start: uniform in the L-inf cube, or uniform in the L2 ball
    (direction on the sphere, radius eps * u^(1/d)); returns the offset."""
    device = generator.device if generator is not None else images.device
    if norm == "linf":
        u = torch.rand(images.shape, generator=generator, device=device)
        return ((2 * u - 1) * eps).to(images)
    direction = torch.randn(images.shape, generator=generator, device=device).to(images)
    radius = torch.rand(images.shape[0], generator=generator, device=device).to(images)
    radius = eps * radius ** (1.0 / images[0].numel())
    return direction / _norm(direction) * _view(radius, images)


def pgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int = 10,
        step_size: float | None = None, norm: str = "linf", random_start: bool = True,
        generator: torch.Generator | None = None, *, loss: str = "ce",
        targets: torch.Tensor | None = None) -> torch.Tensor:
    """Adversarial images (B, C, H, W) by projected gradient ascent on ``loss``:
    x <- P(x + step_size * direction(grad)), direction sign(grad) for L-inf and
    grad / ||grad|| for L2, P the projection onto the eps-ball and [0, 1].

    ``step_size`` defaults to 2.5 * eps / steps (eps / 4 for PGD-10). ``targets``
    (B,) makes it targeted (pushes towards those classes). FGSM is ``steps=1,
    step_size=eps, random_start=False``. The last iterate is returned.
    """
    check_settings(eps, steps, norm, loss)
    step_size = 2.5 * eps / steps if step_size is None else step_size
    with attack_mode(model):
        images, labels = _detached(images, labels)
        targets = None if targets is None else targets.detach().clone()
        if eps == 0:
            return images
        start = uniform_start(images, eps, norm, generator) if random_start else 0
        x = _project(images, images + start, eps, norm)
        for _ in range(steps):
            _, grad, _ = _loss_and_grad(model, x, labels, loss, targets)
            x = _project(images, x + step_size * _ascent(grad, norm), eps, norm)
        return x


def fgsm(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, norm: str = "linf") -> torch.Tensor:
    """The fast gradient sign method: one full step, no random start."""
    return pgd(model, images, labels, eps, steps=1, step_size=eps, norm=norm, random_start=False)


# --------------------------------------------------------------------------- APGD

def apgd_checkpoints(steps: int) -> list[int]:
    """Iterations after which APGD may halve its step size (Croce & Hein 2020, Sec. 3.2):
    w_j = ceil(p_j N) with p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03,
    0.06), in the integer form of the authors' code (fra31/auto-attack): the first after
    max(int(0.22 N), 1) iterations, each gap then shorter by max(int(0.03 N), 1) down to
    max(int(0.06 N), 1). N = 100 gives 22, 41, 57, 70, 80, 87, 93, 99."""
    gap, shrink, shortest = max(int(0.22 * steps), 1), max(int(0.03 * steps), 1), max(int(0.06 * steps), 1)
    points, at = [], gap
    while at <= steps:
        points.append(at)
        gap = max(gap - shrink, shortest)
        at += gap
    return points


def apgd_start(images: torch.Tensor, eps: float, norm: str, generator) -> torch.Tensor:
    """APGD's random start as in the authors' code: a random direction scaled to norm
    eps (L-inf: uniform noise divided by its largest entry; L2: Gaussian noise on the sphere)."""
    device = generator.device if generator is not None else images.device
    if norm == "linf":
        t = (2 * torch.rand(images.shape, generator=generator, device=device) - 1).to(images)
        return eps * t / _view(t.flatten(1).abs().amax(dim=1).clamp_min(1e-12), t)
    t = torch.randn(images.shape, generator=generator, device=device).to(images)
    return eps * t / _norm(t)


def apgd(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, eps: float, steps: int = 100,
         norm: str = "linf", loss: str = "ce", targets: torch.Tensor | None = None,
         generator: torch.Generator | None = None) -> torch.Tensor:
    """Auto-PGD (Croce & Hein 2020, Algorithm 1), per image:

    - step size eta = 2 eps; z = P(x_k + eta * direction(grad f(x_k)));
      x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1})), alpha = 1 on the
      first step and 0.75 after (momentum);
    - at each checkpoint w_j (``apgd_checkpoints``) eta is halved and the iterate
      restarts from the best point so far when (1) the loss rose on at most
      rho = 0.75 of the steps since w_{j-1} (``<=``, as the authors' code), or (2) eta
      was not halved at w_{j-1} and the best loss has not risen since. At the first
      checkpoint the window's first step is compared with the start, as the paper
      defines it (the authors' code compares it with 0 there; otherwise this follows
      their code; checked once against it on two small models, 24 settings: the same
      images fooled).

    Returns, per image, an iterate that is misclassified when one was found (the
    attack's success), else the iterate of highest loss (every iterate of those was
    classified right).
    """
    check_settings(eps, steps, norm, loss)
    with attack_mode(model):
        images, labels = _detached(images, labels)
        targets = None if targets is None else targets.detach().clone()
        if eps == 0:
            return images
        x = _project(images, images + apgd_start(images, eps, norm, generator), eps, norm)
        value, grad, right = _loss_and_grad(model, x, labels, loss, targets)
        eta = _view(torch.full((len(x),), 2.0 * eps, device=x.device, dtype=x.dtype), x)
        best, best_x, best_grad = value.clone(), x.clone(), grad.clone()
        robust, found = right.clone(), x.clone()
        x_prev, previous = x.clone(), value.clone()
        rises = torch.zeros_like(value)
        halved_last = torch.ones_like(right)            # no condition 2 at the first checkpoint
        best_at_last = best.clone()
        checkpoints, last = apgd_checkpoints(steps), 0
        for step in range(steps):
            alpha = 1.0 if step == 0 else APGD_MOMENTUM
            z = _project(images, x + eta * _ascent(grad, norm), eps, norm)
            x, x_prev = _project(images, x + alpha * (z - x) + (1 - alpha) * (x - x_prev), eps, norm), x
            value, grad, right = _loss_and_grad(model, x, labels, loss, targets)
            found[~right] = x[~right]
            robust &= right
            rises += (value > previous).to(rises)
            previous = value
            better = value > best
            best[better], best_x[better], best_grad[better] = value[better], x[better], grad[better]
            if step + 1 in checkpoints:
                halve = (rises <= APGD_RHO * (step + 1 - last)) | (~halved_last & (best_at_last >= best))
                eta[halve] /= 2
                x[halve], grad[halve] = best_x[halve], best_grad[halve]
                halved_last, best_at_last, last = halve, best.clone(), step + 1
                rises.zero_()
        return torch.where(_view(robust, images), best_x, found)
