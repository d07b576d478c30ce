"""SAM family and the training step against updates written out by hand (docs/paper.md,
"SAM pitfalls" 1-8 and 10), in each of the ways users call it (davda54/sam's two forms,
vitsam's closure)."""
from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from vitsam.errors import VitsamError
from vitsam.optim import GSAM, SAM, LookSAM
from fakes import SyncRecordingNet, classify
from vitsam.train.step import frozen_batchnorm_stats, train_step


# ---------------------------------------------------------------------- tiny problems

def tiny_mlp(dtype=torch.float64) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).to(dtype)


class DropoutBatchNormNet(nn.Module):
    """Linear -> BatchNorm -> Dropout -> ReLU -> Linear: both kinds of train-mode state
    (dropout sees BatchNorm's output, never exactly 0, so its zeros are its mask)."""

    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.bn = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.5)
        self.fc2 = nn.Linear(16, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.drop(self.bn(self.fc1(x)))))


def batch(n=8, d=5, classes=3, seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=gen, dtype=dtype), torch.randint(0, classes, (n,), generator=gen)


def loss_grad(model, weights, x, y):
    """Gradient of the cross-entropy at the given weights (one tensor per parameter)."""
    names = [name for name, _ in model.named_parameters()]
    leaves = [w.detach().clone().requires_grad_() for w in weights]
    loss = F.cross_entropy(functional_call(model, dict(zip(names, leaves)), (x,)), y)
    return list(torch.autograd.grad(loss, leaves))


def global_norm(tensors):
    return torch.sqrt(sum((t.double() ** 2).sum() for t in tensors))


def weights(model):
    return [p.detach().clone() for p in model.parameters()]


def step_sgd(model, optimizer, x, y):
    trainee = model if isinstance(model, SyncRecordingNet) else classify(model)
    return train_step(trainee, optimizer, (x, y))


# ---------------------------------------------------------------------- one step by hand

@pytest.mark.parametrize("grad_clip", [0.0, 0.05])
def test_sam_step_equals_update_by_hand(grad_clip):
    """With clipping, the final (second-pass) gradient is the one clipped (pitfall 6);
    clipping the first pass leaves e = rho g / ||g|| unchanged."""
    model, (x, y) = tiny_mlp(), batch()
    rho, lr = 0.05, 0.1
    w = weights(model)
    g = loss_grad(model, w, x, y)
    e = [rho * gi / global_norm(g) for gi in g]
    g_adv = loss_grad(model, [wi + ei for wi, ei in zip(w, e)], x, y)
    norm = global_norm(g_adv)
    clip = min(1.0, grad_clip / (norm + 1e-6)) if grad_clip else 1.0  # torch's clip formula
    expected = [wi - lr * clip * gi for wi, gi in zip(w, g_adv)]

    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=rho, lr=lr)
    result = train_step(classify(model), optimizer, (x, y), grad_clip=grad_clip)
    assert result.grad_norm == pytest.approx(norm.item(), rel=1e-12)
    assert grad_clip == 0 or clip < 0.5  # the test really clips
    for p, want in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-12)


def test_asam_step_equals_update_by_hand():
    """ASAM (Kwon et al. 2021): T = |w| + eta, e = rho T^2 g / ||T g||."""
    model, (x, y) = tiny_mlp(), batch()
    rho, lr, eta = 0.5, 0.1, 0.01
    w = weights(model)
    g = loss_grad(model, w, x, y)
    t = [wi.abs() + eta for wi in w]
    norm = global_norm([ti * gi for ti, gi in zip(t, g)])
    e = [rho * ti ** 2 * gi / norm for ti, gi in zip(t, g)]
    g_adv = loss_grad(model, [wi + ei for wi, ei in zip(w, e)], x, y)
    expected = [wi - lr * gi for wi, gi in zip(w, g_adv)]

    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=rho, adaptive=True, eta=eta, lr=lr)
    step_sgd(model, optimizer, x, y)
    for p, want in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-12)


