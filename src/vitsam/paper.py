"""The paper's published figures, each tied to the table it comes from.

Chen, Hsieh, Gong, "When Vision Transformers Outperform ResNets without Pre-training or
Strong Data Augmentations" (ICLR 2022, arXiv 2106.01548). Every report table shaped like
one of the paper's shows these beside ours, and every claim of the scoreboard
(``vitsam.claims``) takes its "paper" column from here, so no number is typed twice.

    from vitsam import paper
    f = paper.figure("table2", "vit_b16", "imagenet")        # SAM model: 79.9, gain +5.3
    f.value, f.gain, f.source                                # 79.9, 5.3, "the paper's Table 2"
    paper.figure("table1", "mixer_b16", "lambda_max", "vanilla").value   # 1644.4

A figure is addressed by (table, model, column, variant):

- ``table``: a key of ``TABLES`` (``table1``, ``table2``, ``hessian_blocks``,
  ``data_efficiency``, ``adversarial``, ``contrastive``);
- ``model``: a vitsam registry name (``vit_b16``, ``mixer_b16``, ``resnet152``, ...);
- ``column``: a key of that table's ``columns`` (documented there);
- ``variant``: ``vanilla`` or ``sam`` (``data_efficiency`` adds ``aug`` and ``sam_aug``).

Where the paper prints a SAM figure with its gain in brackets (Table 2, the adversarial
table), the vanilla figure is not printed; it is kept here as ``derived`` (the SAM figure
minus the printed gain) so a report can still show "vanilla -> SAM".

Table numbers: Table 1 (geometry) and Table 2 (SAM models) are the paper's own numbers,
confirmed by two independent public write-ups that cite them. The other tables are named
by their content (``number`` is None) because no stored copy of the paper's full text was
available to confirm their numbers; ``docs/paper.md`` lists what is known.
"""
from __future__ import annotations

from dataclasses import dataclass

from vitsam.errors import VitsamError, unknown_choice

VARIANTS = ("vanilla", "sam", "aug", "sam_aug")


@dataclass(frozen=True)
class Table:
    key: str
    number: int | None             # the paper's table number, where confirmed
    title: str
    columns: dict[str, str]        # column key -> what it holds (units)

    @property
    def source(self) -> str:
        """How a report cell cites it."""
        return f"the paper's Table {self.number}" if self.number else f"the paper's table \"{self.title}\""


@dataclass(frozen=True)
class Figure:
    table: Table
    model: str                     # vitsam registry name
    column: str
    variant: str
    value: float
    gain: float | None = None      # the bracketed gain over vanilla printed beside a SAM figure
    derived: bool = False          # True: not printed; SAM figure minus its printed gain

    @property
    def source(self) -> str:
        return self.table.source + (" (SAM figure minus its printed gain)" if self.derived else "")

    def to_json(self) -> dict:
        return {"table": self.table.key, "table_number": self.table.number, "table_title": self.table.title,
                "model": self.model, "column": self.column, "variant": self.variant, "value": self.value,
                "gain": self.gain, "derived": self.derived, "source": self.source}


PAPER_NAMES = {
    "resnet50": "ResNet-50", "resnet101": "ResNet-101", "resnet152": "ResNet-152",
    "resnet50x2": "ResNet-50x2", "resnet101x2": "ResNet-101x2", "resnet152x2": "ResNet-152x2",
    "vit_s32": "ViT-S/32", "vit_s16": "ViT-S/16", "vit_s14": "ViT-S/14", "vit_s8": "ViT-S/8",
    "vit_b32": "ViT-B/32", "vit_b16": "ViT-B/16",
    "mixer_s32": "Mixer-S/32", "mixer_s16": "Mixer-S/16", "mixer_s8": "Mixer-S/8",
    "mixer_b32": "Mixer-B/32", "mixer_b16": "Mixer-B/16", "mixer_b8": "Mixer-B/8",
}

_ACCURACY_COLUMNS = {
    "imagenet": "ImageNet top-1 (%)",
    "real": "ImageNet ReaL top-1 (%)",
    "v2": "ImageNet-V2 top-1 (%)",
    "imagenet_r": "ImageNet-R top-1 (%)",
    "imagenet_c": "ImageNet-C top-1 (%), mean over corruptions and severities",
}
_SIZE_COLUMNS = {"params_m": "#params (millions)", "throughput": "images / s / core on TPUv3"}

