"""The command line as a user drives it: subprocesses, exit codes, the files written."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def vitsam(*args, **kwargs):
    return subprocess.run([sys.executable, "-m", "vitsam", *args], capture_output=True, text=True, timeout=600,
                          **kwargs)


def test_version_and_help_say_what_the_tool_does():
    from vitsam import __version__

    assert vitsam("--version").stdout.strip() == f"vitsam {__version__}"
    helped = vitsam("--help")
    assert helped.returncode == 0 and "Start here" in helped.stdout and "vitsam demo" in helped.stdout
    assert "thin" not in helped.stdout


@pytest.mark.parametrize("command", ["models", "presets"])
def test_listing_into_a_closed_pipe_is_not_an_error(command):
    listing = subprocess.Popen([sys.executable, "-m", "vitsam", command], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE)
    listing.stdout.readline()
    listing.stdout.close()                      # like `| head -1`
    err = listing.stderr.read().decode()
    assert listing.wait(timeout=120) == 0 and "Traceback" not in err and "BrokenPipe" not in err


@pytest.mark.skipif(not FMNIST.exists(), reason="Fashion-MNIST not installed (make data)")
def test_train_prints_one_line_of_config_and_report_pairs_runs(tmp_path):
    for rho in ("0", "0.1"):
        done = vitsam("train", "--preset", "smoke", "--set", f"sam.rho={rho}", "--set", "train.stop_after_steps=3",
                      "--set", "train.epochs=0.2", "--out", str(tmp_path / f"rho{rho}"))
        assert done.returncode == 0, done.stderr
        config_lines = [line for line in done.stderr.splitlines() if line.startswith("vitsam train:")]
        assert len(config_lines) == 1 and "config.json" in config_lines[0] and "SAM rho" not in done.stdout
        assert '"model"' not in done.stderr    # no JSON dump of the whole config
    out = tmp_path / "report.html"
    made = vitsam("report", str(tmp_path / "rho0"), str(tmp_path / "rho0.1"), "--out", str(out),
                  "--sections", "training", "--no-evaluate")
    assert made.returncode == 0, made.stderr
    assert "1 vanilla/SAM pairs: smoke / smoke" in made.stdout
    page = out.read_text()
    assert "Claims of the paper" in page and "shaped like the paper" in page and "Regime" in page
    assert "horizontal flip" in page and "Inception" not in page       # the regime says what the config did
    rows = json.loads((tmp_path / "claims.json").read_text())
    assert {"claim", "paper", "ours", "interval", "verdict", "evidence"} <= set(rows[0])
    bad = vitsam("report", str(tmp_path / "nothing"), "--out", str(out))
    assert bad.returncode == 2 and "not a vitsam run directory" in bad.stderr
