"""The claims scoreboard: one row per claim of the paper, its figure, ours, and a verdict
computed from the numbers by a stated rule (never written by hand).

    rows = scoreboard(evidence)                 # evidence: the plain dict below
    write_json(rows, "runs/demo/claims.json")   # strict JSON, a list of objects
    html_fragment = html_table(rows)            # for the top of the report

Verdicts: ``reproduced`` only when every interval the rule names lies on the paper's
side of its threshold (a point estimate alone never reproduces a claim); ``not
reproduced`` when one lies clearly on the other side; ``inconclusive`` otherwise,
including when evidence is missing (the reason says "not measured: ...").

Evidence (plain data the demo gathers; every key optional, an absent key means not
measured; ``missing`` may say why)::

    {"families": {                      # keys among "vit", "mixer", "resnet"
        "vit": {
            "model": "vit_tiny",        # registry name, shown in the rows
            "params": 71000,            # parameter count (shown only)
            "clean": {"vanilla": [0/1 per test image], "sam": [...]},      # same images, same order
            "seed_accuracy": {"vanilla": [acc per seed], "sam": [...]},    # fractions; seed i pairs with seed i
            "corrupted": {"vanilla": [score per test image], "sam": [...]},  # share of its corrupted copies
                                        # (corruptions x severities) right, in [0, 1]; same images as "clean"
            "lambda_max": {"vanilla": [one per seed], "sam": [...]},       # Hessian dominant eigenvalue
                                        # of the training loss on training images (the paper's measure)
            "lambda_max_heldout": {"vanilla": [...], "sam": [...]},        # the same on held-out images
                                        # (shown as our finding: near zero training loss the training-
                                        # loss Hessian vanishes, docs/calibration.md)
            "lambda_max_subsets": {"vanilla": [per disjoint image subset], "sam": [...]},  # one run each:
                                        # the measurement's spread, used when fewer than 2 seeds ran
            "lambda_max_heldout_subsets": {...},                           # the same on held-out images
            "ntk_kappa": {"vanilla": [per diagonal block (or seed); null = singular], "sam": [...]},
            "ntk_kernel": "full",        # which kernel: full (the paper's J J^T), trace or sum
            "sparsity": {"vanilla": [[active fraction per block] per seed], "sam": [...]},
            "fractions": {"0.05": {"vanilla": [0/1 per test image], "sam": [...]}, ...},  # training-data fraction
            "pgd": {"2/255": {"vanilla": [0/1 per image under PGD-10], "sam": [...]}, ...},  # standard training
            "adversarial_pgd": {"vanilla": [...], "sam": [...]},           # adversarially trained, PGD-10
            "missing": {"corrupted": "skipped by --fast", ...},           # why a key is absent
        }, ...}}

Accuracy differences are in percentage points with 95% intervals: a paired bootstrap over
test images (``vitsam.stats``), and, where two or more seeds were run, also a Student-t
interval over seeds; both must agree for a verdict.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable

import numpy as np

from vitsam import jsonfile, paper
from vitsam.errors import VitsamError, unknown_choice
from vitsam.report import html
from vitsam.stats import Estimate, difference_of_differences, paired_difference, seed_interval

REPRODUCED, NOT_REPRODUCED, INCONCLUSIVE = "reproduced", "not reproduced", "inconclusive"
FAMILIES = ("vit", "mixer", "resnet")
LABELS = {"vit": "ViT", "mixer": "Mixer", "resnet": "ResNet"}
EVIDENCE_KEYS = ("model", "params", "clean", "seed_accuracy", "corrupted", "lambda_max", "lambda_max_heldout",
                 "lambda_max_subsets", "lambda_max_heldout_subsets", "ntk_kappa", "ntk_kernel",
                 "sparsity", "fractions", "pgd", "adversarial_pgd", "missing")
LAMBDA_FACTOR = 5.0        # "a large factor": SAM must cut lambda_max at least 5x for ViT and Mixer
EARLY_BLOCKS = 0.25        # "first blocks": the first quarter of the blocks (at least one)
POINTS = 100.0             # accuracy fractions -> percentage points


# --- evidence ------------------------------------------------------------------------------

class Evidence:
    """The evidence dict, checked: unknown families or keys are errors (a typo must not
    read as "not measured")."""

    def __init__(self, data: dict):
        families = data.get("families") if isinstance(data, dict) else None
        if not isinstance(families, dict):
            raise VitsamError("claims evidence: expected {'families': {family: {...}}}")
        for family, entry in families.items():
            if family not in FAMILIES:
                raise unknown_choice("claims evidence family", family, FAMILIES)
            for key in entry:
                if key not in EVIDENCE_KEYS:
                    raise unknown_choice(f"claims evidence key of {family}", key, EVIDENCE_KEYS)
        self.families = families

    def get(self, family: str, key: str):
        return self.families.get(family, {}).get(key)

    def label(self, family: str) -> str:
        model = self.get(family, "model")
        return f"{LABELS[family]} ({model})" if model else LABELS[family]

    def why_missing(self, family: str, key: str) -> str:
        reason = (self.get(family, "missing") or {}).get(key)
        return f"not measured: {LABELS[family]} {key}" + (f" ({reason})" if reason else "")

    def pair(self, family: str, key: str, entry=None) -> tuple[np.ndarray, np.ndarray] | None:
        """(vanilla, sam) per-image correctness, or None when not measured."""
        entry = self.get(family, key) if entry is None else entry
        if entry is None:
            return None
        if not isinstance(entry, dict) or set(entry) != {"vanilla", "sam"}:
            raise VitsamError(f"claims evidence {family}.{key}: expected {{'vanilla': [...], 'sam': [...]}}")
        return np.asarray(entry["vanilla"]), np.asarray(entry["sam"])


# --- comparisons and verdicts --------------------------------------------------------------

@dataclass
class Comparison:
    """One interval the rule checks against a threshold, in the paper's direction
    (+1: the claim says above, -1: below)."""
    of: str
    estimate: Estimate
    units: str
    threshold: float = 0.0
    direction: int = 1
    method: str = ""
    also: list = field(default_factory=list)     # further estimates that must agree (seed spread)

    def _side(self, est: Estimate) -> int:
        if est.low is None:
            return 0
        low, high = (est.low - self.threshold) * self.direction, (est.high - self.threshold) * self.direction
        return 1 if min(low, high) > 0 else -1 if max(low, high) < 0 else 0

    @property
    def sign(self) -> int:
        """+1: every interval on the claim's side; -1: one on the other side and none on
        the claim's; 0 otherwise (overlap, or no interval at all)."""
        sides = [self._side(e) for e in (self.estimate, *self.also)]
        if all(s > 0 for s in sides):
            return 1
        return -1 if -1 in sides and 1 not in sides else 0

    @property
    def side_word(self) -> str:
        return "above" if self.direction > 0 else "below"

    def to_json(self) -> dict:
        e = self.estimate
        return {"of": self.of, "value": e.value, "low": e.low, "high": e.high, "n": e.n,
                "units": self.units, "method": self.method, "threshold": self.threshold,
                "direction": self.side_word, "also": [a.to_json() for a in self.also]}

    def text(self) -> str:
        seeds = "".join(f" (over {a.n} seeds: {_interval_text(a, self.units)})" for a in self.also)
        return f"{self.of} {_interval_text(self.estimate, self.units)}{seeds}"


