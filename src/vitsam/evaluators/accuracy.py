"""Top-1 accuracy and mean cross-entropy on a whole un-augmented split: the one
evaluation the training loop, ``vitsam eval`` and the report share."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from vitsam.progress import Progress
from vitsam.train import distributed


@dataclass
class Accuracy:
    accuracy: float
    loss: float
    images: int
    predicted: np.ndarray | None = None   # int64 (N,) in the split's order (keep_predictions)
    labels: np.ndarray | None = None


@torch.no_grad()
def evaluate(model: nn.Module, loader, device: torch.device, autocast_dtype=None,
             d: distributed.Dist | None = None, keep_predictions: bool = False,
             progress: Progress | None = None) -> Accuracy:
    """Accuracy and mean cross-entropy of ``model`` over ``loader`` (eval mode restored
    afterwards). Under DDP each rank evaluates its shard and the sums are all-reduced;
    with ``keep_predictions`` the per-image predictions are gathered in split order.
    ``progress`` (a ``vitsam.progress.Progress``) advances once per batch."""
    d = d or distributed.Dist()
    was_training = model.training
    model.eval()
    correct, loss_sum, count = 0, 0.0, 0
    predicted, labels_seen = [], []
    for images, labels in loader.iterate(0):
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            logits = model(images)
        loss_sum += nn.functional.cross_entropy(logits.float(), labels, reduction="sum").item()
        guess = logits.argmax(-1)
        correct += (guess == labels).sum().item()
        count += labels.numel()
        if keep_predictions:
            predicted.append(guess.cpu())
            labels_seen.append(labels.cpu())
        if progress is not None:
            progress.advance()
    model.train(was_training)
    correct, loss_sum, count = distributed.all_sum([correct, loss_sum, count], d)
    result = Accuracy(correct / max(count, 1), loss_sum / max(count, 1), int(count))
    if keep_predictions:
        result.predicted, result.labels = (_in_split_order(torch.cat(t).numpy(), d)
                                           for t in (predicted, labels_seen))
    return result


def _in_split_order(shard: np.ndarray, d: distributed.Dist) -> np.ndarray:
    """Rank r evaluated images r, r + W, r + 2W, ... (the eval loader's shards): interleave."""
    shards = distributed.gather_objects(shard, d)
    out = np.empty(sum(len(s) for s in shards), dtype=shard.dtype)
    for rank, part in enumerate(shards):
        out[rank::d.world_size] = part
    return out


def evaluate_splits(model: nn.Module, loaders: dict, device: torch.device, autocast_dtype=None,
                    d: distributed.Dist | None = None, progress: bool = False) -> tuple[dict, dict]:
    """Every split of ``loaders`` (name -> loader): ({"<split>_accuracy", "<split>_loss",
    "<split>_images"}, {"<split>_predicted", "<split>_labels": arrays}) for eval.json and
    predictions.npz; ``progress``: a progress line per split."""
    summary, predictions = {}, {}
    for split, loader in loaders.items():
        with Progress(len(loader), f"accuracy {split}", "batches", enabled=progress) as bar:
            result = evaluate(model, loader, device, autocast_dtype, d, keep_predictions=True, progress=bar)
        summary.update({f"{split}_accuracy": result.accuracy, f"{split}_loss": result.loss,
                        f"{split}_images": result.images})
        predictions.update({f"{split}_predicted": result.predicted, f"{split}_labels": result.labels})
    return summary, predictions


@dataclass
class AccuracyOptions:
    """Top-1 accuracy of a split with a 95% Wilson interval; keeps the per-image
    predictions for paired comparisons between runs."""
    split: str = "test"            # test | val | train (un-augmented)
    examples: int = 0              # 0: the whole split; else a class-stratified sample


def _run_accuracy(model, data, options: AccuracyOptions):
    from vitsam.evaluators.protocol import Result
    from vitsam.stats import accuracy_interval

    loader = data.loader(options.split, options.examples or None, data.batch_size)
    with Progress(len(loader), f"accuracy {options.split}", "batches") as bar:
        result = evaluate(model, loader, data.device, keep_predictions=True, progress=bar)
    interval = accuracy_interval(int((result.predicted == result.labels).sum()), result.images)
    metrics = {"split": options.split, "accuracy": result.accuracy, "loss": result.loss, "images": result.images,
               "interval": [interval.low, interval.high]}
    return Result(metrics, arrays={"predicted": result.predicted, "labels": result.labels})


def _register() -> None:
    from vitsam.evaluators.protocol import register

    register("accuracy", AccuracyOptions, section="training",
             summary=lambda r: f"{r['split']} accuracy {r['accuracy']:.4f} "
                               f"[{r['interval'][0]:.4f}, {r['interval'][1]:.4f}] on {r['images']} images")(_run_accuracy)


_register()
