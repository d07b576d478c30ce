"""Attacks against their update rules written out by hand on linear models (PGD, FGSM,
targeted PGD, the DLR loss, APGD's first steps, checkpoints and step-size rule), their
guarantees (inside the eps-ball and [0, 1]; restarts never raise robust accuracy), and
their use under no_grad / inference_mode."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitsam.errors import VitsamError
from vitsam.robustness.adversarial import apgd, apgd_checkpoints, apgd_start, attack_loss, dlr_loss, fgsm, pgd
from vitsam.robustness.correctness import unpack
from vitsam.robustness.evaluate import evaluate_apgd, evaluate_attack, evaluate_pgd
from vitsam.stats import accuracy_interval

pytestmark = pytest.mark.usefixtures("single_thread")


class Linear(nn.Module):
    """logits = W x + b on 3x6x6 images, with inputs in [0, 1]."""

    def __init__(self, classes=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(3 * 6 * 6, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


class Small(nn.Module):
    """A non-linear model with BatchNorm and dropout (attacks must run it in eval mode)."""

    def __init__(self, classes=5):
        super().__init__()
        torch.manual_seed(1)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.hidden = nn.Linear(3 * 6 * 6, 32)
        self.out = nn.Linear(32, classes)

    def forward(self, x):
        return self.out(torch.tanh(self.hidden(self.drop(self.bn(x).flatten(1)))))


def data(n=64, seed=0):
    return torch.rand(n, 3, 6, 6, generator=torch.Generator().manual_seed(seed))


@pytest.fixture
def model_and_batch():
    model = Linear()
    images = data()
    with torch.no_grad():
        labels = model(images).argmax(1)       # clean accuracy 100 %
    return model, images, labels


def input_gradient(model, x, labels, targets=None):
    """d loss / d x of a linear model by hand: CE gradient (p - onehot(y)) W, or for the
    targeted loss -CE(z, t) the gradient -(p - onehot(t)) W."""
    with torch.no_grad():
        p = model(x).softmax(1)
        k = p.shape[1]
        if targets is None:
            return ((p - F.one_hot(labels, k).float()) @ model.fc.weight).view_as(x)
        return (-(p - F.one_hot(targets, k).float()) @ model.fc.weight).view_as(x)


def in_ball(adversarial, images, eps, norm):
    delta = (adversarial - images).flatten(1)
    size = delta.abs().amax(1) if norm == "linf" else delta.norm(dim=1)
    return bool((size <= eps + 1e-5).all() and adversarial.min() >= 0 and adversarial.max() <= 1)


# --------------------------------------------------------------------------- PGD and FGSM by hand

def test_fgsm_is_the_closed_form_step_on_a_linear_model(model_and_batch):
    model, images, labels = model_and_batch
    eps = 0.05
    expected = (images + eps * input_gradient(model, images, labels).sign()).clamp(0, 1)
    torch.testing.assert_close(fgsm(model, images, labels, eps), expected)


def test_two_l2_pgd_steps_by_hand(model_and_batch):
    model, images, labels = model_and_batch
    eps, step = 0.5, 0.3
    x = images
    for _ in range(2):
        g = input_gradient(model, x, labels)
        x = x + step * g / g.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
        delta = x - images
        delta = delta * (eps / delta.flatten(1).norm(dim=1)).clamp(max=1).view(-1, 1, 1, 1)
        x = (images + delta).clamp(0, 1)
    result = pgd(model, images, labels, eps, steps=2, step_size=step, norm="l2", random_start=False)
    torch.testing.assert_close(result, x)


def test_targeted_pgd_step_by_hand_moves_towards_the_target(model_and_batch):
    model, images, labels = model_and_batch
    targets = (labels + 1) % 4
    eps = 0.02
    expected = (images + eps * input_gradient(model, images, labels, targets).sign()).clamp(0, 1)
    result = pgd(model, images, labels, eps, steps=1, step_size=eps, random_start=False, targets=targets)
    torch.testing.assert_close(result, expected)
    with torch.no_grad():
        margin = lambda x: (model(x).gather(1, targets[:, None]) - model(x).gather(1, labels[:, None])).squeeze(1)
        assert (margin(result) > margin(images)).all()


def test_dlr_loss_by_hand():
    logits = torch.tensor([[5.0, 3.0, 1.0, 0.0], [1.0, 4.0, 2.0, 0.5]])
    labels = torch.tensor([0, 2])
    # image 0: true is top: -(5 - 3) / (5 - 1); image 1: -(2 - 4) / (4 - 1)
    torch.testing.assert_close(dlr_loss(logits, labels), torch.tensor([-2 / 4, 2 / 3]))
    targets = torch.tensor([3, 1])
    # targeted: -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2)
    torch.testing.assert_close(dlr_loss(logits, labels, targets), torch.tensor([-5 / 4.5, 2 / 3.25]))
    with pytest.raises(VitsamError, match="at least 3 classes"):
        attack_loss(logits[:, :2], torch.tensor([0, 1]), "dlr")


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.5)])
@pytest.mark.parametrize("attack", [pgd, apgd])
def test_attacks_raise_the_loss_and_stay_in_the_ball(model_and_batch, attack, norm, eps):
    model, images, labels = model_and_batch
    adversarial = attack(model, images, labels, eps, norm=norm, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert F.cross_entropy(model(adversarial), labels) > F.cross_entropy(model(images), labels)
    assert in_ball(adversarial, images, eps, norm)


def test_eps_zero_gives_the_clean_images(model_and_batch):
    model, images, labels = model_and_batch
    assert torch.equal(pgd(model, images, labels, 0.0), images)
    assert torch.equal(apgd(model, images, labels, 0.0), images)
    result = evaluate_pgd(model, [(images, labels)], [0.0])
    assert result["accuracy"]["0"] == result["clean_accuracy"] == 1.0


def test_pgd_is_seeded_and_batch_independent(model_and_batch):
    model, images, labels = model_and_batch
    first = pgd(model, images, labels, 0.03, steps=3, random_start=False)
    halves = torch.cat([pgd(model, images[:10], labels[:10], 0.03, steps=3, random_start=False),
                        pgd(model, images[10:], labels[10:], 0.03, steps=3, random_start=False)])
    torch.testing.assert_close(first, halves)
    a = pgd(model, images, labels, 0.03, generator=torch.Generator().manual_seed(5))
    b = pgd(model, images, labels, 0.03, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


# --------------------------------------------------------------------------- APGD by hand

def test_apgd_checkpoints_by_hand():
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06): 0.22, 0.41, 0.57, 0.70, 0.80,
    # 0.87, 0.93, 0.99 of 100 iterations
    assert apgd_checkpoints(100) == [22, 41, 57, 70, 80, 87, 93, 99]
    # 10 iterations: first after int(2.2) = 2, then gaps of max(2 - 1, 1) = 1
    assert apgd_checkpoints(10) == [2, 3, 4, 5, 6, 7, 8, 9, 10]
    assert apgd_checkpoints(1) == [1]


def project_linf(x, images, eps):
    return torch.min(torch.max(x, images - eps), images + eps).clamp(0, 1)


def test_apgd_first_two_steps_by_hand(model_and_batch):
    """On a linear model CE is convex in x, so each projected sign step raises it: the
    first checkpoint (after step 1 of 2) keeps eta = 2 eps, and step 2 uses momentum."""
    model, images, labels = model_and_batch
    eps = 0.01
    start = apgd_start(images, eps, "linf", torch.Generator().manual_seed(3))
    x0 = project_linf(images + start, images, eps)
    eta = 2 * eps
    x1 = project_linf(x0 + eta * input_gradient(model, x0, labels).sign(), images, eps)
    z = project_linf(x1 + eta * input_gradient(model, x1, labels).sign(), images, eps)
    x2 = project_linf(x1 + 0.75 * (z - x1) + 0.25 * (x1 - x0), images, eps)
    with torch.no_grad():
        losses = torch.stack([F.cross_entropy(model(x), labels, reduction="none") for x in (x0, x1, x2)])
        assert (losses[1] > losses[0]).all()                   # condition 1 does not halve eta
        assert (model(x2).argmax(1) == labels).all()           # nothing fooled: the best-loss point is returned
    best = torch.stack([x0, x1, x2])[losses.argmax(0), torch.arange(len(images))]
    assert apgd_checkpoints(2) == [1, 2]
    result = apgd(model, images, labels, eps, steps=2, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(result, best)


class Flat(nn.Module):
    """Constant logits: the gradient is zero, the loss never rises."""

    def __init__(self):
        super().__init__()
        self.bias = nn.Parameter(torch.tensor([1.0, 0.0, -1.0]))

    def forward(self, x):
        return self.bias.expand(len(x), 3) + 0 * x.flatten(1).sum(1, keepdim=True)


def test_apgd_step_size_rule_on_a_loss_that_never_rises(monkeypatch):
    """Constant logits: the loss never rises, so condition 1 (rises <= 0.75 k) halves eta
    at every checkpoint (after steps 2, 3, ..., 10 of 10) and x restarts from the best
    point, the start. The ascent direction is replaced by ones to read eta off each step."""
    import vitsam.robustness.adversarial as adversarial

    candidates = []
    real_project = adversarial._project

    def record(images, candidate, eps, norm):
        candidates.append(float((candidate - images).flatten()[0]))
        return real_project(images, candidate, eps, norm)

    monkeypatch.setattr(adversarial, "_ascent", lambda grad, norm: torch.ones_like(grad))
    monkeypatch.setattr(adversarial, "_project", record)
    eps = 0.01
    apgd(Flat(), torch.full((1, 3, 2, 2), 0.5), torch.tensor([0]), eps, steps=10,
         generator=torch.Generator().manual_seed(0))
    start, steps = candidates[0], candidates[1:]
    z, momentum = steps[0::2], steps[1::2]             # per step: z = P(x + eta * 1), then the momentum point
    x1 = min(momentum[0], eps)                         # step 1 has alpha = 1: x1 = z
    etas = [z[0] - start, z[1] - x1] + [z[i] - start for i in range(2, 10)]
    assert etas == pytest.approx([2 * eps, 2 * eps] + [2 * eps / 2 ** h for h in range(1, 9)], abs=1e-6)


# --------------------------------------------------------------------------- no_grad, modes, flags

@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode])
@pytest.mark.parametrize("attack", ["pgd", "apgd"])
def test_attacks_work_under_no_grad_and_inference_mode(context, attack):
    model = Small().train()
    model.hidden.weight.requires_grad_(False)                  # mixed flags must come back as they were
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    images = data(8)
    labels = torch.arange(8) % 5
    run = pgd if attack == "pgd" else apgd
    expected = run(model, images, labels, 0.03, steps=3, generator=torch.Generator().manual_seed(1))
    with context():
        inside = run(model, images.clone(), labels.clone(), 0.03, steps=3, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(inside, expected)
    assert model.training
    assert {name: p.requires_grad for name, p in model.named_parameters()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_model_runs_in_eval_mode_and_keeps_its_weights():
    model = Small().train()
    images = data(16)
    labels = torch.zeros(16, dtype=torch.long)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = pgd(model, images, labels, 0.03, random_start=False)
    second = pgd(model, images, labels, 0.03, random_start=False)
    assert torch.equal(first, second)                # no dropout randomness: eval mode
    for key, value in model.state_dict().items():    # BatchNorm statistics untouched
        assert torch.equal(value, before[key]), key


# --------------------------------------------------------------------------- evaluators

def test_restarts_never_raise_robust_accuracy_and_count_per_image():
    model = Small()
    images = data(64, seed=2)
    with torch.no_grad():
        labels = model.eval()(images).argmax(1)
    batches = [(images[:32], labels[:32]), (images[32:], labels[32:])]
    one = evaluate_pgd(model, batches, [0.16], steps=2, seed=4)
    five = evaluate_pgd(model, batches, [0.16], steps=2, seed=4, restarts=5)
    key = "0.16"
    robust_one, robust_five = unpack(one["correct"][key], 64), unpack(five["correct"][key], 64)
    assert not (robust_five & ~robust_one).any()        # robust after 5 restarts => robust after the first
    assert five["accuracy"][key] < one["accuracy"][key] < 1.0     # here the extra restarts find more
    assert five["accuracy"][key] == robust_five.mean()


def test_evaluator_settings_intervals_and_strict_json():
    model = Small()
    images = data(40, seed=3)
    labels = torch.arange(40) % 5
    result = evaluate_apgd(model, [(images, labels)], [1 / 255, 8 / 255], steps=5, restarts=2, loss="dlr",
                           targeted=True)
    assert (result["attack"], result["norm"], result["steps"], result["restarts"], result["loss"],
            result["targeted"]) == ("apgd", "linf", 5, 2, "dlr", True)
    assert result["eps"] == [1 / 255, 8 / 255] and result["checkpoints"] == apgd_checkpoints(5)
    for key, accuracy in result["accuracy"].items():
        correct = unpack(result["correct"][key], 40)
        assert accuracy == correct.mean()
        reference = accuracy_interval(int(correct.sum()), 40)
        assert result["interval"][key] == [reference.low, reference.high]
    clean = unpack(result["clean_correct"], 40)
    assert result["clean_accuracy"] == clean.mean()
    assert not (unpack(result["correct"]["0.0313725"], 40) & ~clean).any()   # robust => right when clean
    json.dumps(result, allow_nan=False)


def test_accuracy_falls_as_eps_grows(model_and_batch):
    model, images, labels = model_and_batch
    eps = [0.0, 0.005, 0.02, 0.05, 0.2]
    result = evaluate_attack(model, [(images[:32], labels[:32]), (images[32:], labels[32:])], eps)
    accuracies = [result["accuracy"][f"{e:.6g}"] for e in eps]
    assert all(a >= b for a, b in zip(accuracies, accuracies[1:])), accuracies
    assert accuracies[0] == 1.0 and accuracies[-1] < 0.2


def test_targeted_restarts_need_enough_classes(model_and_batch):
    model, images, labels = model_and_batch
    with pytest.raises(VitsamError, match="one target class per restart"):
        evaluate_pgd(model, [(images, labels)], [0.01], restarts=4, targeted=True)


def test_bad_arguments():
    model = Linear()
    images, labels = data(2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(VitsamError, match="linf"):
        pgd(model, images, labels, 0.1, norm="l1")
    with pytest.raises(VitsamError, match="eps"):
        pgd(model, images, labels, -0.1)
    with pytest.raises(VitsamError, match="dlr"):
        apgd(model, images, labels, 0.1, loss="hinge")
    with pytest.raises(VitsamError, match="apgd"):
        evaluate_attack(model, [(images, labels)], [0.1], attack="cw")
    assert np.isfinite(float(fgsm(model, images, labels, 0.1).sum()))
