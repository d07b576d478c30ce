"""The report's geometry tables and captions from hand-made analyzer results: the
numbers, spreads, kernel names and convergence marks they must show."""
import json
from pathlib import Path

import pytest

from vitsam.analysis.report import (AnalyzedRun, Family, block_table, sparsity_caption, table1,
                                    density_caption, perturbed_caption)


def run(label, sam, lam, se, converged=True, kappa=(120.0, 7.5), sparsity=(0.5, 0.4)):
    results = {
        "hessian": {"lambda_max": lam, "converged": converged, "lambda_min": -1.5, "lambda_min_converged": False,
                    "num_examples": 512, "spread": {"subsets": 4, "subset_size": 128,
                                                     "lambda_max": {"stderr": se}},
                    "density": {"nodes": [[0.0, lam]], "weights": [[0.9, 0.1]], "steps": 80, "vectors": 3},
                    "blocks": {"lambda_max": {"embedding": 3.0, "attention": 2.0, "mlp": 1.0, "block1": 4.0,
                                              "block2": 5.0, "whole": lam},
                               "converged": {"embedding": True, "attention": False, "mlp": True, "block1": True,
                                             "block2": True},
                               "weight_norm": 10.0, "activation_norm": {"a1": 1.0, "a2": 2.0}, "num_blocks": 2}},
        "ntk": {"blocks": 16, "block_size": 16, "trace": {"kappa": kappa[0], "kappa_stderr": kappa[1]},
                "full": {"skipped": "too big"}},
        "perturbed": {"sigma_scale": "filter", "perturbed": []},
        "sparsity": {"per_block": {"mlp": list(sparsity)}},
    }
    return AnalyzedRun(label, Path(label), "vit_tiny", sam, results, 0.8, 1000)


def families_of(runs):
    """One family of the vanilla and the SAM run, as the geometry section builds it."""
    return [Family(runs[0].model_name, {"sam" if r.sam else "vanilla": r for r in runs})]


def test_table1_shows_spreads_kernels_and_convergence():
    families = families_of([run("ViT", False, 24.96, 0.61), run("ViT-SAM", True, 10.1, 0.3, converged=False)])
    page = table1(families)
    assert "24.96 \u00b1 0.61 \u2192 10.1 \u00b1 0.3*" in page  # the unconverged SAM value is marked
    assert "trace kernel" in page and "120 \u00b1 7.5" in page
    assert "full kernel" in page and "skipped" in page
    assert "16 blocks of 16 images" in page and "4 disjoint subsets of 128" in page
    assert "-1.5*" in page  # lambda_min, not converged


def test_block_table_marks_unconverged_blocks():
    page = block_table([run("ViT", False, 24.96, 0.61)])
    assert "2*" in page and "3</td>" in page and "24.96" in page


def test_captions_follow_the_numbers():
    sparser = families_of([run("ViT", False, 1.0, 0.1, sparsity=(0.50, 0.40)),
                           run("ViT-SAM", True, 1.0, 0.1, sparsity=(0.42, 0.40))])
    assert "50.0% active units after vanilla training and 42.0% after SAM (fewer with SAM)" in sparsity_caption(sparser)
    denser = families_of([run("ViT", False, 1.0, 0.1, sparsity=(0.40, 0.40)),
                          run("ViT-SAM", True, 1.0, 0.1, sparsity=(0.45, 0.40))])
    assert "(more with SAM)" in sparsity_caption(denser)
    assert "3 probe vectors x 80 Lanczos steps" in density_caption(sparser)
    assert "filter's RMS" in perturbed_caption(sparser)


def test_paper_column_and_rows_sit_beside_ours():
    families = families_of([run("ViT", False, 24.96, 0.61), run("ViT-SAM", True, 10.1, 0.3)])
    page = table1(families)
    assert "paper: ViT-B/16" in page and "738.8 \u2192 20.9" in page and "4205.3" in page and "87M" in page
    rows = block_table([run("ViT", False, 24.96, 0.61)])
    assert "paper: ViT-B/16-SAM" in rows and "353.8" in rows and "paper: Mixer" not in rows


FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed (make data)")
def test_report_reads_the_protocols_results_on_training_and_held_out_images(tmp_path):
    from vitsam import presets
    from vitsam.evaluators.protocol import measure
    from vitsam.report.build import build_report
    from vitsam.train.loop import train

    tiny = {"examples": 24, "subsets": 2, "max_steps": 6, "density_steps": 6, "density_vectors": 1,
            "trace_samples": 0, "block_max_steps": 3}
    runs = []
    for rho in (0.0, 0.1):
        cfg = presets.resolve("smoke", None, ["train.stop_after_steps=3", f"sam.rho={rho}", "data.val_fraction=0.2"])
        runs.append(train(cfg, tmp_path / f"rho{rho}"))
        records = measure(runs[-1], [("hessian", tiny), ("hessian", {**tiny, "split": "val", "blocks": False}),
                                     ("sparsity", {"examples": 16})], log=lambda s: None)
        assert [r["options"]["split"] for r in records] == ["train", "val", "train"]
    out = build_report(runs, tmp_path / "report.html", sections=("geometry",), evaluate=False, log=lambda s: None)
    page = out.read_text()
    claims = {row["claim"][:3]: row for row in json.loads((tmp_path / "claims.json").read_text())}
    assert "Hessian \u03bb_max (held-out images)" in page and "on 24 images" in page
    for record in [measure(r, [("hessian", {**tiny, "split": "val", "blocks": False})], log=lambda s: None)[0]
                   for r in runs]:
        assert f"{record['lambda_max']:.4g}" in page  # the held-out value, reused from the cache
    assert "paper: ViT-B/16" in page and "active units after vanilla training" in page
    assert "held-out-image lambda_max" in claims["(b)"]["ours"]  # the claims read the same results
    figures, tables = page_contents(page)
    assert len(figures) >= 2 and all(png.startswith(b"\x89PNG") and len(png) > 1000 for png in figures)
    assert len(tables) >= 4 and all(len(rows) >= 2 and all(rows) for rows in tables)  # a header and data rows


def page_contents(page: str) -> tuple[list[bytes], list[list[list[str]]]]:
    """The page's inline figures (decoded PNG bytes) and tables (rows of cell texts)."""
    import base64
    from html.parser import HTMLParser

    class Reader(HTMLParser):
        def __init__(self):
            super().__init__()
            self.figures, self.tables, self.cell = [], [], None

        def handle_starttag(self, tag, attrs):
            attrs = dict(attrs)
            if tag == "img":
                self.figures.append(base64.b64decode(attrs["src"].split("base64,", 1)[1]))
            elif tag == "table":
                self.tables.append([])
            elif tag == "tr":
                self.tables[-1].append([])
            elif tag in ("td", "th"):
                self.cell = ""

        def handle_endtag(self, tag):
            if tag in ("td", "th"):
                self.tables[-1][-1].append(self.cell.strip())
                self.cell = None

        def handle_data(self, data):
            if self.cell is not None:
                self.cell += data

    reader = Reader()
    reader.feed(page)
    return reader.figures, reader.tables


def test_main_pairs_are_at_the_fraction_the_families_share():
    from types import SimpleNamespace

    from vitsam.report.build import main_pairs

    def pair(family, fraction, seed=0):
        cfg = SimpleNamespace(train=SimpleNamespace(seed=seed, objective="classification"),
                              data=SimpleNamespace(subset_seed=seed))
        run = SimpleNamespace(fraction=fraction, cfg=cfg)
        return SimpleNamespace(family=family, vanilla=run, sam=run)

    pairs = [pair("vit", 0.005), pair("vit", 0.01), pair("vit", 0.02), pair("mixer", 0.01), pair("resnet", 0.01)]
    report = SimpleNamespace(pairs=pairs)
    assert [p.vanilla.fraction for p in main_pairs(report, "vit")] == [0.01]   # not the largest, 0.02
    alone = SimpleNamespace(pairs=[pair("vit", 0.5, 1), pair("vit", 0.5, 0), pair("vit", 1.0)])
    assert [p.vanilla.cfg.train.seed for p in main_pairs(alone, "vit")] == [0, 1]  # most pairs, seeds in order


