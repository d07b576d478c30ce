"""Progress of long work (issue 14): off a terminal a fast loop prints only its last
line; every long stage of the evaluators names itself and counts to its total."""
import io
import re

import numpy as np
import torch

from vitsam.analysis import cross_entropy
from vitsam.analysis.hessian import block_groups
from vitsam.data import Loader, TensorSource
from vitsam.evaluators import protocol
from vitsam.models import create_model
from vitsam.progress import EVERY_ENV, Progress
from vitsam.robustness.evaluate import evaluate_corrupted_sets
from vitsam.robustness.layouts import corrupted_sets

LINE = re.compile(r"^(?P<label>.+?) \| (?P<done>\d+)(?:/(?P<total>\d+))? \| ")


def progress_lines(text: str) -> dict[str, list[tuple[int, int | None]]]:
    """{label: [(done, total), ...]} of the plain progress lines in ``text``."""
    lines: dict[str, list] = {}
    for line in text.splitlines():
        match = LINE.match(line)
        if match:
            total = int(match["total"]) if match["total"] else None
            lines.setdefault(match["label"], []).append((int(match["done"]), total))
    return lines


def test_off_a_terminal_a_fast_loop_prints_its_last_line_unless_every_update_is_asked(monkeypatch):
    monkeypatch.delenv(EVERY_ENV, raising=False)
    stream = io.StringIO()                                    # not a terminal
    with Progress(5, "demo", "steps", stream=stream) as bar:
        for _ in range(5):
            bar.advance()
    assert progress_lines(stream.getvalue()) == {"demo": [(5, 5)]}
    with Progress(5, "early", "steps", stream=stream) as bar:  # stopped early: the count it reached
        bar.advance(3)
    assert progress_lines(stream.getvalue())["early"] == [(3, 5)]
    monkeypatch.setenv(EVERY_ENV, "0")
    stream = io.StringIO()
    with Progress(3, "every", "steps", stream=stream) as bar:
        for _ in range(3):
            bar.advance()
    assert progress_lines(stream.getvalue()) == {"every": [(1, 3), (2, 3), (3, 3)]}


