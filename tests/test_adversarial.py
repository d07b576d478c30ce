"""PGD / FGSM sanity (the issue's list) and FGSM against its closed form on a linear model."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitsam.errors import VitsamError
from vitsam.robustness.adversarial import fgsm, pgd
from vitsam.robustness.evaluate import evaluate_pgd


class Linear(nn.Module):
    """logits = W x + b on 3x6x6 images, with inputs in [0, 1]."""

    def __init__(self, classes=4, seed=0):
        super().__init__()
        torch.manual_seed(seed)
        self.fc = nn.Linear(3 * 6 * 6, classes)

    def forward(self, x):
        return self.fc(x.flatten(1))


class WithNorms(nn.Module):
    """BatchNorm and dropout: PGD must run them in eval mode and restore the mode."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.bn = nn.BatchNorm2d(3)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(3 * 6 * 6, 4)

    def forward(self, x):
        return self.fc(self.drop(self.bn(x).flatten(1)))


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, 6, 6, generator=g)
    return images


@pytest.fixture
def model_and_batch():
    model = Linear()
    images = data()
    with torch.no_grad():
        labels = model(images).argmax(1)       # clean accuracy 100 %
    return model, images, labels


def test_eps_zero_gives_the_clean_images(model_and_batch):
    model, images, labels = model_and_batch
    assert torch.equal(pgd(model, images, labels, 0.0), images)
    result = evaluate_pgd(model, [(images, labels)], [0.0])
    assert result["accuracy"]["0"] == result["clean_accuracy"] == 1.0


@pytest.mark.parametrize("norm,eps", [("linf", 0.03), ("l2", 0.5)])
def test_attack_raises_the_loss_and_stays_in_the_ball(model_and_batch, norm, eps):
    model, images, labels = model_and_batch
    adversarial = pgd(model, images, labels, eps, norm=norm, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        clean_loss = F.cross_entropy(model(images), labels)
        attacked_loss = F.cross_entropy(model(adversarial), labels)
    assert attacked_loss > clean_loss
    delta = adversarial - images
    if norm == "linf":
        assert delta.abs().max() <= eps + 1e-6
    else:
        assert delta.flatten(1).norm(dim=1).max() <= eps + 1e-5
    assert adversarial.min() >= 0 and adversarial.max() <= 1


def test_accuracy_falls_as_eps_grows(model_and_batch):
    model, images, labels = model_and_batch
    eps = [0.0, 0.005, 0.02, 0.05, 0.2]
    result = evaluate_pgd(model, [(images[:32], labels[:32]), (images[32:], labels[32:])], eps)
    accuracies = [result["accuracy"][f"{e:.6g}"] for e in eps]
    assert all(a >= b for a, b in zip(accuracies, accuracies[1:])), accuracies
    assert accuracies[0] == 1.0 and accuracies[-1] < 0.2


def test_fgsm_is_the_closed_form_step_on_a_linear_model(model_and_batch):
    model, images, labels = model_and_batch
    eps = 0.05
    with torch.no_grad():
        probs = model(images).softmax(1)
        gradient = (probs - F.one_hot(labels, 4).float()) @ model.fc.weight   # d CE / d x for logits W x + b
    expected = (images + eps * gradient.sign().view_as(images)).clamp(0, 1)
    torch.testing.assert_close(fgsm(model, images, labels, eps), expected)


def test_pgd_is_seeded_and_batch_independent(model_and_batch):
    model, images, labels = model_and_batch
    first = pgd(model, images, labels, 0.03, steps=3, random_start=False)
    halves = torch.cat([pgd(model, images[:10], labels[:10], 0.03, steps=3, random_start=False),
                        pgd(model, images[10:], labels[10:], 0.03, steps=3, random_start=False)])
    torch.testing.assert_close(first, halves)
    a = pgd(model, images, labels, 0.03, generator=torch.Generator().manual_seed(5))
    b = pgd(model, images, labels, 0.03, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, b)


def test_model_runs_in_eval_mode_and_keeps_its_mode_and_weights():
    model = WithNorms().train()
    images = data(16)
    labels = torch.zeros(16, dtype=torch.long)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    first = pgd(model, images, labels, 0.03, random_start=False)
    second = pgd(model, images, labels, 0.03, random_start=False)
    assert model.training                            # restored
    assert torch.equal(first, second)                # no dropout randomness: eval mode
    for key, value in model.state_dict().items():    # BatchNorm statistics untouched
        assert torch.equal(value, before[key]), key
    assert all(p.grad is None for p in model.parameters())


def test_bad_arguments():
    model = Linear()
    images, labels = data(2), torch.zeros(2, dtype=torch.long)
    with pytest.raises(VitsamError, match="linf"):
        pgd(model, images, labels, 0.1, norm="l1")
    with pytest.raises(VitsamError, match="eps"):
        pgd(model, images, labels, -0.1)