def test_one_global_norm_across_param_groups_and_per_group_rho():
    model, (x, y) = tiny_mlp(), batch()
    first, second = list(model[0].parameters()), list(model[2].parameters())
    optimizer = SAM([{"params": first}, {"params": second, "rho": 0.2, "lr": 0.5}],
                    torch.optim.SGD, rho=0.05, lr=0.1)
    w = weights(model)
    F.cross_entropy(model(x), y).backward()
    g = [p.grad.clone() for p in model.parameters()]
    optimizer.first_step()
    norm = global_norm(g)  # over BOTH groups: a per-group norm would give each group rho exactly
    for p, wi, gi, rho in zip(model.parameters(), w, g, [0.05, 0.05, 0.2, 0.2]):
        torch.testing.assert_close(p.detach() - wi, rho * gi / norm, rtol=1e-9, atol=1e-15)


def test_grad_norm_accumulates_in_fp32_for_bf16_params():
    torch.manual_seed(0)
    low = nn.Parameter(torch.zeros(3000, dtype=torch.bfloat16))
    full = nn.Parameter(torch.zeros(5))
    low.grad = (0.1 * torch.rand(3000)).to(torch.bfloat16)
    full.grad = torch.rand(5)
    optimizer = SAM([{"params": [low]}, {"params": [full]}], torch.optim.SGD, lr=0.1)
    norm = optimizer.grad_norm()
    exact = global_norm([low.grad, full.grad])
    assert norm.dtype == torch.float32
    # a bf16 result is off by up to 2^-9 relative; fp32 accumulation by ~1e-7
    torch.testing.assert_close(norm.double(), exact, rtol=1e-6, atol=0)


# ---------------------------------------------------------------------- restore, rho = 0, state

