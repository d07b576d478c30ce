"""The paper's figures: every number against the original tables, and the tables against each other."""
import json
import os
import re
from pathlib import Path

import pytest

from vitsam import paper
from vitsam.errors import VitsamError
from vitsam.models import list_models

# The original documents live beside the checkout (issue 13: "../shared/seeds/");
# VITSAM_PAPER_SEEDS points elsewhere.
SEEDS = Path(os.environ.get("VITSAM_PAPER_SEEDS", Path(__file__).resolve().parents[2] / "shared" / "seeds"))
NAME_TO_MODEL = {name: model for model, name in paper.PAPER_NAMES.items()}
TABLE1_ROWS = {"#Params": "params_m", "NTK": "ntk_kappa", "Hessian": "lambda_max",
               "ImageNet (%)": "imagenet", "ImageNet-C (%)": "imagenet_c"}
GAIN_CELL = re.compile(r"^([\d.]+) \(([+-]?)([\d.]+)\)$")   # "79.9 (+5.3)"; one source cell lacks its "+"


def seed_tables_text() -> str:
    files = sorted(SEEDS.glob("*.txt")) if SEEDS.is_dir() else []
    for path in files:
        text = path.read_text(encoding="utf-8")
        if "Mixer-B/16-SAM" in text and "PGD-10" in text:
            return text
    pytest.skip(f"the paper's original tables are not at {SEEDS} (set VITSAM_PAPER_SEEDS)")


def cells_of(line: str) -> list[str]:
    return [c for c in (re.sub(r"<[^>]+>", "", cell).strip() for cell in line.split("\t")) if c]


def number(cell: str) -> float:
    return float(cell.rstrip("M").replace(",", ""))


def parse_seed_tables(text: str) -> tuple[dict, dict]:
    """(table, model, column, variant) -> value, and -> printed gain, for every number in the
    source's tables (Table 1 appears twice there; both copies must agree)."""
    values, gains = {}, {}

    def put(key, value, gain=None):
        assert values.setdefault(key, value) == value, f"two different values for {key}"
        if gain is not None:
            gains[key] = gain

    table1_models, gain_table = None, None
    for line in text.splitlines():
        cells = cells_of(line)
        if not cells:
            continue
        head = cells[0]
        if line.startswith("\t") and all(c.removesuffix("-SAM") in NAME_TO_MODEL for c in cells):
            table1_models = [NAME_TO_MODEL[c] for c in cells if not c.endswith("-SAM")]
        elif head == "Model" and "#params" in cells:
            gain_table = "adversarial" if "PGD-10" in cells else "table2"
            columns = ("imagenet", "real", "v2", "pgd10", "imagenet_r", "imagenet_c") \
                if gain_table == "adversarial" else ("imagenet", "real", "v2", "imagenet_r", "imagenet_c")
        elif any(head.startswith(prefix) for prefix in TABLE1_ROWS):
            column = next(col for prefix, col in TABLE1_ROWS.items() if head.startswith(prefix))
            numbers = [number(c) for c in cells[1:]]
            if len(numbers) == 3:          # one value per architecture (#params, NTK kappa)
                for model, value in zip(table1_models, numbers):
                    for variant in (("vanilla", "sam") if column == "params_m" else ("vanilla",)):
                        put(("table1", model, column, variant), value)
            else:
                assert len(numbers) == 6, line
                for i, model in enumerate(table1_models):
                    put(("table1", model, column, "vanilla"), numbers[2 * i])
                    put(("table1", model, column, "sam"), numbers[2 * i + 1])
        elif head.endswith("-SAM") and head.removesuffix("-SAM") in NAME_TO_MODEL and len(cells) == 3 + len(columns):
            model = NAME_TO_MODEL[head.removesuffix("-SAM")]
            for column, cell in (("params_m", cells[1]), ("throughput", cells[2])):
                put((gain_table, model, column, "vanilla"), number(cell))
                put((gain_table, model, column, "sam"), number(cell))
            for column, cell in zip(columns, cells[3:]):
                value, sign, gain = GAIN_CELL.match(cell).groups()
                put((gain_table, model, column, "sam"), float(value), float(sign + gain))
        elif head.removesuffix("-SAM") in NAME_TO_MODEL and len(cells) == 12:
            model, variant = NAME_TO_MODEL[head.removesuffix("-SAM")], "sam" if head.endswith("-SAM") else "vanilla"
            group = {"vit": ("attention", "mlp"), "mixer": ("token_mixing", "channel_mixing")}[paper.family_of(model)]
            columns_b = ("embedding", *group, "block1", "block6", "block12", "whole", "weight_norm", "a1", "a6", "a12")
            for column, cell in zip(columns_b, cells[1:]):
                put(("hessian_blocks", model, column, variant), number(cell))
        elif len(cells) == 14 and re.fullmatch(r"[\d,]+", cells[1]):
            images = int(cells[1].replace(",", ""))
            fraction = next(key for key, (_, n) in paper.DATA_FRACTIONS.items() if n == images)
            for i, model in enumerate(("resnet152", "vit_b16", "mixer_b16")):
                for variant, cell in zip(paper.VARIANTS, cells[2 + 4 * i: 6 + 4 * i]):
                    put(("data_efficiency", model, fraction, variant), number(cell))
    contrastive = next(line for line in text.splitlines() if "Contrastive learning" in line)
    for name, vanilla, sam in re.findall(r"(ViT-[SB]/\d+): \S+ ([\d.]+)% \S+ ([\d.]+)%", contrastive):
        put(("contrastive", NAME_TO_MODEL[name], "imagenet", "vanilla"), float(vanilla))
        put(("contrastive", NAME_TO_MODEL[name], "imagenet", "sam"), float(sam))
    return values, gains