@dataclass
class Claim:
    id: str
    claim: str
    paper: str
    ours: str
    interval: dict | None
    verdict: str
    reason: str
    rule: str
    evidence: str
    details: list[dict]

    def to_json(self) -> dict:
        return {"id": self.id, "claim": self.claim, "paper": self.paper, "ours": self.ours,
                "interval": self.interval, "verdict": self.verdict, "reason": self.reason,
                "rule": self.rule, "evidence": self.evidence, "details": self.details}


def decide(comparisons: list[Comparison], missing: list[str]) -> tuple[str, str, Comparison | None]:
    """(verdict, reason, the comparison that decided it). A measured contradiction is
    enough to reject; support needs every comparison, so missing evidence leaves it open."""
    against = [c for c in comparisons if c.sign < 0]
    if against:
        c = against[0]
        return NOT_REPRODUCED, f"{c.of}: interval not {c.side_word} {c.threshold:g}, the paper's side", c
    if missing:
        return INCONCLUSIVE, "; ".join(missing), None
    if not comparisons:
        return INCONCLUSIVE, "not measured", None
    open_ = [c for c in comparisons if c.sign == 0]
    if open_:
        c = open_[0]
        why = "has no interval (one seed)" if c.estimate.low is None else f"overlaps {c.threshold:g}"
        return INCONCLUSIVE, f"{c.of} {why}", c
    weakest = min(comparisons, key=lambda c: min(abs(c.estimate.low - c.threshold), abs(c.estimate.high - c.threshold)))
    return REPRODUCED, "every interval on the paper's side", weakest