class SwitchingNet(nn.Module):
    """First call uses a and c, second call a and b: b gets a gradient only in the second
    pass, c only in the first (davda54 raises KeyError on b and never restores c)."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = (nn.Linear(5, 3).to(torch.bfloat16) for _ in range(3))
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        other = self.c if self.calls % 2 else self.b
        return self.a(x) + other(x)


def test_weights_restored_exactly_even_without_first_pass_gradient():
    model = SwitchingNet()
    x, y = batch(dtype=torch.bfloat16)
    before = weights(model)
    # lr = 0: the base step leaves w alone, so every weight must come back bit for bit
    # (restoring by subtracting e would drift in bf16)
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.0)
    step_sgd(model, optimizer, x, y)
    assert model.calls == 2
    for p, want in zip(model.parameters(), before):
        assert torch.equal(p.detach(), want)


def run_steps(model, optimizer, steps=5, seed=3):
    torch.manual_seed(seed)
    for step in range(steps):
        x, y = batch(n=16, d=6, seed=10 + step, dtype=torch.float32)
        train_step(classify(model), optimizer, (x, y), grad_clip=1.0)


@pytest.mark.parametrize("base, kwargs", [
    (torch.optim.AdamW, dict(lr=1e-2, weight_decay=0.1)),
    (torch.optim.SGD, dict(lr=0.1, momentum=0.9, weight_decay=1e-3)),
])
def test_rho_zero_reproduces_base_optimizer_bit_for_bit(base, kwargs):
    torch.manual_seed(0)
    plain = DropoutBatchNormNet()
    wrapped = copy.deepcopy(plain)
    run_steps(plain, base(plain.parameters(), **kwargs))
    run_steps(wrapped, SAM(wrapped.parameters(), base, rho=0.0, **kwargs))
    for (name, a), b in zip(plain.state_dict().items(), wrapped.state_dict().values()):
        assert torch.equal(a, b), name


def test_batchnorm_running_stats_come_from_the_first_pass_only():
    torch.manual_seed(0)
    model = DropoutBatchNormNet()
    model.drop.p = 0.0
    reference = copy.deepcopy(model)
    x, y = batch(n=16, d=6, dtype=torch.float32)
    reference(x)  # one train-mode forward at the unperturbed weights
    train_step(classify(model), SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1), (x, y))
    assert torch.equal(model.bn.running_mean, reference.bn.running_mean)
    assert torch.equal(model.bn.running_var, reference.bn.running_var)
    assert model.bn.num_batches_tracked.item() == 1
    assert model.bn.track_running_stats


def test_frozen_batchnorm_stats_still_normalizes_with_batch_statistics():
    torch.manual_seed(0)
    bn = nn.BatchNorm1d(4)
    x = 3 + 2 * torch.randn(32, 4)
    with frozen_batchnorm_stats(bn):
        out = bn(x)
    assert torch.equal(bn.running_mean, torch.zeros(4)) and bn.num_batches_tracked.item() == 0
    torch.testing.assert_close(out.mean(0), torch.zeros(4), atol=1e-5, rtol=0)


def test_dropout_masks_identical_in_both_passes_and_new_each_step():
    torch.manual_seed(0)
    model = DropoutBatchNormNet()
    masks = []
    model.drop.register_forward_hook(lambda module, inputs, output: masks.append(output == 0))
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.5, lr=0.1)
    run_steps(model, optimizer, steps=2)
    assert len(masks) == 4
    assert torch.equal(masks[0], masks[1]) and torch.equal(masks[2], masks[3])
    assert masks[0].any() and not torch.equal(masks[0], masks[2])


def test_state_dict_round_trip_keeps_moments_and_continues_identically():
    torch.manual_seed(0)
    model = DropoutBatchNormNet()
    optimizer = SAM(model.parameters(), torch.optim.AdamW, rho=0.1, lr=1e-2)
    run_steps(model, optimizer, steps=2)

    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = DropoutBatchNormNet()
    resumed.load_state_dict(saved["model"])
    resumed_optimizer = SAM(resumed.parameters(), torch.optim.AdamW, rho=0.9, lr=1e-2)
    resumed_optimizer.load_state_dict(saved["optim"])

    assert resumed_optimizer.param_groups is resumed_optimizer.base_optimizer.param_groups
    assert resumed_optimizer.param_groups[0]["rho"] == 0.1  # SAM's hyperparameter came back
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(optimizer.base_optimizer.state[p]["exp_avg"],
                           resumed_optimizer.base_optimizer.state[q]["exp_avg"])
    run_steps(model, optimizer, steps=2, seed=7)
    run_steps(resumed, resumed_optimizer, steps=2, seed=7)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_looksam_resumes_mid_cycle_identically():
    x, y = batch()
    model = tiny_mlp()
    optimizer = LookSAM(model.parameters(), torch.optim.AdamW, rho=0.1, k=3, lr=1e-2)
    for _ in range(2):  # one ascent step, one reuse step: g_v stored, mid-cycle
        step_sgd(model, optimizer, x, y)
    resumed = copy.deepcopy(model)
    resumed_optimizer = LookSAM(resumed.parameters(), torch.optim.AdamW, rho=0.1, k=3, lr=1e-2)
    resumed_optimizer.load_state_dict(copy.deepcopy(optimizer.state_dict()))
    for _ in range(3):
        step_sgd(model, optimizer, x, y)
        step_sgd(resumed, resumed_optimizer, x, y)
    for p, q in zip(model.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_sam_step_under_bf16_autocast():
    torch.manual_seed(0)
    model = DropoutBatchNormNet()
    before = weights(model)
    x, y = batch(n=16, d=6, dtype=torch.float32)
    result = train_step(classify(model), SAM(model.parameters(), torch.optim.AdamW, rho=0.1, lr=1e-2),
                        (x, y), grad_clip=1.0, autocast_dtype=torch.bfloat16)
    assert result.logits.dtype == torch.bfloat16 and not result.logits.requires_grad
    assert math.isfinite(result.loss) and result.grad_norm > 0
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert not any(torch.equal(p, w) for p, w in zip(model.parameters(), before))


def test_lr_scheduler_on_sam_drives_the_base_optimizer():
    model = tiny_mlp()
    optimizer = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5)
    assert optimizer.base_optimizer.param_groups[0]["lr"] == pytest.approx(0.05)


def test_bad_input_is_a_clear_error():
    model = tiny_mlp()
    with pytest.raises(VitsamError, match="rho"):
        SAM(model.parameters(), torch.optim.SGD, rho=-1.0, lr=0.1)
    optimizer = SAM(model.parameters(), torch.optim.SGD, lr=0.1)
    with pytest.raises(VitsamError, match="'base' and 'sam'"):
        optimizer.load_state_dict(torch.optim.SGD(model.parameters(), lr=0.1).state_dict())


# ---------------------------------------------------------------------- DDP ascent pass

def test_ascent_pass_skips_gradient_sync_only_under_sam():
    x, y = batch()
    model = SyncRecordingNet()
    step_sgd(model, torch.optim.SGD(model.parameters(), lr=0.1), x, y)
    step_sgd(model, SAM(model.parameters(), torch.optim.SGD, lr=0.1), x, y)
    assert model.synced == [True, False, True]
    # GSAM reuses g in its update: a per-rank g would make the ranks' weights diverge
    step_sgd(model, GSAM(model.parameters(), torch.optim.SGD, lr=0.1), x, y)
    assert model.synced[3:] == [True, True]


# ---------------------------------------------------------------------- GSAM, LookSAM

def test_gsam_step_equals_update_by_hand():
    model, (x, y) = tiny_mlp(), batch()
    rho_max, rho_min, alpha, lr, lr_max = 0.2, 0.02, 0.3, 0.05, 0.1
    rho_t = rho_min + (rho_max - rho_min) * lr / lr_max  # lr_min = 0
    w = weights(model)
    g = loss_grad(model, w, x, y)
    e = [rho_t * gi / global_norm(g) for gi in g]
    g_adv = loss_grad(model, [wi + ei for wi, ei in zip(w, e)], x, y)
    coef = sum((a * b).sum() for a, b in zip(g, g_adv)) / global_norm(g_adv) ** 2
    g_perp = [gi - coef * ga for gi, ga in zip(g, g_adv)]
    expected = [wi - lr * (ga - alpha * gp) for wi, ga, gp in zip(w, g_adv, g_perp)]

    optimizer = GSAM(model.parameters(), torch.optim.SGD, rho=rho_max, rho_min=rho_min,
                     alpha=alpha, lr_max=lr_max, lr=lr)
    step_sgd(model, optimizer, x, y)
    for p, want in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-12)


def test_looksam_reuses_orthogonal_gradient_with_one_pass_between_ascents():
    model, (x, y) = tiny_mlp(), batch()
    rho, alpha, lr, k = 0.1, 0.5, 0.1, 2
    w0 = weights(model)
    g = loss_grad(model, w0, x, y)
    g_s = loss_grad(model, [wi + rho * gi / global_norm(g) for wi, gi in zip(w0, g)], x, y)
    coef = sum((a * b).sum() for a, b in zip(g, g_s)) / global_norm(g) ** 2
    g_v = [gs - coef * gi for gs, gi in zip(g_s, g)]
    w1 = [wi - lr * gs for wi, gs in zip(w0, g_s)]
    g1 = loss_grad(model, w1, x, y)
    ratio = global_norm(g1) / global_norm(g_v)
    w2 = [wi - lr * (gi + alpha * ratio * gv) for wi, gi, gv in zip(w1, g1, g_v)]

    passes = []

    def counting_loss(logits, targets):
        passes.append(1)
        return F.cross_entropy(logits, targets)

    optimizer = LookSAM(model.parameters(), torch.optim.SGD, rho=rho, k=k, alpha=alpha, lr=lr)
    counts = []
    for expected in (w1, w2):
        train_step(classify(model, counting_loss), optimizer, (x, y))
        counts.append(len(passes))
        for p, want in zip(model.parameters(), expected):
            torch.testing.assert_close(p.detach(), want, rtol=0, atol=1e-12)
    train_step(classify(model, counting_loss), optimizer, (x, y))  # step k: a full SAM step again
    assert counts + [len(passes)] == [2, 3, 5]


# ---------------------------------------------------------------------- davda54's call forms

VARIANTS = {  # k = 2 for LookSAM: steps 0 and 2 ascend, step 1 reuses g_v
    "sam": lambda params: SAM(params, torch.optim.SGD, rho=0.1, lr=0.1),
    "asam": lambda params: SAM(params, torch.optim.SGD, rho=0.5, adaptive=True, eta=0.01, lr=0.1),
    "gsam": lambda params: GSAM(params, torch.optim.SGD, rho=0.1, alpha=0.3, lr=0.1),
    "looksam": lambda params: LookSAM(params, torch.optim.SGD, rho=0.1, k=2, alpha=0.5, lr=0.1),
}


def dot(a, b):
    return sum((ai * bi).sum() for ai, bi in zip(a, b))


def updates_by_hand(variant, model, x, y, steps, lr=0.1):
    """Weights after each of ``steps`` SGD steps of ``variant`` (hyperparameters as in
    VARIANTS; GSAM at its peak lr, so rho_t = rho), from gradients taken with autograd."""
    w, g_v, trajectory = weights(model), None, []
    for step in range(steps):
        g = loss_grad(model, w, x, y)
        if variant == "looksam" and step % 2 == 1:  # g + alpha (||g|| / ||g_v||) g_v
            update = [gi + 0.5 * global_norm(g) / global_norm(g_v) * vi for gi, vi in zip(g, g_v)]
        else:
            if variant == "asam":  # e = rho T^2 g / ||T g||, T = |w| + eta
                t = [wi.abs() + 0.01 for wi in w]
                norm = global_norm([ti * gi for ti, gi in zip(t, g)])
                e = [0.5 * ti ** 2 * gi / norm for ti, gi in zip(t, g)]
            else:
                e = [0.1 * gi / global_norm(g) for gi in g]
            g_adv = loss_grad(model, [wi + ei for wi, ei in zip(w, e)], x, y)
            update = g_adv
            if variant == "gsam":  # g_adv - alpha g_perp, g_perp = g - (g . g_adv / ||g_adv||^2) g_adv
                coef = dot(g, g_adv) / global_norm(g_adv) ** 2
                update = [ga - 0.3 * (gi - coef * ga) for gi, ga in zip(g, g_adv)]
            if variant == "looksam":  # g_v = g_s - (g . g_s / ||g||^2) g
                coef = dot(g, g_adv) / global_norm(g) ** 2
                g_v = [ga - coef * gi for gi, ga in zip(g, g_adv)]
        w = [wi - lr * ui for wi, ui in zip(w, update)]
        trajectory.append(w)
    return trajectory


class Counter:
    """Forward + backward on (x, y), counting the passes; ``closure`` counts its calls too."""

    def __init__(self, model, x, y, zero_first=None):
        self.model, self.x, self.y, self.zero_first = model, x, y, zero_first
        self.passes = self.closure_calls = 0

    def backward(self):
        self.passes += 1
        loss = F.cross_entropy(self.model(self.x), self.y)
        loss.backward()
        return loss

    def closure(self):
        self.closure_calls += 1
        if self.zero_first is not None:
            self.zero_first.zero_grad()
        return self.backward()


def step_in_form(form, optimizer, counter):
    if form == "halves":  # davda54's README, first form (LookSAM: step() between ascents)
        counter.backward()
        if isinstance(optimizer, LookSAM) and not optimizer.ascent_due:
            optimizer.step()
            optimizer.zero_grad()
        else:
            optimizer.first_step(zero_grad=True)
            counter.backward()
            optimizer.second_step(zero_grad=True)
    elif form == "backward_then_closure":  # davda54's README, closure form
        counter.backward()
        optimizer.step(counter.closure)
        optimizer.zero_grad()
    elif form in ("closure_only", "closure_only_not_zeroing"):  # nothing between the steps
        optimizer.step(counter.closure)  # the previous step's gradient is no gradient given
    elif form == "zeroed_in_place":  # zero_grad(set_to_none=False), a closure that does not zero
        optimizer.zero_grad(set_to_none=False)
        optimizer.step(counter.closure)


FORMS = ("halves", "backward_then_closure", "closure_only", "closure_only_not_zeroing", "zeroed_in_place")


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_every_call_form_gives_the_update_by_hand_with_two_passes(variant, form):
    """Each form matches the hand-written update; SAM-style steps run two forward/backward
    passes (LookSAM one between ascents), never three; in davda54's closure form the
    closure runs only at w + e (and not at all on LookSAM's reuse steps)."""
    model, (x, y) = tiny_mlp(), batch()
    expected = updates_by_hand(variant, model, x, y, steps=3)
    optimizer = VARIANTS[variant](model.parameters())
    # "closure_only": torch's LBFGS idiom, the closure zeroes the gradients
    counter = Counter(model, x, y, zero_first=optimizer if form == "closure_only" else None)
    passes, closure_calls = [], []
    for want in expected:
        step_in_form(form, optimizer, counter)
        passes.append(counter.passes)
        closure_calls.append(counter.closure_calls)
        for p, w in zip(model.parameters(), want):
            torch.testing.assert_close(p.detach(), w, rtol=0, atol=1e-12)
    want_passes = [2, 3, 5] if variant == "looksam" else [2, 4, 6]
    assert passes == want_passes
    if form == "halves":
        assert closure_calls == [0, 0, 0]
    elif form == "backward_then_closure":
        assert closure_calls == ([1, 1, 2] if variant == "looksam" else [1, 2, 3])
    else:
        assert closure_calls == want_passes


def test_looksam_davda54_closure_form_does_not_double_the_gradient():
    """The reported defect: with the user's backward before step(closure), the reuse steps
    added the user's gradient to the closure's (0.039 off after 3 steps at lr 0.1)."""
    x, y = batch()
    results = []
    for form in ("backward_then_closure", "closure_only"):
        model = tiny_mlp()
        optimizer = VARIANTS["looksam"](model.parameters())
        counter = Counter(model, x, y, zero_first=optimizer if form == "closure_only" else None)
        for _ in range(3):
            step_in_form(form, optimizer, counter)
        results.append(weights(model))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_davda54_closure_form_returns_none_and_vitsam_form_the_loss_at_w():
    model, (x, y) = tiny_mlp(), batch()
    loss_at_w = F.cross_entropy(model(x), y)
    counter = Counter(model, x, y)
    optimizer = SAM(model.parameters(), torch.optim.SGD, rho=0.1, lr=0.1)
    assert optimizer.step(counter.closure) == loss_at_w  # no gradient present: vitsam's form
    optimizer.zero_grad()
    counter.backward()
    assert optimizer.step(counter.closure) is None


def test_step_and_second_step_misuse_are_clear_errors():
    model, (x, y) = tiny_mlp(), batch()
    counter = Counter(model, x, y)
    for variant in ("sam", "looksam"):
        optimizer = VARIANTS[variant](model.parameters())
        with pytest.raises(VitsamError, match="second_step without first_step"):
            optimizer.second_step()
        counter.backward()
        with pytest.raises(VitsamError, match="needs a closure"):
            optimizer.step()  # SAM, and LookSAM's first step (an ascent), need the pass at w + e
        optimizer.zero_grad()
    optimizer.step(counter.closure)  # LookSAM: ascent done, a reuse step is due
    optimizer.zero_grad()
    with pytest.raises(VitsamError, match="needs the gradient at w"):
        optimizer.step()


@pytest.mark.parametrize("host_scalar", [True, False])  # False: the GPU path, run on the CPU
def test_add_scaled_in_both_forms(host_scalar):
    from vitsam.optim.sam import _add_scaled_
    gen = torch.Generator().manual_seed(0)
    targets = [torch.randn(shape, generator=gen, dtype=torch.float64) for shape in [(3, 4), (5,)]]
    sources = [torch.randn(t.shape, generator=gen, dtype=torch.float64) for t in targets]
    want = [t + 0.3 * s for t, s in zip(targets, sources)]
    _add_scaled_(targets, sources, torch.tensor(0.3, dtype=torch.float64), host_scalar=host_scalar)
    for got, expected in zip(targets, want):
        torch.testing.assert_close(got, expected, rtol=0, atol=1e-15)
