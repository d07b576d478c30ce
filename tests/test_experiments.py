"""The paper's tables as experiments: every table plans valid runs at both scales, finished
runs are reused and interrupted ones resumed, reports put known numbers (accuracies,
paired gains, the paper's figures) where they belong, and one table runs end to end."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pytest

import vitsam.experiments.presets  # noqa: F401  (registers the presets)
from vitsam import config as config_lib
from vitsam.errors import VitsamError
from vitsam.experiments import cli as paper_cli
from vitsam.experiments import runs as runs_lib
from vitsam.experiments.tables import TABLES, Scope, get_table
from vitsam.jsonfile import write_json
from vitsam.train.checkpoint import CHECKPOINT

FMNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture(autouse=True)
def _one_thread(single_thread):
    yield


@pytest.mark.parametrize("key", sorted(TABLES))
def test_every_table_plans_valid_runs_at_both_scales(key, tmp_path):
    table = get_table(key)
    small = table.runs(Scope(out=tmp_path))
    large = table.runs(Scope(scale="imagenet", out=tmp_path, data="folder:/data/imagenet",
                             target="cifar10:/data/cifar10"))
    for runs, models in ((small, table.default_models["small"]), (large, table.default_models["imagenet"])):
        assert len({r.key for r in runs}) == len(runs) and {r.tags["model"] for r in runs} == set(models)
        assert all(r.run_dir == tmp_path / key / r.key for r in runs)
        for run in runs:
            config_lib.validate(run.config)
    assert all(r.config.model.name.endswith("_tiny") and r.config.data.dataset == "fashion_mnist" for r in small)
    assert any(r.config.data.dataset == "folder:/data/imagenet" for r in large)


def test_imagenet_scale_needs_its_data_sets_and_contrastive_needs_a_vit(tmp_path):
    with pytest.raises(VitsamError, match="--data"):
        get_table("data-efficiency").runs(Scope(scale="imagenet", out=tmp_path))
    with pytest.raises(VitsamError, match="--target"):
        get_table("transfer").runs(Scope(scale="imagenet", out=tmp_path, data="folder:/d"))
    with pytest.raises(VitsamError, match="not a ViT"):
        get_table("contrastive").runs(Scope(out=tmp_path, models=("mixer_tiny",)))
    with pytest.raises(VitsamError, match="paper table"):
        get_table("table9")


def test_data_efficiency_runs_cross_fractions_with_variants(tmp_path):
    runs = get_table("data-efficiency").runs(Scope(out=tmp_path))
    assert len(runs) == 16
    fractions = {(r.tags["column"], r.config.data.train_fraction) for r in runs}
    assert fractions == {("full", 0.25), ("1/2", 0.125), ("1/4", 0.0625), ("1/10", 0.025)}
    for run in runs:
        variant = run.tags["variant"]
        assert (run.config.sam.rho > 0) == ("sam" in variant), run.key
        assert (run.config.augment.randaugment_layers > 0 and run.config.augment.mixup_alpha > 0) == \
            ("aug" in variant), run.key
        assert run.config.train.epochs == 12
    overridden = get_table("data-efficiency").runs(Scope(out=tmp_path, overrides=("train.epochs=2",)))
    assert {r.config.train.epochs for r in overridden} == {2}


def test_contrastive_and_transfer_runs_start_from_their_sources(tmp_path):
    runs = get_table("contrastive").runs(Scope(out=tmp_path))
    by_key = {r.key: r for r in runs}
    for variant in ("vanilla", "sam"):
        pretrain = by_key[f"vit_tiny/{variant}/pretrain"]
        assert pretrain.config.train.objective == "contrastive" and (pretrain.config.sam.rho > 0) == (variant == "sam")
        probe, tune = by_key[f"vit_tiny/{variant}/probe"], by_key[f"vit_tiny/{variant}/finetune"]
        assert probe.config.model.init_from == str(pretrain.run_dir) == tune.config.model.init_from
        assert probe.config.train.trainable == "head" and tune.config.train.trainable == "all"
        assert runs.index(pretrain) < runs.index(probe)
    transfer = {r.key: r for r in get_table("transfer").runs(Scope(out=tmp_path, models=("vit_tiny",)))}
    target = transfer["vit_tiny/sam/target"]
    assert target.config.model.init_from == str(transfer["vit_tiny/sam/source"].run_dir)
    assert target.config.data.img_size == 42


# --------------------------------------------------------------------------- finished runs, faked

def fake_finished(run, correct: np.ndarray, summary: dict | None = None) -> None:
    """What a finished run leaves: config, eval.json, predictions.npz with per-image predictions."""
    run.run_dir.mkdir(parents=True, exist_ok=True)
    config_lib.save(run.config, run.run_dir / "config.json")
    labels = np.arange(len(correct)) % 10
    predicted = np.where(correct, labels, (labels + 1) % 10)
    np.savez(run.run_dir / "predictions.npz", test_predicted=predicted, test_labels=labels)
    (run.run_dir / "eval.json").write_text(json.dumps({"test_accuracy": float(correct.mean()), **(summary or {})}))


def first(n_right: int, n: int = 200) -> np.ndarray:
    return np.arange(n) < n_right


def test_data_efficiency_report_puts_numbers_where_they_belong(tmp_path):
    table = get_table("data-efficiency")
    scope = Scope(out=tmp_path)
    runs = table.runs(scope)
    right = {"vanilla": 120, "sam": 140, "aug": 130, "sam_aug": 150}
    for run in runs:
        bonus = 20 if run.tags["column"] == "1/10" and run.tags["variant"] == "sam" else 0
        fake_finished(run, first(right[run.tags["variant"]] + bonus))
    text = paper_cli.write_reports(table, runs, scope, started=0.0)
    full_row = next(line for line in text.splitlines() if line.startswith("full "))
    # ours: 60.0 / 70.0 / 65.0 / 75.0; the paper's ViT-B/16 on ImageNet: 74.6 / 79.9 / 79.6 / 81.5
    assert full_row.split()[2:] == ["60.0", "70.0", "65.0", "75.0", "74.6", "79.9", "79.6", "81.5"]
    diff_full = next(line for line in text.splitlines() if line.startswith("full ") and "[" in line)
    # SAM - vanilla: +10.0 points exactly (images 120..139), the paper's +5.3
    assert "+10.0 [" in diff_full and "+5.3" in diff_full
    # SAM's gain grows by 10 points at 1/10 (the paper's ViT-B/16: 13.3 - 5.3 = +8.0)
    assert "gain on the full set: +10.0" in text and "+8.0" in text
    html_text = (tmp_path / "data-efficiency" / "report.html").read_text()
    assert "SAM vs. strong augmentations" in html_text and "16 of 16 runs finished" in html_text
    assert '<td class="good">+10.0 [' in html_text, "a gain whose interval excludes zero is marked"
    assert (tmp_path / "report.html").is_file() and (tmp_path / "data-efficiency" / "report.txt").is_file()


def test_report_of_unfinished_runs_shows_dashes(tmp_path):
    table = get_table("contrastive")
    scope = Scope(out=tmp_path)
    text = paper_cli.write_reports(table, table.runs(scope), scope, started=0.0)
    assert "—" in text and "80.0 (+2.6)" in text     # none of ours yet; the paper's ViT-B/16 figure


def test_adversarial_report_reads_robustness_results(tmp_path):
    table = get_table("adversarial")
    scope = Scope(out=tmp_path, models=("vit_tiny",))
    runs = table.runs(scope)
    for run, clean, pgd, corrupted in zip(runs, (100, 110), (0.30, 0.36), (0.50, 0.52)):
        means = {"imagenet_c_15": {"accuracy": corrupted}, "all_19": {"accuracy": 0.99}}
        fake_finished(run, first(clean))
        results = (("attack", {"accuracy": {"0.0313725": pgd}}), ("corruptions", {"mean_accuracy": 0.99, "means": means}))
        for name, metrics in results:
            options = {"attack": "pgd", "norm": "linf", "steps": 10} if name == "attack" else {}
            write_json({"evaluator": name, "options": options, "key": "k", "weights": "w", "step": 9, **metrics},
                       run.run_dir / "results" / name / "k.json")
    text = table.report(runs, scope).text
    sam_row = next(line for line in text.splitlines() if "adversarial + SAM" in line)
    assert "55.0 (+5.0 [" in sam_row and "36.0 (+6.0)" in sam_row and "52.0 (+2.0)" in sam_row
    assert "62.0 (+7.7)" in sam_row        # the paper's ViT-B/16 PGD-10 with its gain


# --------------------------------------------------------------------------- running

def test_execute_reuses_finished_resumes_interrupted_and_refuses_other_recipes(tmp_path, monkeypatch):
    runs = get_table("table2").runs(Scope(out=tmp_path, models=("vit_tiny", "mixer_tiny")))
    finished, interrupted, fresh = runs[0], runs[1], runs[2]
    fake_finished(finished, first(100))
    interrupted.run_dir.mkdir(parents=True)
    config_lib.save(interrupted.config, interrupted.run_dir / "config.json")
    (interrupted.run_dir / CHECKPOINT).parent.mkdir()
    (interrupted.run_dir / CHECKPOINT).write_bytes(b"")
    calls = []

    def fake_train(cfg, run_dir, resume=False):
        calls.append((Path(run_dir), resume))
        fake_finished(next(r for r in runs if r.run_dir == Path(run_dir)), first(120))
        return Path(run_dir)

    monkeypatch.setattr("vitsam.train.loop.train", fake_train)
    finished_calls = []
    runs_lib.execute(runs[:3], log=lambda text: None, on_finished=finished_calls.append)
    assert calls == [(interrupted.run_dir, True), (fresh.run_dir, False)]
    assert finished_calls == runs[:3]
    other = get_table("table2").runs(Scope(out=tmp_path, models=("vit_tiny",), overrides=("optim.lr=0.5",)))
    with pytest.raises(VitsamError, match="another recipe"):
        runs_lib.execute(other[:1], log=lambda text: None)


def run_cli(*argv) -> int:
    parser = argparse.ArgumentParser()
    paper_cli.add_cli(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["paper", *argv])
    return args.func(args)


def test_list_names_every_table_with_its_cost(capsys):
    assert run_cli("--list") == 0
    out = capsys.readouterr().out
    for key in TABLES:
        assert key in out
    assert "16 runs" in out and "min" in out


@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed")
def test_a_table_runs_end_to_end_and_a_second_call_reuses_it(tmp_path, capsys):
    argv = ["table2", "--model", "vit_tiny", "--out", str(tmp_path), "--set", "data.train_fraction=0.02",
            "--set", "train.epochs=1", "--set", "train.threads=1", "--set", "train.progress=false",
            "--set", "model.overrides={\"depth\": 1}"]
    assert run_cli(*argv) == 0
    first_out = capsys.readouterr().out
    assert "training vit_tiny sam" in first_out
    row = next(line for line in first_out.splitlines() if line.startswith("vit_tiny "))
    assert "79.9" in row and "(128, fp32, cpu)" in row         # the paper's ViT-B/16 SAM figure; throughput
    assert run_cli(*argv) == 0
    assert capsys.readouterr().out.count("finished earlier") == 2
    summary = json.loads((tmp_path / "table2" / "vit_tiny" / "sam" / "eval.json").read_text())
    assert summary["train_images_per_s_per_device"] > 0


def test_robust_gains_carry_paired_intervals_when_per_image_scores_were_kept():
    import numpy as np

    from vitsam.experiments.tables import robust_gain

    base = {"pgd10": 50.0, "pgd10_scores": np.array([1, 0, 0, 1] * 50, dtype=float)}
    other = {"pgd10": 75.0, "pgd10_scores": np.array([1, 1, 0, 1] * 50, dtype=float)}
    text = robust_gain(base, other, "pgd10")
    assert text.startswith("+25.0 [") and text.endswith("]")
    low, high = (float(x) for x in text[text.index("[") + 1:-1].split(", "))
    assert 0 < low < 25 < high
    assert robust_gain({**base, "pgd10_scores": None}, other, "pgd10") == "+25.0"   # no scores: no interval