def _signed(x: float, digits: int = 1) -> str:
    return f"{x:+.{digits}f}"


def _number(x: float, units: str) -> str:
    if units == "pts":
        return _signed(x, 2)
    if units == "x":
        return f"{x:.3g}"
    return f"{x:.4g}" if abs(x) < 1e4 else f"{x:.0f}"


def _interval_text(e: Estimate, units: str) -> str:
    """"+0.15 pts [-0.51, +0.85]", "35.3x [12.1, 80.2]", "4205 [3900, 4510]"."""
    core = _number(e.value, units) + {"pts": " pts", "x": "x"}.get(units, "")
    if e.low is None:
        return f"{core} (no interval: one seed)"
    return f"{core} [{_number(e.low, units)}, {_number(e.high, units)}]"


def _row(id_: str, claim: str, paper_text: str, rule: str, evidence: str,
         comparisons: list[Comparison], missing: list[str], ours: str, details: list[Comparison]) -> Claim:
    verdict, reason, decisive = decide(comparisons, missing)
    return Claim(id_, claim, paper_text, ours or "-", decisive.to_json() if decisive else None, verdict, reason,
                 rule, evidence, [c.to_json() for c in details])


# --- estimates from evidence -------------------------------------------------------------

def _paired_seeds(entry, transform: Callable[[np.ndarray], np.ndarray] = lambda x: x) -> tuple | None:
    """(vanilla, sam) per-seed arrays paired by index, or None."""
    if entry is None:
        return None
    vanilla, sam = (transform(np.asarray(entry[k], dtype=np.float64)) for k in ("vanilla", "sam"))
    if len(vanilla) != len(sam):
        raise VitsamError(f"claims evidence: per-seed lists must pair seed by seed, got {len(vanilla)} "
                          f"vanilla and {len(sam)} SAM values")
    return vanilla, sam


def _gain(ev: Evidence, family: str, key: str = "clean", entry=None, seed: int = 0) -> Comparison | None:
    """SAM minus vanilla accuracy (points): paired bootstrap, plus the seed spread of the
    clean gain where two or more seeds were run."""
    pair = ev.pair(family, key, entry)
    if pair is None:
        return None
    est = paired_difference(*pair, seed=seed).scaled(POINTS)
    also = []
    seeds = _paired_seeds(ev.get(family, "seed_accuracy")) if key == "clean" and entry is None else None
    if seeds is not None and len(seeds[0]) >= 2:
        also.append(seed_interval((seeds[1] - seeds[0]) * POINTS))
    return Comparison(f"{ev.label(family)} SAM gain", est, "pts", method="paired bootstrap over images"
                      + (", and seed spread" if also else ""), also=also)


def _gain_difference(ev: Evidence, family: str, other: str, key: str, seed: int) -> Comparison | None:
    """(SAM gain of ``family``) - (SAM gain of ``other``), points."""
    a, b = ev.pair(family, key), ev.pair(other, key)
    if a is None or b is None:
        return None
    est = difference_of_differences(a, b, seed=seed).scaled(POINTS)
    also = []
    sa, sb = _paired_seeds(ev.get(family, "seed_accuracy")), _paired_seeds(ev.get(other, "seed_accuracy"))
    if key == "clean" and sa is not None and sb is not None and len(sa[0]) >= 2 and len(sa[0]) == len(sb[0]):
        also.append(seed_interval(((sa[1] - sa[0]) - (sb[1] - sb[0])) * POINTS))
    return Comparison(f"{LABELS[family]} gain - {LABELS[other]} gain", est, "pts",
                      method="independent paired bootstraps" + (", and seed spread" if also else ""), also=also)