TABLES = {t.key: t for t in (
    Table("table1", 1, "ResNet-152, ViT-B/16 and Mixer-B/16: geometry, accuracy and robustness, vanilla and SAM",
          {"params_m": _SIZE_COLUMNS["params_m"],
           "ntk_kappa": "NTK condition number (mean over diagonal sub-blocks, Appendix E); one value per "
                        "architecture, printed for the vanilla column only",
           "lambda_max": "Hessian dominant eigenvalue of the training loss",
           "imagenet": _ACCURACY_COLUMNS["imagenet"], "imagenet_c": _ACCURACY_COLUMNS["imagenet_c"]}),
    Table("table2", 2, "Models trained from scratch on ImageNet with SAM, gain over vanilla in brackets "
                       "(Inception-style preprocessing only)",
          {**_SIZE_COLUMNS, **_ACCURACY_COLUMNS}),
    Table("hessian_blocks", None, "Dominant eigenvalue of the Hessian's diagonal blocks, weight norm and "
                                  "post-activation norms (ViT-B/16, Mixer-B/16)",
          {"embedding": "lambda_max, patch-embedding block",
           "attention": "lambda_max, all MSA weights (ViT; paper column 'MSA / Token MLP')",
           "token_mixing": "lambda_max, all token-mixing MLP weights (Mixer; paper column 'MSA / Token MLP')",
           "mlp": "lambda_max, all MLP weights (ViT; paper column 'MLP / Channel MLP')",
           "channel_mixing": "lambda_max, all channel-mixing MLP weights (Mixer; paper column 'MLP / Channel MLP')",
           "block1": "lambda_max, all weights of block 1", "block6": "lambda_max, block 6",
           "block12": "lambda_max, block 12", "whole": "lambda_max, the whole model (= Table 1)",
           "weight_norm": "||w||_2 of all weights", "a1": "||a_1||_2, output of block 1",
           "a6": "||a_6||_2", "a12": "||a_12||_2"}),
    Table("data_efficiency", None, "SAM vs. strong augmentations on ImageNet and its random subsets",
          {"full": "top-1 (%), all 1,281,167 training images", "1/2": "top-1 (%), 640,583 images",
           "1/4": "top-1 (%), 320,291 images", "1/10": "top-1 (%), 128,116 images"}),
    Table("adversarial", None, "Adversarially trained models with SAM, gain over adversarial training "
                               "without SAM in brackets",
          {**_SIZE_COLUMNS, **_ACCURACY_COLUMNS,
           "pgd10": "top-1 (%) under a 10-step PGD attack"}),
    Table("contrastive", None, "Contrastive pre-training then fine-tuning, with and without SAM (ablation text)",
          {"imagenet": _ACCURACY_COLUMNS["imagenet"]}),
)}

# Training-set sizes of the data-efficiency table: column -> (fraction, #images)
DATA_FRACTIONS = {"full": (1.0, 1_281_167), "1/2": (0.5, 640_583), "1/4": (0.25, 320_291), "1/10": (0.1, 128_116)}

# --- Table 1: model -> (params M, NTK kappa, (lambda_max vanilla, SAM), (ImageNet ...), (ImageNet-C ...))
_TABLE1 = {
    "resnet152": (60, 2801.6, (179.8, 42.0), (78.5, 79.3), (50.0, 52.2)),
    "vit_b16": (87, 4205.3, (738.8, 20.9), (74.6, 79.9), (46.6, 56.5)),
    "mixer_b16": (59, 14468.0, (1644.4, 22.5), (66.4, 77.4), (33.8, 48.8)),
}

