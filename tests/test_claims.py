"""The claims scoreboard: each rule on evidence whose verdict is known, and the JSON shape."""
import json
import math

import numpy as np
import pytest

from vitsam import claims, paper
from vitsam.errors import VitsamError

N = 1000                       # test images


def pair(vanilla: float, sam: float, n: int = N) -> dict:
    """Per-image correctness: vanilla right on the first vanilla*n images, SAM on the first
    sam*n (so SAM fixes or breaks exactly |sam - vanilla| * n images, one direction)."""
    index = np.arange(n)
    return {"vanilla": (index < round(vanilla * n)).tolist(), "sam": (index < round(sam * n)).tolist()}


def noisy(accuracy: float = 0.8, flips: int = 10) -> dict:
    """SAM fixes ``flips`` images and breaks ``flips`` others: a zero gain with noise."""
    base = pair(accuracy, accuracy)
    sam = list(base["sam"])
    for i in range(flips):
        sam[i] = False                       # was right
        sam[N - 1 - i] = True                # was wrong
    return {"vanilla": base["vanilla"], "sam": sam}


def row(evidence: dict, claim_id: str) -> claims.Claim:
    rows = {r.id: r for r in claims.scoreboard({"families": evidence})}
    return rows[claim_id]


# --- accuracy gains -------------------------------------------------------------------

def test_gain_verdicts_follow_the_intervals():
    assert row({"vit": {"clean": pair(.80, .86)}, "mixer": {"clean": pair(.70, .80)}}, "gain").verdict == "reproduced"
    lost = row({"vit": {"clean": pair(.80, .74)}, "mixer": {"clean": pair(.70, .80)}}, "gain")
    assert lost.verdict == "not reproduced" and "ViT" in lost.reason
    assert row({"vit": {"clean": noisy()}, "mixer": {"clean": pair(.70, .80)}}, "gain").verdict == "inconclusive"
    missing = row({"vit": {"clean": pair(.80, .86)}}, "gain")
    assert missing.verdict == "inconclusive" and missing.reason.startswith("not measured: Mixer clean")


def test_gain_interval_is_the_paired_difference_in_points():
    r = row({"vit": {"clean": pair(.80, .86)}, "mixer": {"clean": pair(.70, .80)}}, "gain")
    # every changed image moves one way: the bootstrap mean of 60 +1s in 1000 is 6 points
    values = {d["of"]: d for d in r.details}
    vit = values["ViT SAM gain"]
    assert vit["value"] == pytest.approx(6.0) and vit["units"] == "pts"
    assert 4.0 < vit["low"] < 6.0 < vit["high"] < 8.0


def test_seed_spread_that_contradicts_the_bootstrap_leaves_it_open():
    vit = {"clean": pair(.80, .86), "seed_accuracy": {"vanilla": [.80, .82, .81], "sam": [.70, .71, .69]}}
    r = row({"vit": vit, "mixer": {"clean": pair(.70, .80)}}, "gain")
    assert r.verdict == "inconclusive"                      # images say +6, seeds say -11
    agreeing = {"clean": pair(.80, .86), "seed_accuracy": {"vanilla": [.80, .82, .81], "sam": [.86, .87, .85]}}
    assert row({"vit": agreeing, "mixer": {"clean": pair(.70, .80)}}, "gain").verdict == "reproduced"
    one_seed = {"clean": pair(.80, .86), "seed_accuracy": {"vanilla": [.80], "sam": [.70]}}
    assert row({"vit": one_seed, "mixer": {"clean": pair(.70, .80)}}, "gain").verdict == "reproduced"


def test_gain_vs_resnet_reproduced_rejected_open_and_missing():
    vit, mixer = {"clean": pair(.80, .86)}, {"clean": pair(.70, .80)}
    assert row({"vit": vit, "mixer": mixer, "resnet": {"clean": pair(.85, .855)}}, "a").verdict == "reproduced"
    bigger = row({"vit": vit, "mixer": mixer, "resnet": {"clean": pair(.60, .75)}}, "a")
    assert bigger.verdict == "not reproduced"
    assert row({"vit": vit, "mixer": mixer, "resnet": {"clean": pair(.74, .80)}}, "a").verdict == "inconclusive"
    missing = row({"vit": vit, "mixer": mixer}, "a")
    assert missing.verdict == "inconclusive" and missing.reason == "not measured: ResNet clean"


def test_vit_beats_resnet_compares_the_two_sam_models_on_the_same_images():
    assert row({"vit": {"clean": pair(.70, .90)}, "resnet": {"clean": pair(.85, .86)}}, "title").verdict == "reproduced"
    assert row({"vit": {"clean": pair(.70, .80)}, "resnet": {"clean": pair(.85, .86)}}, "title").verdict \
        == "not reproduced"