def test_geometry_shows_every_model_and_every_run_without_a_pair():
    from types import SimpleNamespace

    from vitsam.report.build import geometry_groups

    def run(model, seed=0, fraction=0.01, sam=False):
        cfg = SimpleNamespace(model=SimpleNamespace(name=model), train=SimpleNamespace(seed=seed, objective="classification"),
                              data=SimpleNamespace(subset_seed=seed))
        return SimpleNamespace(cfg=cfg, fraction=fraction, label=f"{model}{'-SAM' if sam else ''}-s{seed}")

    def pair(model, seed=0, fraction=0.01):
        return SimpleNamespace(family="vit", vanilla=run(model, seed, fraction), sam=run(model, seed, fraction, True))

    lonely = run("timm/vit_small_patch16_224")
    report = SimpleNamespace(pairs=[pair("vit_s16", 1), pair("vit_s16", 0), pair("vit_b16")], unpaired=[lonely])
    groups = geometry_groups(report)
    assert [[r.label for r in g] for g in groups] == [["vit_s16-s0", "vit_s16-SAM-s0"], ["vit_b16-s0", "vit_b16-SAM-s0"],
                                                      ["timm/vit_small_patch16_224-s0"]]


@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed (make data)")
def test_report_evaluation_measures_what_is_missing_and_skips_held_out_images_a_run_lacks(tmp_path, monkeypatch):
    from vitsam import presets
    from vitsam.analysis import report as geometry_report
    from vitsam.evaluators.protocol import find_result
    from vitsam.report.build import build_report
    from vitsam.train.loop import train

    tiny = {"examples": 16, "subsets": 0, "max_steps": 4, "density_steps": 4, "density_vectors": 1,
            "trace_samples": 0, "blocks": False}
    monkeypatch.setattr(geometry_report, "GEOMETRY_REQUESTS",
                        (("hessian", tiny), ("hessian", {**tiny, "split": "val"}), ("sparsity", {"examples": 16})))
    runs = [train(presets.resolve("smoke", None, ["train.stop_after_steps=2", f"sam.rho={rho}"]),
                  tmp_path / f"rho{rho}") for rho in (0.0, 0.1)]          # smoke holds out no images
    build_report(runs, tmp_path / "report.html", sections=("geometry",), log=lambda s: None)
    assert not any(find_result(r, "hessian", split="val") for r in runs)
    assert all(find_result(r, "hessian", split="train") and find_result(r, "sparsity") for r in runs)
    curve = json.loads(geometry_report.interpolation_path(runs[0], runs[1]).read_text())
    assert curve["t"][0] == 0.0 and curve["t"][-1] == 1.0 and len(curve["loss"]) == 11


def test_adversarially_trained_pairs_give_claim_g_its_evidence_at_the_training_radius():
    from types import SimpleNamespace

    import numpy as np

    from vitsam.report.build import evidence
    from vitsam.robustness.correctness import pack

    def run(family, sam, objective="adversarial"):
        cfg = SimpleNamespace(model=SimpleNamespace(name=f"{family}_tiny"), adversarial=SimpleNamespace(eps=8 / 255),
                              train=SimpleNamespace(seed=0, objective=objective), data=SimpleNamespace(subset_seed=0))
        return SimpleNamespace(cfg=cfg, fraction=0.01, summary={"parameters": 10}, sam=sam, label=family)

    correct = {("vit", False): [1, 0, 0, 1], ("vit", True): [1, 1, 0, 1],
               ("resnet", False): [1, 1, 0, 0], ("resnet", True): [1, 1, 0, 0]}

    def measured(r, name, **where):
        vector = correct[(r.cfg.model.name.removesuffix("_tiny"), r.sam)]
        return {"accuracy": {"0.0313725": float(np.mean(vector)), "0.00392157": 1.0}, "images_digest": "same",
                "num_images": 4, "correct": {"0.0313725": pack(vector), "0.00392157": pack([1, 1, 1, 1])}}

    pairs = [SimpleNamespace(family=f, vanilla=run(f, False), sam=run(f, True)) for f in ("vit", "resnet")]
    report = SimpleNamespace(pairs=pairs, runs=[], unpaired=[])
    families = evidence(report, measured)["families"]
    np.testing.assert_array_equal(families["vit"]["adversarial_pgd"]["sam"], [1, 1, 0, 1])  # 8/255, not 1/255
    assert "clean" not in families["vit"] and "pgd" not in families["vit"]  # not a standard-trained pair