# --- Table 2: model -> (params M, throughput, then (SAM figure, gain) for
#     ImageNet, ReaL, V2, ImageNet-R, ImageNet-C)
_TABLE2 = {
    "resnet50": (25, 2161, (76.7, 0.7), (83.1, 0.7), (64.6, 1.0), (23.3, 1.1), (46.5, 1.9)),
    "resnet101": (44, 1334, (78.6, 0.8), (84.8, 0.9), (66.7, 1.4), (25.9, 1.5), (51.3, 2.8)),
    "resnet152": (60, 935, (79.3, 0.8), (84.9, 0.7), (67.3, 1.0), (25.7, 0.4), (52.2, 2.2)),
    "resnet50x2": (98, 891, (79.6, 1.5), (85.3, 1.6), (67.5, 1.7), (26.0, 2.9), (50.7, 3.9)),
    "resnet101x2": (173, 519, (80.9, 2.4), (86.4, 2.4), (69.1, 2.8), (27.8, 3.2), (54.0, 4.7)),
    "resnet152x2": (236, 356, (81.1, 1.8), (86.4, 1.9), (69.6, 2.3), (28.1, 2.8), (55.0, 4.2)),
    "vit_s32": (23, 6888, (70.5, 2.1), (77.5, 2.3), (56.9, 2.6), (21.4, 2.4), (46.2, 2.9)),
    "vit_s16": (22, 2043, (78.1, 3.7), (84.1, 3.7), (65.6, 3.9), (24.7, 4.7), (53.0, 6.5)),
    "vit_s14": (22, 1234, (78.8, 4.0), (84.8, 4.5), (67.2, 5.2), (24.4, 4.7), (54.2, 7.0)),
    "vit_s8": (22, 333, (81.3, 5.3), (86.7, 5.5), (70.4, 6.2), (25.3, 6.1), (55.6, 8.5)),
    "vit_b32": (88, 2805, (73.6, 4.1), (80.3, 5.1), (60.0, 4.7), (24.0, 4.1), (50.7, 6.7)),
    "vit_b16": (87, 863, (79.9, 5.3), (85.2, 5.4), (67.5, 6.2), (26.4, 6.3), (56.5, 9.9)),
    "mixer_s32": (19, 11401, (66.7, 2.8), (73.8, 3.5), (52.4, 2.9), (18.6, 2.7), (39.3, 4.1)),
    "mixer_s16": (18, 4005, (72.9, 4.1), (79.8, 4.7), (58.9, 4.1), (20.1, 4.2), (42.0, 6.4)),
    "mixer_s8": (20, 1498, (75.9, 5.7), (82.5, 6.3), (62.3, 6.2), (20.5, 5.1), (42.4, 7.8)),
    # ImageNet-C gain printed "(12.4)" without its sign in the source; every other gain is positive
    "mixer_b32": (60, 4209, (72.4, 9.9), (79.0, 10.9), (58.0, 10.4), (22.8, 8.2), (46.2, 12.4)),
    "mixer_b16": (59, 1390, (77.4, 11.0), (83.5, 11.4), (63.9, 13.1), (24.7, 10.2), (48.8, 15.0)),
    "mixer_b8": (64, 466, (79.0, 10.4), (84.4, 10.1), (65.5, 11.6), (23.5, 9.2), (48.9, 16.9)),
}

# --- per-block Hessian table: (model, variant) -> values in the order of _BLOCK_COLUMNS
_BLOCK_COLUMNS = ("embedding", "mixing", "mlp", "block1", "block6", "block12", "whole",
                  "weight_norm", "a1", "a6", "a12")
_HESSIAN_BLOCKS = {
    ("vit_b16", "vanilla"): (300.4, 179.8, 281.4, 44.4, 32.4, 26.9, 738.8, 269.3, 104.9, 104.3, 138.1),
    ("vit_b16", "sam"): (3.8, 8.5, 9.6, 1.7, 1.7, 1.5, 20.9, 353.8, 117.0, 120.3, 97.2),
    ("mixer_b16", "vanilla"): (1042.3, 95.8, 417.9, 239.3, 41.2, 5.1, 1644.4, 197.6, 96.7, 135.1, 74.9),
    ("mixer_b16", "sam"): (18.2, 1.4, 9.5, 4.0, 1.1, 0.3, 22.5, 389.9, 110.9, 176.0, 216.1),
}
# the paper's shared columns under vitsam's parameter-group names, per family
_GROUP_NAMES = {"vit": {"mixing": "attention", "mlp": "mlp"},
                "mixer": {"mixing": "token_mixing", "mlp": "channel_mixing"}}