# --- geometry -------------------------------------------------------------------------

def lam(vanilla, sam):
    return {"lambda_max": {"vanilla": vanilla, "sam": sam}}


def test_lambda_max_reduction_interval_matches_the_closed_form():
    v, s = [50.0, 55.0, 60.0], [5.0, 5.2, 6.1]
    others = {"mixer": lam([90, 95, 100], [3, 3.1, 3.2]), "resnet": lam([200, 210, 205], [100, 98, 102])}
    r = row({"vit": lam(v, s), **others}, "b")
    assert r.verdict == "reproduced"
    vit = next(d for d in r.details if d["of"] == "ViT lambda_max reduction")
    t2 = 4.303                                               # Student t, 2 degrees of freedom
    lv, ls = np.log(v), np.log(s)
    hv, hs = t2 * lv.std(ddof=1) / math.sqrt(3), t2 * ls.std(ddof=1) / math.sqrt(3)
    assert vit["value"] == pytest.approx(math.exp(lv.mean() - ls.mean()))
    assert vit["low"] == pytest.approx(math.exp(lv.mean() - hv - (ls.mean() + hs)))
    assert vit["high"] == pytest.approx(math.exp(lv.mean() + hv - (ls.mean() - hs)))


def test_lambda_max_verdicts():
    mixer, resnet = lam([90, 95, 100], [3, 3.1, 3.2]), lam([200, 210, 205], [100, 98, 102])
    small = row({"vit": lam([50, 55, 60], [25, 26, 27]), "mixer": mixer, "resnet": resnet}, "b")
    assert small.verdict == "not reproduced" and small.reason.startswith("ViT lambda_max reduction")
    resnet_more = lam([200, 210, 205], [2, 2.1, 2.05])     # ResNet cut 100x, more than ViT's 10x
    assert row({"vit": lam([50, 55, 60], [5, 5.5, 6]), "mixer": mixer, "resnet": resnet_more}, "b").verdict \
        == "not reproduced"
    one_seed = row({"vit": lam([50], [5]), "mixer": mixer, "resnet": resnet}, "b")
    assert one_seed.verdict == "inconclusive" and "no interval" in one_seed.reason
    bad = row({"vit": lam([50, -1], [5, 5]), "mixer": mixer, "resnet": resnet}, "b")
    assert bad.verdict == "inconclusive" and "not positive" in bad.reason


def test_ntk_ordering_and_singular_kernels():
    def kappa(values, sam=None):
        return {"ntk_kappa": {"vanilla": values, **({"sam": sam} if sam else {})}}
    ok = row({"vit": kappa([4000, 4200, 4100], [3000, 3100, 2900]), "mixer": kappa([14000, 14500, 14200]),
              "resnet": kappa([2800, 2700, 2900])}, "f")
    assert ok.verdict == "reproduced" and "our finding" in ok.ours
    flipped = row({"vit": kappa([1000, 1100, 1050]), "mixer": kappa([14000, 14500, 14200]),
                   "resnet": kappa([2800, 2700, 2900])}, "f")
    assert flipped.verdict == "not reproduced"
    singular = row({"vit": kappa([4000, None, 4100]), "mixer": kappa([14000, 14500, 14200]),
                    "resnet": kappa([2800, 2700, 2900])}, "f")
    assert singular.verdict == "inconclusive" and "singular" in singular.reason


def sparsity(vanilla_first, sam_first, blocks=4):
    """Per seed, per block active fractions; the first quarter of blocks carries the signal."""
    early = max(1, math.ceil(blocks / 4))
    return {"sparsity": {"vanilla": [[v] * early + [0.3] * (blocks - early) for v in vanilla_first],
                         "sam": [[s] * early + [0.3] * (blocks - early) for s in sam_first]}}


def test_sparsity_is_judged_on_mixer_over_paired_seeds():
    fewer = row({"mixer": sparsity([.50, .52, .48], [.40, .43, .41]), "vit": sparsity([.4] * 3, [.5] * 3)}, "e")
    assert fewer.verdict == "reproduced" and "not the paper's claim" in fewer.ours     # ViT shown, not judged
    more = row({"mixer": sparsity([.40, .43, .41], [.50, .52, .48])}, "e")
    assert more.verdict == "not reproduced"
    assert row({"mixer": sparsity([.50], [.40])}, "e").verdict == "inconclusive"
    assert row({"vit": sparsity([.5, .5], [.4, .4])}, "e").reason == "not measured: Mixer sparsity"