def _log_interval(values) -> Estimate | None:
    """Seed interval of log(values): a positive quantity's spread in ratio terms (None if a
    value is not positive and finite)."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0 or np.any(~np.isfinite(x)) or np.any(x <= 0):
        return None
    return seed_interval(np.log(x))


def _ratio(numerator: Estimate, denominator: Estimate) -> Estimate:
    """exp(log a - log b) with the conservative bounds of two log intervals (non-overlap)."""
    value = math.exp(numerator.value - denominator.value)
    if numerator.low is None or denominator.low is None:
        return Estimate(value, None, None, min(numerator.n, denominator.n))
    return Estimate(value, math.exp(numerator.low - denominator.high), math.exp(numerator.high - denominator.low),
                    min(numerator.n, denominator.n))


def _reduction(ev: Evidence, family: str, key: str = "lambda_max") -> tuple[Estimate | None, str]:
    """How many times SAM lowers lambda_max (vanilla / SAM), or None and why not. The
    interval comes from the seeds when 2 or more ran, else from the disjoint image
    subsets of the one run (the spread of the measurement, not of training)."""
    entry = ev.get(family, key)
    if entry is not None and min(len(entry["vanilla"]), len(entry["sam"])) < 2 and ev.get(family, f"{key}_subsets"):
        entry = ev.get(family, f"{key}_subsets")
    if entry is None:
        return None, ev.why_missing(family, key)
    vanilla, sam = _log_interval(entry["vanilla"]), _log_interval(entry["sam"])
    if vanilla is None or sam is None:
        return None, f"{LABELS[family]} {key} not positive and finite: {entry}"
    return _ratio(vanilla, sam), ""


def _geometric_mean(values) -> float:
    return float(np.exp(np.mean(np.log(np.asarray(values, dtype=np.float64)))))


def _log_of(ratio: Estimate) -> Estimate:
    low = None if ratio.low is None else math.log(ratio.low)
    high = None if ratio.high is None else math.log(ratio.high)
    return Estimate(math.log(ratio.value), low, high, ratio.n)


def _mean_interval(values) -> Estimate | None:
    """Mean with a t-interval; None when a value is missing (a singular NTK block)."""
    if not values or any(v is None or not math.isfinite(v) for v in values):
        return None
    return seed_interval(values)


def _difference(a: Estimate, b: Estimate) -> Estimate:
    """a - b with conservative bounds (the two intervals must not overlap to exclude 0)."""
    if a.low is None or b.low is None:
        return Estimate(a.value - b.value, None, None, min(a.n, b.n))
    return Estimate(a.value - b.value, a.low - b.high, a.high - b.low, min(a.n, b.n))


def _early_fraction(per_block: list[float]) -> float:
    count = max(1, math.ceil(EARLY_BLOCKS * len(per_block)))
    return float(np.mean(per_block[:count]))


def _table2(model: str, column: str = "imagenet") -> paper.Figure:
    return paper.figure("table2", model, column)


def _paper_gains(column: str = "imagenet", families=FAMILIES) -> str:
    parts = [f"{paper.paper_name(paper.REPRESENTATIVES[f])} {_signed(_table2(paper.REPRESENTATIVES[f], column).gain)}"
             for f in families]
    return ", ".join(parts)


# --- the claims ----------------------------------------------------------------------------

def claim_accuracy_gain(ev: Evidence, seed: int = 0) -> Claim:
    comparisons, missing = [], []
    for family in ("vit", "mixer"):
        c = _gain(ev, family, seed=seed)
        if c:
            comparisons.append(c)
        else:
            missing.append(ev.why_missing(family, "clean"))
    return _row("gain", "SAM raises the clean top-1 accuracy of ViT and MLP-Mixer",
                f"{_paper_gains(families=('vit', 'mixer'))} top-1 points on ImageNet ({_table2('vit_b16').source})",
                "reproduced if the 95% interval of SAM minus vanilla accuracy (paired bootstrap over the same "
                "test images; and the seed interval where >= 2 seeds) lies above 0 for both ViT and Mixer; "
                "not reproduced if one lies below 0",
                f"paper: {_table2('vit_b16').source}; ours: clean test images, vanilla and SAM paired per image",
                comparisons, missing, "; ".join(c.text() for c in comparisons), comparisons)


def claim_gain_vs_resnet(ev: Evidence, seed: int = 0) -> Claim:
    comparisons, missing = [], []
    for family in ("vit", "mixer"):
        c = _gain_difference(ev, family, "resnet", "clean", seed)
        if c:
            comparisons.append(c)
        else:
            missing += [ev.why_missing(f, "clean") for f in (family, "resnet") if ev.pair(f, "clean") is None]
    gains = [g for g in (_gain(ev, f, seed=seed) for f in FAMILIES) if g]
    return _row("a", "(a) SAM raises ViT and Mixer accuracy more than ResNet's",
                f"gains {_paper_gains()} top-1 points ({_table2('resnet152').source})",
                "reproduced if the 95% interval of (ViT gain - ResNet gain) and of (Mixer gain - ResNet gain) "
                "both lie above 0 (each gain paired over the same test images, the two resampled "
                "independently; and the seed interval where >= 2 seeds); not reproduced if one lies below 0",
                f"paper: {_table2('resnet152').source}; ours: clean test images, paired per image",
                comparisons, list(dict.fromkeys(missing)),
                "; ".join(c.text() for c in comparisons + gains), comparisons + gains)


def claim_lambda_max(ev: Evidence, seed: int = 0) -> Claim:
    found = {f: _reduction(ev, f) for f in FAMILIES}
    reductions = {f: ratio for f, (ratio, _) in found.items()}
    missing = [why for ratio, why in found.values() if ratio is None]
    comparisons = []
    for family in ("vit", "mixer"):
        if reductions[family] is not None:
            comparisons.append(Comparison(f"{LABELS[family]} lambda_max reduction", reductions[family], "x",
                                          threshold=LAMBDA_FACTOR, method="seed intervals of log lambda_max"))
    for family in ("vit", "mixer"):
        if reductions[family] is not None and reductions["resnet"] is not None:
            rel = _ratio(_log_of(reductions[family]), _log_of(reductions["resnet"]))
            comparisons.append(Comparison(f"{LABELS[family]} reduction / ResNet reduction", rel, "x", threshold=1.0,
                                          method="conservative bounds of the two reduction intervals"))
    shown = [Comparison("ResNet lambda_max reduction (shown, not judged)", reductions["resnet"], "x",
                        threshold=LAMBDA_FACTOR, method="seed intervals of log lambda_max")
             ] if reductions["resnet"] is not None else []
    ratios = ", ".join(f"{paper.paper_name(m)} {paper.ratio('table1', m, 'lambda_max'):.1f}x"
                       for m in paper.REPRESENTATIVES.values())
    t1 = paper.TABLES["table1"].source
    levels = [f"{ev.label(f)} lambda_max {_geometric_mean(ev.get(f, 'lambda_max')['vanilla']):.3g} -> "
              f"{_geometric_mean(ev.get(f, 'lambda_max')['sam']):.3g}" for f in FAMILIES if reductions[f] is not None]
    heldout = []
    for family in FAMILIES:
        ratio, _ = _reduction(ev, family, "lambda_max_heldout")
        if ratio is not None:
            entry = ev.get(family, "lambda_max_heldout")
            heldout.append(Comparison(f"{LABELS[family]} held-out-image lambda_max reduction "
                                      f"({_geometric_mean(entry['vanilla']):.3g} -> {_geometric_mean(entry['sam']):.3g}; "
                                      f"our finding, not judged)", ratio, "x", threshold=LAMBDA_FACTOR,
                                      method="seed intervals of log lambda_max on held-out images"))
    if heldout:
        levels.append("our finding on held-out images (the training-loss Hessian vanishes as the loss does): "
                      + "; ".join(c.text() for c in heldout))
    details = comparisons + shown + heldout
    return _row("b", "(b) SAM lowers the Hessian lambda_max by a large factor for ViT and Mixer, less for ResNet",
                f"vanilla / SAM lambda_max: {ratios} ({t1})",
                f"reduction = vanilla / SAM lambda_max, its 95% interval from the t-intervals of log lambda_max "
                f"over seeds (>= 2 seeds), else over 4 disjoint image subsets of the one run (the measurement's "
                f"spread, not training's); bounds combined conservatively, so the spreads must not overlap; "
                f"reproduced if the ViT and Mixer reductions lie above {LAMBDA_FACTOR:g}x and each lies above "
                f"ResNet's (ratio of reductions above 1); not reproduced if one lies below",
                f"paper: {t1}; ours: Hessian lambda_max of the training loss on training images per seed (and, as "
                f"our finding, on held-out images)",
                comparisons, missing, "; ".join([c.text() for c in comparisons + shown] + levels), details)


def claim_corruption_gain(ev: Evidence, seed: int = 0) -> Claim:
    comparisons, details, missing = [], [], []
    for family in FAMILIES:
        corrupted, clean = ev.pair(family, "corrupted"), ev.pair(family, "clean")
        if corrupted is None or clean is None:
            if family != "resnet":
                missing += [ev.why_missing(family, k) for k, v in (("corrupted", corrupted), ("clean", clean))
                            if v is None]
            continue
        same = len(corrupted[0]) == len(clean[0])
        est = difference_of_differences(corrupted, clean, seed=seed, same_images=same).scaled(POINTS)
        c = Comparison(f"{ev.label(family)} corrupted gain - clean gain", est, "pts",
                       method=("paired bootstrap over test images, each scored by the share of its corrupted "
                               "copies classified right" if same else "independent paired bootstraps"))
        details.append(c)
        if family != "resnet":
            comparisons.append(c)
    paper_text = "; ".join(f"{paper.paper_name(m)} {_signed(_table2(m, 'imagenet_c').gain)} on ImageNet-C vs "
                           f"{_signed(_table2(m).gain)} clean" for m in paper.REPRESENTATIVES.values())
    return _row("c", "(c) SAM's gain is larger on corrupted images than on clean ones",
                f"{paper_text} ({_table2('vit_b16').source})",
                "reproduced if the 95% interval of (SAM gain on corrupted images - SAM gain on the clean test "
                "images) lies above 0 for both ViT and Mixer; not reproduced if one lies below 0; ResNet is "
                "shown, not judged",
                f"paper: {_table2('vit_b16').source}, ImageNet-C vs ImageNet columns; ours: corrupted test "
                f"images (every corruption and severity) and clean test images",
                comparisons, missing, "; ".join(c.text() for c in details), details)


def claim_data_efficiency(ev: Evidence, seed: int = 0) -> Claim:
    fractions = ev.get("vit", "fractions") or {}
    ordered = sorted(fractions, key=lambda k: Fraction(k))
    gains = [_gain(ev, "vit", "fractions", fractions[k], seed) for k in ordered]
    for key, g in zip(ordered, gains):
        g.of = f"ViT SAM gain at fraction {key}"
    missing, comparisons = [], []
    if len(ordered) < 3:
        missing.append(ev.why_missing("vit", "fractions") if not ordered else
                       f"needs >= 3 training fractions for ViT, got {len(ordered)}")
    else:
        small, large = (ev.pair("vit", "fractions", fractions[k]) for k in (ordered[0], ordered[-1]))
        est = difference_of_differences(small, large, seed=seed, same_images=True).scaled(POINTS)
        comparisons.append(Comparison(f"ViT gain at {ordered[0]} - gain at {ordered[-1]}", est, "pts",
                                      method="paired bootstrap over the same test images"))
    model = "vit_b16"
    steps = ", ".join(f"{col} {_signed(paper.sam_gain('data_efficiency', model, col))}"
                      for col in paper.DATA_FRACTIONS)
    source = paper.TABLES["data_efficiency"].source
    return _row("d", "(d) SAM's gain grows as training data shrinks",
                f"{paper.paper_name(model)} SAM gain by training fraction: {steps} points ({source})",
                "with >= 3 training fractions for ViT: reproduced if the 95% interval of (SAM gain at the smallest "
                "fraction - SAM gain at the largest) lies above 0; not reproduced if it lies below 0; the "
                "gain at every fraction is shown",
                f"paper: {source}; ours: ViT trained on each fraction, the same test images",
                comparisons, missing, "; ".join(c.text() for c in comparisons + gains), comparisons + gains)


def _sparsity_change(ev: Evidence, family: str) -> Comparison | None:
    entry = ev.get(family, "sparsity")
    if entry is None:
        return None
    seeds = _paired_seeds(entry, transform=lambda rows: np.array([_early_fraction(list(r)) for r in rows]))
    est = seed_interval((seeds[1] - seeds[0]) * POINTS)
    return Comparison(f"{ev.label(family)} SAM - vanilla active units, early blocks", est, "pts", direction=-1,
                      method=f"seed interval, seeds paired; early = first {EARLY_BLOCKS:.0%} of blocks (>= 1)")


def claim_sparsity(ev: Evidence, seed: int = 0) -> Claim:
    mixer, vit = _sparsity_change(ev, "mixer"), _sparsity_change(ev, "vit")
    details = [c for c in (mixer, vit) if c]
    return _row("e", "(e) SAM models activate fewer MLP units in the first blocks (MLP-Mixer)",
                "Mixer-B/16 with SAM has fewer active neurons in its first layers (a figure of the paper, no "
                "number printed); not claimed for ViT",
                f"per seed, the fraction of MLP hidden units with positive activation, averaged over the first "
                f"{EARLY_BLOCKS:.0%} of blocks (at least one); reproduced if the seed interval of SAM - vanilla "
                f"(seeds paired) lies below 0 for Mixer; not reproduced if it lies above 0; needs >= 2 seeds; "
                f"ViT is shown beside it, not judged",
                "paper: the activation-sparsity figure; ours: MLP hidden activations on training images, per seed",
                [mixer] if mixer else [], [] if mixer else [ev.why_missing("mixer", "sparsity")],
                "; ".join(c.text() + (" (ViT: not the paper's claim)" if c is vit else "") for c in details), details)


def claim_ntk(ev: Evidence, seed: int = 0) -> Claim:
    kappa, missing = {}, []
    for family in FAMILIES:
        entry = ev.get(family, "ntk_kappa")
        if entry is None:
            missing.append(ev.why_missing(family, "ntk_kappa"))
            continue
        kappa[family] = {v: _mean_interval(entry[v]) if v in entry else None for v in ("vanilla", "sam")}
        if kappa[family]["vanilla"] is None:
            missing.append(f"{LABELS[family]} vanilla NTK kernel singular or absent: no finite condition number")
    comparisons = []
    for family in ("vit", "mixer"):
        if ev.get(family, "ntk_kernel") != ev.get("resnet", "ntk_kernel"):
            missing.append(f"{LABELS[family]} and ResNet kappa of different kernels "
                           f"({ev.get(family, 'ntk_kernel')}, {ev.get('resnet', 'ntk_kernel')}): not compared")
        elif kappa.get(family, {}).get("vanilla") and kappa.get("resnet", {}).get("vanilla"):
            comparisons.append(Comparison(f"{LABELS[family]} kappa - ResNet kappa (vanilla)",
                                          _difference(kappa[family]["vanilla"], kappa["resnet"]["vanilla"]), "",
                                          method="mean over blocks; conservative bounds (intervals must not overlap)"))
    sam_effect = [Comparison(f"{ev.label(f)} kappa vanilla -> SAM (our finding)",
                             _difference(k["sam"], k["vanilla"]), "", method="SAM minus vanilla")
                  for f, k in kappa.items() if k["vanilla"] and k["sam"]]
    values = ", ".join(f"{paper.paper_name(m)} {paper.figure('table1', m, 'ntk_kappa', 'vanilla').value:g}"
                       for m in paper.REPRESENTATIVES.values())
    t1 = paper.TABLES["table1"].source
    ours = [f"{ev.label(f)} kappa ({ev.get(f, 'ntk_kernel') or 'unnamed'} kernel) {_interval_text(k['vanilla'], '')}"
            for f, k in kappa.items() if k["vanilla"]]
    return _row("f", "(f) The NTK is worse conditioned for ViT and Mixer than for ResNet",
                f"NTK condition number {values} ({t1}, one value per architecture; SAM's effect not given)",
                "kappa = mean of the per-block condition numbers with its t-interval; reproduced if the ViT and "
                "Mixer intervals both lie above ResNet's (no overlap); not reproduced if one lies below; SAM's "
                "change of kappa is reported as our finding, not judged",
                f"paper: {t1}; ours: empirical NTK on training images, diagonal blocks",
                comparisons, missing, "; ".join(ours + [c.text() for c in sam_effect]), comparisons + sam_effect)


def claim_adversarial(ev: Evidence, seed: int = 0) -> Claim:
    comparisons, missing = [], []
    for family in ("vit", "mixer"):
        c = _gain_difference(ev, family, "resnet", "adversarial_pgd", seed)
        if c:
            c.of = f"{LABELS[family]} PGD-10 gain - ResNet PGD-10 gain (adversarial training)"
            comparisons.append(c)
    if len(comparisons) < 2:
        missing.append("not measured: adversarially trained models (the demo trains with the standard objective)")
    findings = []
    for family in FAMILIES:
        for eps, entry in (ev.get(family, "pgd") or {}).items():
            g = _gain(ev, family, "pgd", entry, seed)
            g.of = f"{ev.label(family)} PGD-10 gain at eps {eps}"
            findings.append(g)
    ours = "; ".join(c.text() for c in comparisons)
    if findings:
        ours = "; ".join(filter(None, [ours, "our finding (standard training, not the paper's setting): "
                                       + "; ".join(c.text() for c in findings)]))
    source = paper.TABLES["adversarial"].source
    gains = ", ".join(f"{paper.paper_name(m)} {_signed(paper.figure('adversarial', m, 'pgd10').gain)}"
                      for m in paper.REPRESENTATIVES.values())
    return _row("g", "(g) With adversarial training, SAM raises PGD-10 accuracy more for ViT and Mixer than for ResNet",
                f"PGD-10 gains with SAM under adversarial training: {gains} points ({source})",
                "with adversarially trained models only: reproduced if the 95% intervals of (ViT PGD-10 gain - "
                "ResNet's) and (Mixer's - ResNet's) both lie above 0; not reproduced if one lies below 0; PGD on "
                "standard-trained models is shown as our finding and never decides the verdict",
                f"paper: {source}; ours: PGD-10 (L-inf, random start) on test images",
                comparisons, missing, ours, comparisons + findings)


def claim_vit_beats_resnet(ev: Evidence, seed: int = 0) -> Claim:
    vit, resnet = ev.pair("vit", "clean"), ev.pair("resnet", "clean")
    comparisons, missing = [], []
    if vit is None or resnet is None:
        missing = [ev.why_missing(f, "clean") for f, p in (("vit", vit), ("resnet", resnet)) if p is None]
    else:
        est = paired_difference(resnet[1], vit[1], seed=seed).scaled(POINTS)
        also = []
        sv, sr = _paired_seeds(ev.get("vit", "seed_accuracy")), _paired_seeds(ev.get("resnet", "seed_accuracy"))
        if sv is not None and sr is not None and len(sv[1]) >= 2 and len(sv[1]) == len(sr[1]):
            also.append(seed_interval((sv[1] - sr[1]) * POINTS))
        comparisons.append(Comparison(f"{ev.label('vit')} SAM - {ev.label('resnet')} SAM accuracy", est, "pts",
                                      method="paired bootstrap over images" + (", and seed spread" if also else ""),
                                      also=also))
    sizes = " (params: " + ", ".join(f"{LABELS[f]} {ev.get(f, 'params')}" for f in ("vit", "resnet")) + ")" \
        if ev.get("vit", "params") and ev.get("resnet", "params") else ""
    pairs = [("vit_b16", "resnet152"), ("vit_s16", "resnet50")]
    paper_text = "; ".join(f"{paper.paper_name(v)}-SAM {_table2(v).value} vs "
                           f"{paper.paper_name(r)}-SAM {_table2(r).value}" for v, r in pairs)
    return _row("title", "With SAM, ViT outperforms a ResNet of similar size (the paper's title claim)",
                f"ImageNet top-1: {paper_text} ({_table2('vit_b16').source})",
                "reproduced if the 95% interval of (SAM-trained ViT accuracy - SAM-trained ResNet accuracy), "
                "paired over the same test images (and over seeds where >= 2), lies above 0; not reproduced if "
                "it lies below 0; model sizes are shown, not matched",
                f"paper: {_table2('vit_b16').source}; ours: clean test images, paired per image",
                comparisons, missing, "; ".join(c.text() for c in comparisons) + sizes, comparisons)


CLAIMS: tuple[Callable[[Evidence, int], Claim], ...] = (
    claim_accuracy_gain, claim_gain_vs_resnet, claim_lambda_max, claim_corruption_gain, claim_data_efficiency,
    claim_sparsity, claim_ntk, claim_adversarial, claim_vit_beats_resnet)


def scoreboard(evidence: dict, seed: int = 0) -> list[Claim]:
    """One row per claim, in the order of ``CLAIMS``; ``seed`` fixes the bootstrap draws."""
    ev = Evidence(evidence)
    return [claim(ev, seed) for claim in CLAIMS]


# --- output --------------------------------------------------------------------------------

def to_json(claims: list[Claim]) -> list[dict]:
    return [c.to_json() for c in claims]


def write_json(claims: list[Claim], path: str | Path) -> Path:
    """``claims.json``: a strict-JSON list of the rows (non-finite numbers as null)."""
    return jsonfile.write_json(to_json(claims), path)


VERDICT_CSS = {REPRODUCED: "good", NOT_REPRODUCED: "bad", INCONCLUSIVE: ""}


def html_table(claims: list[Claim]) -> str:
    """The scoreboard as an HTML table (``vitsam.report.html.table``), verdicts coloured."""
    rows = [[c.claim, c.paper, c.ours, _interval_cell(c.interval),
             (c.verdict, VERDICT_CSS[c.verdict]) if VERDICT_CSS[c.verdict] else c.verdict,
             c.reason, c.evidence, c.rule] for c in claims]
    return html.table(["Claim", "Paper", "Ours", "Deciding 95% interval", "Verdict", "Why", "Evidence", "Rule"], rows,
                      caption="Claims of the paper: verdicts computed from the numbers by the stated rule")


def _interval_cell(interval: dict | None) -> str:
    if interval is None:
        return "-"
    est = Estimate(interval["value"], interval["low"], interval["high"], interval["n"])
    return f"{interval['of']}: {_interval_text(est, interval['units'])}"
