"""Per-image correctness in robustness results: kept, summarised with intervals, compared.

Every accuracy in a robustness result is stored three ways, side by side:
``accuracy`` (a float), ``interval`` (its 95% interval ``[low, high]``) and ``correct``
(which images were right, as a packed bit string: ``np.packbits`` in little bit order,
then base64; ``unpack(text, n)`` reads it back as a bool array of the ``n`` images).
A 1000-image accuracy costs 168 characters of JSON, and a result file alone is enough
for a paired comparison; ``split_arrays`` / ``join_arrays`` move the bits to and from a
sidecar ``.npz`` for stores that keep per-image arrays apart.

Two results with the same ``images_digest`` were evaluated on the same images in the
same order (the digest hashes the labels batch by batch, and for corrupted copies made
on the fly the seed, parameter set and storage step too), so their correctness vectors can be
compared image by image: ``paired_gain`` gives the paired 95% interval of a
difference (SAM minus vanilla), far tighter than two independent intervals.

Intervals: one accuracy (0/1 per image) gets the Wilson interval
(``vitsam.stats.accuracy_interval``); a mean over several corrupted copies (per image
the fraction of copies it survives) gets the normal interval of a mean over images,
which is accurate at the >= 500 images these evaluations use.
"""
from __future__ import annotations

import base64
import hashlib
import math

import numpy as np
import torch

from vitsam.errors import VitsamError
from vitsam.stats import Z95, Estimate, accuracy_interval, paired_difference


def pack(correct) -> str:
    """Bool (n,) -> base64 text of its bits (little bit order, zero padded to bytes)."""
    bits = np.asarray(correct.cpu() if isinstance(correct, torch.Tensor) else correct, dtype=bool).reshape(-1)
    return base64.b64encode(np.packbits(bits, bitorder="little").tobytes()).decode("ascii")


def unpack(text: str, n: int) -> np.ndarray:
    """The bool (n,) array ``pack`` wrote."""
    try:
        raw = np.frombuffer(base64.b64decode(text.encode("ascii"), validate=True), dtype=np.uint8)
    except (ValueError, UnicodeEncodeError) as err:
        raise VitsamError(f"per-image correctness is not valid base64 ({err})") from None
    if len(raw) != math.ceil(n / 8):
        raise VitsamError(f"per-image correctness holds {len(raw) * 8} bits, expected {n} images")
    return np.unpackbits(raw, bitorder="little")[:n].astype(bool)


class Digest:
    """Fingerprint of the images an evaluation saw: ``header`` values (e.g. the corruption
    seed), then each batch's labels in order. Equal digests: same labels, same batches."""

    def __init__(self, *header):
        self._hash = hashlib.sha256(repr(header).encode())

    def update(self, labels: torch.Tensor) -> None:
        array = labels.detach().cpu().to(torch.int64).numpy()
        self._hash.update(len(array).to_bytes(8, "little") + array.tobytes())

    def hexdigest(self) -> str:
        return self._hash.hexdigest()[:16]


def mean_estimate(scores) -> Estimate:
    """Mean over images of per-image scores in [0, 1] with a 95% interval: Wilson when
    every score is 0 or 1 (a plain accuracy), else mean +- 1.96 standard errors."""
    x = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(x) == 0:
        raise VitsamError("mean_estimate needs at least one image")
    if np.all((x == 0) | (x == 1)):
        return accuracy_interval(int(x.sum()), len(x))
    mean = float(x.mean())
    half = Z95 * float(x.std(ddof=1)) / math.sqrt(len(x))
    return Estimate(mean, max(0.0, mean - half), min(1.0, mean + half), len(x))


def interval(estimate: Estimate | None) -> list | None:
    """The JSON form of an interval: [low, high], or None."""
    if estimate is None or estimate.low is None:
        return None
    return [estimate.low, estimate.high]