# --- data-efficiency table: model -> column -> (vanilla, SAM, AUG, SAM + AUG)
_DATA_EFFICIENCY = {
    "resnet152": {"full": (78.5, 79.3, 78.8, 78.9), "1/2": (74.2, 75.6, 75.1, 75.5),
                  "1/4": (68.0, 70.3, 70.2, 70.6), "1/10": (54.6, 57.1, 59.2, 59.5)},
    "vit_b16": {"full": (74.6, 79.9, 79.6, 81.5), "1/2": (64.9, 75.4, 73.1, 75.8),
                "1/4": (52.4, 66.8, 63.2, 65.6), "1/10": (32.8, 46.1, 38.5, 45.7)},
    "mixer_b16": {"full": (66.4, 77.4, 76.5, 78.1), "1/2": (53.9, 71.0, 70.4, 73.1),
                  "1/4": (37.2, 62.8, 61.0, 65.8), "1/10": (21.0, 43.5, 43.0, 51.0)},
}

# --- adversarial table: model -> (params M, throughput, then (SAM figure, gain) for
#     ImageNet, ReaL, V2, PGD-10, ImageNet-R, ImageNet-C)
_ADVERSARIAL = {
    "resnet50": (25, 2161, (70.1, -0.7), (77.9, -0.3), (56.6, -0.8), (54.1, 0.9), (27.0, 0.9), (42.7, -0.1)),
    "resnet101": (44, 1334, (73.6, -0.4), (81.0, 0.1), (60.4, -0.6), (58.8, 1.4), (29.5, 0.6), (46.9, 0.3)),
    "resnet152": (60, 935, (75.1, -0.4), (82.3, 0.2), (62.2, -0.4), (61.0, 1.8), (30.8, 1.4), (49.1, 0.6)),
    "vit_s16": (22, 2043, (73.2, 1.2), (80.7, 1.7), (60.2, 1.4), (58.0, 5.2), (28.4, 2.4), (47.5, 1.6)),
    "vit_b32": (88, 2805, (69.9, 3.0), (76.9, 3.4), (55.7, 2.5), (54.0, 6.4), (26.0, 3.0), (46.4, 3.0)),
    "vit_b16": (87, 863, (76.7, 3.9), (82.9, 4.1), (63.6, 4.3), (62.0, 7.7), (30.0, 4.9), (51.4, 5.0)),
    "mixer_s16": (18, 4005, (67.1, 2.2), (74.5, 2.3), (52.8, 2.5), (50.1, 4.1), (22.9, 2.6), (37.9, 2.5)),
    "mixer_b32": (60, 4209, (69.3, 9.1), (76.4, 10.2), (54.7, 9.4), (54.5, 13.9), (26.3, 8.0), (43.7, 8.8)),
    "mixer_b16": (59, 1390, (73.9, 11.1), (80.8, 11.8), (60.2, 11.9), (59.8, 17.3), (29.0, 10.5), (45.9, 12.5)),
}

# --- contrastive learning (stated in the ablation text): model -> (vanilla, SAM) ImageNet top-1
_CONTRASTIVE = {"vit_s16": (77.0, 78.1), "vit_b16": (77.4, 80.0)}


def family_of(model: str) -> str:
    """``vit`` / ``mixer`` / ``resnet`` from a registry name (paper models and tiny variants)."""
    for family in ("vit", "mixer", "resnet"):
        if model.startswith(family):
            return family
    raise VitsamError(f"cannot tell the family of model {model!r}: expected a name starting with vit, mixer or resnet")


def _with_gains(table: Table, model: str, columns: tuple[str, ...], cells) -> list[Figure]:
    """SAM figures with their printed gains, and the vanilla figures they imply."""
    out = []
    for column, (value, gain) in zip(columns, cells):
        out.append(Figure(table, model, column, "sam", value, gain=gain))
        out.append(Figure(table, model, column, "vanilla", round(value - gain, 1), derived=True))
    return out


def _sizes(table: Table, model: str, params: float, throughput: float) -> list[Figure]:
    """#params and throughput: one value per architecture, the same for vanilla and SAM."""
    return [Figure(table, model, column, variant, value)
            for column, value in (("params_m", params), ("throughput", throughput)) for variant in ("vanilla", "sam")]