def test_sparsity_averages_the_first_quarter_of_blocks():
    # 8 blocks: the first 2 count; SAM lowers block 2 only, by 10 points -> mean change -5 points
    vanilla = [[0.5, 0.5] + [0.3] * 6] * 3
    sam = [[0.5, 0.4] + [0.3] * 6] * 3
    r = row({"mixer": {"sparsity": {"vanilla": vanilla, "sam": sam}}}, "e")
    assert r.details[0]["value"] == pytest.approx(-5.0)


# --- robustness and data ----------------------------------------------------------------

def test_corruption_gain_larger_than_clean_gain():
    def fam(clean, corrupted):
        return {"clean": clean, "corrupted": corrupted}
    larger = {"vit": fam(pair(.8, .83), pair(.5, .60)), "mixer": fam(pair(.7, .75), pair(.4, .55))}
    assert row(larger, "c").verdict == "reproduced"
    smaller = {"vit": fam(pair(.8, .88), pair(.5, .50)), "mixer": fam(pair(.7, .75), pair(.4, .55))}
    assert row(smaller, "c").verdict == "not reproduced"
    no_c = row({"vit": {"clean": pair(.8, .83), "missing": {"corrupted": "skipped by --fast"}},
                "mixer": fam(pair(.7, .75), pair(.4, .55))}, "c")
    assert no_c.verdict == "inconclusive" and no_c.reason == "not measured: ViT corrupted (skipped by --fast)"


def test_data_efficiency_needs_three_fractions_and_orders_them_numerically():
    growing = {"1": pair(.80, .81), "1/10": pair(.50, .62), "0.5": pair(.70, .74)}
    r = row({"vit": {"fractions": growing}}, "d")
    assert r.verdict == "reproduced"
    assert r.interval["of"] == "ViT gain at 1/10 - gain at 1"            # 1/10 < 0.5 < 1, not string order
    shrinking = {"1": pair(.80, .90), "1/10": pair(.50, .50), "0.5": pair(.70, .74)}
    assert row({"vit": {"fractions": shrinking}}, "d").verdict == "not reproduced"
    two = row({"vit": {"fractions": {"1": pair(.8, .81), "0.1": pair(.5, .6)}}}, "d")
    assert two.verdict == "inconclusive" and "needs >= 3" in two.reason


def test_adversarial_claim_waits_for_adversarial_training_and_labels_our_finding():
    standard = {f: {"pgd": {"2/255": pair(.2, .3)}} for f in ("vit", "mixer", "resnet")}
    r = row(standard, "g")
    assert r.verdict == "inconclusive" and r.reason.startswith("not measured: adversarially trained")
    assert "our finding (standard training, not the paper's setting)" in r.ours and r.interval is None
    trained = {"vit": {"adversarial_pgd": pair(.40, .48)}, "mixer": {"adversarial_pgd": pair(.35, .50)},
               "resnet": {"adversarial_pgd": pair(.50, .51)}}
    assert row(trained, "g").verdict == "reproduced"


# --- shape and input checks ---------------------------------------------------------------

FULL = {
    "vit": {"model": "vit_tiny", "params": 71000, "clean": pair(.80, .86), "corrupted": pair(.5, .6),
            "seed_accuracy": {"vanilla": [.80, .81], "sam": [.85, .86]},
            "lambda_max": {"vanilla": [50, 60], "sam": [5, 6]},
            "ntk_kappa": {"vanilla": [4000, float("inf")], "sam": [3000, 3100]},
            "sparsity": {"vanilla": [[.5] * 4] * 2, "sam": [[.4] * 4] * 2},
            "fractions": {"0.1": pair(.5, .6), "0.5": pair(.7, .74), "1": pair(.8, .81)},
            "pgd": {"2/255": pair(.2, .3)}},
    "mixer": {"clean": pair(.7, .8), "lambda_max": {"vanilla": [90, 95], "sam": [3, 3.1]}},
    "resnet": {"clean": pair(.85, .86), "params": 78000},
}


def test_rows_have_the_specified_keys_and_write_strict_json(tmp_path):
    rows = claims.scoreboard({"families": FULL})
    assert len(rows) >= 7 and len({r.id for r in rows}) == len(rows)
    path = claims.write_json(rows, tmp_path / "claims.json")
    def reject(constant):
        raise AssertionError(f"non-strict JSON constant {constant}")
    data = json.loads(path.read_text(), parse_constant=reject)
    assert isinstance(data, list)
    for entry in data:
        assert {"claim", "paper", "ours", "interval", "verdict", "evidence", "rule"} <= set(entry)
        assert entry["verdict"] in ("reproduced", "not reproduced", "inconclusive")
        assert entry["interval"] is None or {"value", "low", "high", "units"} <= set(entry["interval"])
        assert entry["rule"] and entry["evidence"].startswith("paper: ")