class TinyRun:
    """What an evaluator asks of a run (``protocol.RunData``): 8 random 28x28 grey test
    images in batches of 4, the training loss, the CPU."""

    batch_size, device = 4, torch.device("cpu")

    def __init__(self):
        images = torch.randint(0, 256, (8, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
        self.source = TensorSource(images, torch.arange(8) % 10, [str(c) for c in range(10)], "tiny")
        self.loss_fn = cross_entropy

    def loader(self, split, examples=None, batch_size=None):
        return Loader(self.source, batch_size or self.batch_size, train=False, img_size=28)

    def batches(self, split, examples):
        return list(self.loader(split))


def run_evaluator(name: str, options: dict, model) -> None:
    protocol.evaluator(name).run(model, TinyRun(), protocol.configure(name, options))


def assert_counts_to(lines: dict, label: str, total: int) -> None:
    """Lines (one per update at cadence 0) whose count rises to ``total`` of ``total``."""
    counts = lines.get(label)
    assert counts and {t for _, t in counts} == {total}, (label, counts)
    done = [d for d, _ in counts]
    assert done == sorted(set(done)) and done[-1] == total, (label, counts)


GEOMETRY = {
    "hessian": {"examples": 8, "subsets": 2, "max_steps": 4, "density_steps": 4, "density_vectors": 2,
                "trace_samples": 3, "hutchpp_matvecs": 3, "block_max_steps": 2, "eigenvector_points": 3},
    "ggn": {"examples": 8, "subsets": 0, "max_steps": 3, "density_steps": 3, "density_vectors": 1,
            "trace_samples": 0},
    "ntk": {"blocks": 2, "block_size": 4, "kernels": "trace"},
    "landscape": {"points": 3, "grid": 2, "examples": 8},
    "perturbed": {"sigmas": "0,0.1", "draws": 2, "examples": 8},
    "sharpness": {"examples": 8, "m": 4, "steps": 2},
}


def test_geometry_stages_name_themselves_and_count_to_their_totals(monkeypatch, capsys, single_thread):
    monkeypatch.setenv(EVERY_ENV, "0")
    torch.manual_seed(0)
    model = create_model("vit_tiny", depth=2).eval()
    for name, options in GEOMETRY.items():
        run_evaluator(name, options, model)
    lines = progress_lines(capsys.readouterr().err)
    expected = {
        "hessian lanczos": 4,                    # max(max_steps, density_steps) products
        "hessian density (SLQ)": 4,              # one more probe of density_steps
        "hessian trace (Hutchinson)": 3,
        "hessian trace (Hutch++)": 3,
        "hessian eigenvector curves": 1,
        "hessian blocks": len(block_groups(model)),  # one line for the table, not one per block's Lanczos
        "hessian subsets": 2,
        "ggn lanczos": 3,
        "ntk blocks": 2,
        "landscape": 3 + 2 * 2,                  # the 1-D points and the 2-D grid
        "perturbed (Gaussian noise)": 1 + 2,     # sigma 0 takes one draw
        "sharpness worst-case": 2,
        "sharpness adaptive": 2,
        "sharpness m=4": 2 * 2,                  # 8 examples in 2 subsets of 4, 2 steps each
    }
    for label, total in expected.items():
        assert_counts_to(lines, label, total)
    assert set(lines) == set(expected)           # nothing else: no nested lines, no empty stages


def test_robustness_and_accuracy_count_to_their_totals(monkeypatch, capsys, single_thread, tmp_path):
    monkeypatch.setenv(EVERY_ENV, "0")
    torch.manual_seed(0)
    model = create_model("vit_tiny", depth=1).eval()
    run_evaluator("corruptions", {"names": "gaussian_noise,contrast", "severities": "1,2", "batch_size": 4}, model)
    run_evaluator("attack", {"eps": "1/255,2/255", "steps": 1, "restarts": 2, "batch_size": 4}, model)
    run_evaluator("accuracy", {}, model)
    for name in ("identity", "shot_noise", "zigzag"):         # a stored MNIST-C layout of 3 sets
        (tmp_path / name).mkdir()
        np.save(tmp_path / name / "test_images.npy", np.zeros((4, 28, 28), np.uint8))
        np.save(tmp_path / name / "test_labels.npy", np.arange(4))
    evaluate_corrupted_sets(model, corrupted_sets("mnist-c", tmp_path, 28), "mnist-c")
    lines = progress_lines(capsys.readouterr().err)
    assert_counts_to(lines, "corruptions (2 x 2 sets)", 2 * 4)   # 2 batches x 4 sets
    assert_counts_to(lines, "pgd-1 attacks (linf)", 2 * 2 * 2)   # batches x radii x restarts
    assert_counts_to(lines, "accuracy test", 2)
    assert_counts_to(lines, "corrupted sets (mnist-c)", 3)


def test_a_terminal_gets_one_rewritten_line_unless_plain_lines_are_asked(monkeypatch):
    from vitsam.progress import PLAIN_ENV

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.delenv(PLAIN_ENV, raising=False)
    stream = Terminal()
    with Progress(2, "tty", "steps", stream=stream) as bar:
        bar.advance()
        bar.advance()
    assert stream.getvalue().count("\r") == 2 and stream.getvalue().count("\n") == 1
    monkeypatch.setenv(PLAIN_ENV, "1")             # the demo's parallel workers share one terminal
    monkeypatch.setenv(EVERY_ENV, "0")
    stream = Terminal()
    with Progress(2, "plain", "steps", stream=stream) as bar:
        bar.advance()
        bar.advance()
    assert "\r" not in stream.getvalue() and progress_lines(stream.getvalue()) == {"plain": [(1, 2), (2, 2)]}