def paired_gain(scores_a, scores_b, seed: int = 0) -> Estimate:
    """mean(b) - mean(a) over the same images with a paired 95% interval: the paired
    bootstrap of ``vitsam.stats`` for 0/1 correctness, the normal interval of the
    per-image differences for fractional scores (means over corrupted copies)."""
    a = np.asarray(scores_a, dtype=np.float64).reshape(-1)
    b = np.asarray(scores_b, dtype=np.float64).reshape(-1)
    if len(a) != len(b) or len(a) == 0:
        raise VitsamError(f"paired_gain needs the same non-empty set of images, got {len(a)} and {len(b)}")
    if np.all(np.isin(a, (0, 1))) and np.all(np.isin(b, (0, 1))):
        return paired_difference(a.astype(bool), b.astype(bool), seed=seed)
    diff = b - a
    mean = float(diff.mean())
    half = Z95 * float(diff.std(ddof=1)) / math.sqrt(len(diff)) if len(diff) > 1 else None
    return Estimate(mean, None if half is None else mean - half, None if half is None else mean + half, len(diff))


def same_images(a: dict, b: dict) -> bool:
    """Whether two results were evaluated on the same images (equal digests)."""
    return (a.get("images_digest") is not None and a.get("images_digest") == b.get("images_digest")
            and a.get("num_images") == b.get("num_images"))


def correct_vector(result: dict, *path: str) -> np.ndarray | None:
    """One stored correctness vector: ``("clean",)``, ``(eps_key,)`` of an adversarial
    result, or ``(corruption, severity)`` of a corruption result; None when absent."""
    if path == ("clean",):
        text, n = result.get("clean_correct"), result.get("clean_n")
    elif len(path) == 1:
        text, n = result.get("correct", {}).get(path[0]), result.get("num_images")
    else:
        name, severity = path
        text = result.get("correct", {}).get(name, {}).get(severity)
        n = result.get("cell_n", {}).get(name, {}).get(severity)
    return None if text is None or n is None else unpack(text, n)


def corruption_scores(result: dict, names) -> np.ndarray | None:
    """Per image, the mean over ``names`` of the fraction of each one's severities it was
    right on (the per-image form of the mean accuracy over ``names``); None when a
    corruption is missing or the cells do not hold the same images in the same order."""
    correct = result.get("correct", {})
    if not result.get("aligned") or not names or any(name not in correct for name in names):
        return None
    return np.mean([np.mean([correct_vector(result, name, s) for s in correct[name]], axis=0) for name in names],
                   axis=0)


def corrupted_vector(result: dict, names) -> np.ndarray | None:
    """0/1 per corrupted image over ``names`` x their severities, concatenated in that
    order (the claims scoreboard's ``corrupted`` evidence); None when one is missing.
    Copies of one test image are correlated: ``corruption_scores`` is the per-image unit."""
    correct = result.get("correct", {})
    if not names or any(name not in correct for name in names):
        return None
    return np.concatenate([correct_vector(result, name, s) for name in names for s in sorted(correct[name], key=int)])


def split_arrays(result: dict) -> tuple[dict, dict[str, np.ndarray]]:
    """The result without its packed correctness, and that correctness as bool arrays,
    for a sidecar ``.npz`` (``np.savez``; read back with ``allow_pickle=False``);
    ``join_arrays`` undoes it. Array names: ``clean``, ``correct`` (a shifted set),
    ``correct/<eps>``, ``correct/<corruption>/<severity>``."""
    metrics = {key: value for key, value in result.items() if key != "correct"}
    arrays = {}
    if result.get("clean_correct") is not None:
        arrays["clean"] = correct_vector(result, "clean")
        metrics["clean_correct"] = None
    correct = result.get("correct")
    if isinstance(correct, str):
        arrays["correct"] = unpack(correct, result["num_images"])
    for key, value in (correct or {}).items() if isinstance(correct, dict) else ():
        if isinstance(value, dict):
            arrays.update({f"correct/{key}/{s}": correct_vector(result, key, s) for s in value})
        else:
            arrays[f"correct/{key}"] = correct_vector(result, key)
    return metrics, arrays


def join_arrays(metrics: dict, arrays: dict[str, np.ndarray]) -> dict:
    """A result as the evaluators write it, from ``split_arrays``'s two parts."""
    result = dict(metrics)
    for name, values in arrays.items():
        if name == "clean":
            result["clean_correct"] = pack(values)
        elif name == "correct":
            result["correct"] = pack(values)
        else:
            path = name.split("/")[1:]
            target = result.setdefault("correct", {})
            for part in path[:-1]:
                target = target.setdefault(part, {})
            target[path[-1]] = pack(values)
    return result