def key(f: paper.Figure) -> tuple:
    return (f.table.key, f.model, f.column, f.variant)


def test_every_printed_number_matches_the_original_tables_and_none_is_missing():
    values, gains = parse_seed_tables(seed_tables_text())
    ours = {key(f): f.value for f in paper.FIGURES if not f.derived}
    assert set(ours) == set(values)                        # nothing left out, nothing invented
    assert {k: v for k, v in ours.items() if values[k] != v} == {}
    ours_gains = {key(f): f.gain for f in paper.FIGURES if f.gain is not None}
    assert ours_gains == gains
    # the parser really read the tables: Table 1 (27), Table 2 (18 x 9), per-block (4 x 11),
    # data efficiency (48), adversarial (9 x 10), contrastive (4)
    assert len(values) == 27 + 162 + 44 + 48 + 90 + 4


def test_table2_gains_equal_sam_minus_the_vanilla_figures_printed_elsewhere():
    for model in ("resnet152", "vit_b16", "mixer_b16"):
        for column in ("imagenet", "imagenet_c"):
            sam = paper.figure("table2", model, column)
            assert sam.value == paper.figure("table1", model, column, "sam").value
            assert sam.gain == paper.sam_gain("table1", model, column)
            assert paper.figure("table2", model, column, "vanilla").value == \
                paper.figure("table1", model, column, "vanilla").value
        for variant in ("vanilla", "sam"):
            assert paper.figure("data_efficiency", model, "full", variant).value == \
                paper.figure("table1", model, "imagenet", variant).value
        assert paper.figure("table2", model, "params_m").value == paper.figure("table1", model, "params_m").value


def test_per_block_whole_equals_table1_lambda_max():
    for model in ("vit_b16", "mixer_b16"):
        for variant in ("vanilla", "sam"):
            assert paper.figure("hessian_blocks", model, "whole", variant).value == \
                paper.figure("table1", model, "lambda_max", variant).value


def test_adversarial_table_repeats_table2_sizes_and_its_derived_baseline_adds_up():
    for f in paper.figures("adversarial", column="throughput"):
        assert f.value == paper.figure("table2", f.model, "throughput", f.variant).value
    pgd = paper.figure("adversarial", "vit_b16", "pgd10")
    assert (pgd.value, pgd.gain) == (62.0, 7.7)
    assert paper.figure("adversarial", "vit_b16", "pgd10", "vanilla").value == 54.3
    assert paper.figure("adversarial", "vit_b16", "pgd10", "vanilla").derived


def test_every_model_is_a_registered_vitsam_model():
    registered = set(list_models())
    assert {f.model for f in paper.FIGURES} <= registered
    assert set(paper.PAPER_NAMES) <= registered
    assert set(paper.REPRESENTATIVES.values()) <= registered


def test_lookup_errors_name_the_valid_choices():
    with pytest.raises(VitsamError, match="valid choices: adversarial, contrastive"):
        paper.figure("table9", "vit_b16", "imagenet")
    with pytest.raises(VitsamError, match="mixer_b16, resnet152, vit_b16"):
        paper.figure("table1", "vit_s16", "imagenet")
    with pytest.raises(VitsamError, match="imagenet_c"):
        paper.figure("table2", "vit_s16", "pgd10")
    with pytest.raises(VitsamError, match="valid choices: vanilla"):
        paper.figure("table1", "vit_b16", "ntk_kappa", "sam")       # printed for vanilla only


def test_sources_cite_numbered_tables_by_number_and_others_by_title():
    assert paper.figure("table1", "vit_b16", "lambda_max").source == "the paper's Table 1"
    assert "SAM vs. strong augmentations" in paper.figure("data_efficiency", "vit_b16", "1/10").source
    assert "minus its printed gain" in paper.figure("table2", "vit_s16", "imagenet", "vanilla").source
    assert paper.ratio("table1", "vit_b16", "lambda_max") == pytest.approx(738.8 / 20.9)


def test_figures_serialize_to_strict_json():
    text = json.dumps([f.to_json() for f in paper.FIGURES], allow_nan=False)
    assert json.loads(text)[0]["source"].startswith("the paper's")
