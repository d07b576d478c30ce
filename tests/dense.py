"""Dense ground truth for the geometry tests: the size-weighted mean loss of a list of
batches as a function of a flat parameter vector, and its full Hessian."""
import torch
import torch.nn.functional as F

from vitsam.analysis import batch_weights


def flat_loss(model, batches, params=None, loss_fn=F.cross_entropy):
    """(loss of a flat vector of ``params`` (all parameters when None), its value now)."""
    chosen = {id(p) for p in (params if params is not None else model.parameters())}
    names = [n for n, p in model.named_parameters() if id(p) in chosen]
    named = dict(model.named_parameters())
    flat0 = torch.cat([named[n].detach().reshape(-1) for n in names])

    def loss(flat):
        pieces = dict(zip(names, [t.view_as(named[n]) for n, t in zip(names, flat.split(
            [named[n].numel() for n in names]))]))
        return sum(w * loss_fn(torch.func.functional_call(model, pieces, (x,)), y)
                   for w, (x, y) in zip(batch_weights(batches), batches))

    return loss, flat0


def dense_hessian(model, batches, params=None, loss_fn=F.cross_entropy):
    """torch.autograd.functional.hessian of the size-weighted mean loss."""
    loss, flat0 = flat_loss(model, batches, params, loss_fn)
    return torch.autograd.functional.hessian(loss, flat0, vectorize=True)


def block_of(model, hessian, params):
    """The diagonal block of a full dense Hessian for ``params`` (rows and columns of
    their entries, in named_parameters order)."""
    chosen = {id(p) for p in params}
    index, start = [], 0
    for p in model.parameters():
        if id(p) in chosen:
            index.extend(range(start, start + p.numel()))
        start += p.numel()
    index = torch.tensor(index)
    return hessian[index][:, index]