def _build() -> tuple[Figure, ...]:
    figures: list[Figure] = []
    t1 = TABLES["table1"]
    for model, (params, kappa, *pairs) in _TABLE1.items():
        figures += [Figure(t1, model, "params_m", v, params) for v in ("vanilla", "sam")]
        figures.append(Figure(t1, model, "ntk_kappa", "vanilla", kappa))
        for column, (vanilla, sam) in zip(("lambda_max", "imagenet", "imagenet_c"), pairs):
            figures += [Figure(t1, model, column, "vanilla", vanilla), Figure(t1, model, column, "sam", sam)]
    for key, rows, columns in (("table2", _TABLE2, tuple(_ACCURACY_COLUMNS)),
                               ("adversarial", _ADVERSARIAL, ("imagenet", "real", "v2", "pgd10", "imagenet_r",
                                                              "imagenet_c"))):
        for model, (params, throughput, *cells) in rows.items():
            figures += _sizes(TABLES[key], model, params, throughput)
            figures += _with_gains(TABLES[key], model, columns, cells)
    blocks = TABLES["hessian_blocks"]
    for (model, variant), values in _HESSIAN_BLOCKS.items():
        names = _GROUP_NAMES[family_of(model)]
        figures += [Figure(blocks, model, names.get(column, column), variant, value)
                    for column, value in zip(_BLOCK_COLUMNS, values)]
    for model, columns in _DATA_EFFICIENCY.items():
        figures += [Figure(TABLES["data_efficiency"], model, column, variant, value)
                    for column, values in columns.items() for variant, value in zip(VARIANTS, values)]
    for model, (vanilla, sam) in _CONTRASTIVE.items():
        figures += [Figure(TABLES["contrastive"], model, "imagenet", "vanilla", vanilla),
                    Figure(TABLES["contrastive"], model, "imagenet", "sam", sam)]
    return tuple(figures)


FIGURES: tuple[Figure, ...] = _build()
_INDEX = {(f.table.key, f.model, f.column, f.variant): f for f in FIGURES}


def figures(table: str | None = None, model: str | None = None, column: str | None = None,
            variant: str | None = None) -> list[Figure]:
    """Every figure matching the given keys (None matches anything), in table order."""
    wanted = (table, model, column, variant)
    return [f for f in FIGURES
            if all(w is None or w == have for w, have in zip(wanted, (f.table.key, f.model, f.column, f.variant)))]


def figure(table: str, model: str, column: str, variant: str = "sam") -> Figure:
    """The paper's figure for (table, model, column, variant); a clear error names the
    valid choices at the first key that does not match."""
    if table not in TABLES:
        raise unknown_choice("paper table", table, TABLES)
    models = {f.model for f in figures(table)}
    if model not in models:
        raise unknown_choice(f"model in {TABLES[table].source}", model, models)
    columns = {f.column for f in figures(table, model)}
    if column not in columns:
        raise unknown_choice(f"column of {PAPER_NAMES[model]} in {TABLES[table].source}", column, columns)
    found = _INDEX.get((table, model, column, variant))
    if found is None:
        variants = {f.variant for f in figures(table, model, column)}
        raise unknown_choice(f"variant of {PAPER_NAMES[model]} {column} in {TABLES[table].source}",
                             variant, variants)
    return found


def sam_gain(table: str, model: str, column: str, over: str = "vanilla") -> float:
    """SAM figure minus the ``over`` figure (points), rounded to the paper's one decimal."""
    return round(figure(table, model, column, "sam").value - figure(table, model, column, over).value, 1)


def ratio(table: str, model: str, column: str) -> float:
    """vanilla / SAM, e.g. how many times SAM lowers lambda_max (Table 1)."""
    return figure(table, model, column, "vanilla").value / figure(table, model, column, "sam").value


def paper_name(model: str) -> str:
    if model not in PAPER_NAMES:
        raise unknown_choice("paper model", model, PAPER_NAMES)
    return PAPER_NAMES[model]


# The family representatives the paper compares in Table 1 and the geometry claims.
REPRESENTATIVES = {"vit": "vit_b16", "mixer": "mixer_b16", "resnet": "resnet152"}