def test_empty_evidence_gives_only_inconclusive_rows_with_reasons():
    rows = claims.scoreboard({"families": {}})
    assert {r.verdict for r in rows} == {"inconclusive"}
    assert all(r.reason.startswith(("not measured", "needs")) for r in rows)


def test_paper_column_comes_from_the_paper_module():
    rows = {r.id: r for r in claims.scoreboard({"families": {}})}
    assert f"+{paper.figure('table2', 'mixer_b16', 'imagenet').gain}" in rows["gain"].paper
    assert f"{paper.ratio('table1', 'vit_b16', 'lambda_max'):.1f}x" in rows["b"].paper
    assert "+17.3" in rows["g"].paper and "14468" in rows["f"].paper


def test_bad_evidence_is_a_clear_error():
    with pytest.raises(VitsamError, match="family 'transformer'; valid choices: mixer, resnet, vit"):
        claims.scoreboard({"families": {"transformer": {}}})
    with pytest.raises(VitsamError, match="key of vit 'lamda_max'"):
        claims.scoreboard({"families": {"vit": {"lamda_max": {}}}})
    with pytest.raises(VitsamError, match="pair seed by seed"):
        claims.scoreboard({"families": {"vit": {"sparsity": {"vanilla": [[.5]], "sam": [[.4], [.4]]}}}})
    with pytest.raises(VitsamError, match="expected"):
        claims.scoreboard({"families": {"vit": {"clean": {"vanilla": [1]}}}})


def test_html_table_colours_verdicts():
    text = claims.html_table(claims.scoreboard({"families": FULL}))
    assert '<td class="good">reproduced</td>' in text and "Rule" in text


def test_held_out_lambda_max_is_shown_as_our_finding_and_never_decides():
    from vitsam import claims

    train = {"vanilla": [0.5, 0.6], "sam": [2.0, 1.5]}            # memorised: SAM sharper on training images
    heldout = {"vanilla": [200.0, 180.0], "sam": [10.0, 12.0]}    # 15x flatter on held-out images
    families = {f: {"lambda_max": train, "lambda_max_heldout": heldout} for f in ("vit", "mixer", "resnet")}
    row = next(r for r in claims.scoreboard({"families": families}) if r.id == "b")
    assert row.verdict != claims.REPRODUCED
    assert "held-out" in row.ours and "our finding" in row.ours
    assert any("held-out" in d["of"] for d in row.details)


def test_one_seed_takes_its_lambda_max_interval_from_disjoint_image_subsets():
    from vitsam import claims

    def family(vanilla, sam):
        return {"lambda_max": {"vanilla": [vanilla[0]], "sam": [sam[0]]},
                "lambda_max_subsets": {"vanilla": vanilla, "sam": sam}}

    flat = family([100.0, 110.0, 95.0, 105.0], [5.0, 5.5, 4.8, 5.2])          # ~20x, tight
    resnet = family([50.0, 55.0, 48.0, 52.0], [40.0, 44.0, 39.0, 41.0])       # ~1.25x
    row = next(r for r in claims.scoreboard({"families": {"vit": flat, "mixer": flat, "resnet": resnet}})
               if r.id == "b")
    assert row.verdict == claims.REPRODUCED and "disjoint image subsets" in row.rule
    one_number = {"lambda_max": {"vanilla": [100.0], "sam": [5.0]}}
    row = next(r for r in claims.scoreboard({"families": {"vit": one_number, "mixer": one_number, "resnet": resnet}})
               if r.id == "b")
    assert row.verdict == claims.INCONCLUSIVE


def test_ntk_claim_names_its_kernel_and_never_compares_two_kernels():
    same = {"vit": {"ntk_kappa": {"vanilla": [9000.0, 9100.0]}, "ntk_kernel": "full"},
            "resnet": {"ntk_kappa": {"vanilla": [100.0, 110.0]}, "ntk_kernel": "full"},
            "mixer": {"ntk_kappa": {"vanilla": [8000.0, 8100.0]}, "ntk_kernel": "full"}}
    rows = {r.id: r for r in claims.scoreboard({"families": same})}
    assert rows["f"].verdict == claims.REPRODUCED and "(full kernel)" in rows["f"].ours
    mixed = {**same, "resnet": {"ntk_kappa": {"vanilla": [100.0, 110.0]}, "ntk_kernel": "trace"}}
    rows = {r.id: r for r in claims.scoreboard({"families": mixed})}
    assert rows["f"].verdict == claims.INCONCLUSIVE and "different kernels" in rows["f"].reason
