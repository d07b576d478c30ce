"""Hessian lambda_max, vitsam against PyHessian 0.1, on the same images and threads.

    python benchmarks/bench_hessian.py [--models vit_tiny,mixer_tiny,resnet_tiny] [--examples 256]
        [--threads 2] [--repeats 3] [--train-steps 300] [--weights-dir DIR] [--vit-b16]

For each of the demo's models, trained briefly on Fashion-MNIST first (``--train-steps``
AdamW steps, weights cached in ``--weights-dir``; a trained model has a more realistic
spectrum than its initialization, including the negative eigenvalues that trip power
iteration), and for k = 1 and k = 3:

- PyHessian: ``hessian(model, CrossEntropyLoss(), data=(x, y)).eigenvalues(top_n=k)``
  with its defaults (power iteration, tol 1e-3, at most 100 iterations per value, the
  gradient graph kept for the one batch);
- vitsam: ``hessian_eigenvalues(model, cross_entropy, [(x, y)], k, bottom=1)`` with its
  defaults (Lanczos from the gradient plus a random vector, each value to an estimated
  relative error of 1e-3, the gradient graph kept), which also reports the smallest
  Ritz value, an upper bound on lambda_min; the row "vitsam+min" (not in the ratio)
  runs on until that value has converged too (``require_bottom=True``).

Both are timed from the model to the answer (graph building included), interleaved in
each repeat so that a busy machine slows both alike. Both answers are checked against a
reference (Lanczos to 1e-8): "right" means each of the k values within 1% of the k
largest eigenvalues. PyHessian is an optional dependency (the ``bench`` extra); without
it only vitsam's side is printed. ``--vit-b16`` also runs three Lanczos steps on a
ViT-B/16 and prints the peak memory next to one parameter vector's size.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vitsam.analysis import cross_entropy
from vitsam.analysis.curvature import lanczos
from vitsam.analysis.hessian import hessian_eigenvalues
from vitsam.analysis.operators import HessianOperator
from vitsam.models import create_model, explicit_attention

RIGHT = 1e-2  # relative distance to the reference that counts as the right eigenvalue


def fashion_mnist(examples: int, seed: int, split: str = "train"):
    """(images in [0, 1] (N, 1, 28, 28), labels) of Fashion-MNIST, or seeded noise when absent."""
    try:
        from vitsam.data import load_source

        source = load_source("fashion_mnist", split)
        picked = torch.randperm(len(source), generator=torch.Generator().manual_seed(seed))[:examples]
        return source.images[picked].float() / 255, source.labels[picked], "Fashion-MNIST"
    except Exception:  # no data here: the comparison still runs
        g = torch.Generator().manual_seed(seed)
        return torch.rand(examples, 1, 28, 28, generator=g), torch.randint(0, 10, (examples,), generator=g), "noise"


def trained_model(name: str, steps: int, weights_dir: Path) -> tuple[torch.nn.Module, str]:
    """The model after ``steps`` AdamW steps (batch 128, lr 2e-3) on Fashion-MNIST, cached."""
    torch.manual_seed(0)
    model = create_model(name)
    path = weights_dir / f"{name}-{steps}steps.pt"
    if path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model, f"trained {steps} steps (cached: {path})"
    images, labels, where = fashion_mnist(60000, seed=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.05)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(labels), (128,), generator=g)
        loss = F.cross_entropy(model(images[idx]), labels[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    weights_dir.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), path)
    return model.eval(), f"trained {steps} steps on {where} (now cached: {path})"


def pyhessian_runner():
    """PyHessian's top-k by power iteration, with a count of its Hessian-vector products."""
    try:
        import pyhessian  # noqa: F401
    except ImportError:
        return None
    module = sys.modules["pyhessian.hessian"]  # the package re-exports the class under the module's name
    count = [0]
    product = module.hessian_vector_product

    def counted(*args, **kwargs):
        count[0] += 1
        return product(*args, **kwargs)

    module.hessian_vector_product = counted

    def run(model, x, y, k: int, seed: int):
        count[0] = 0
        torch.manual_seed(seed)  # PyHessian draws its start vectors from the global generator
        with explicit_attention(model):  # double backward through attention needs the explicit path
            values, _ = module.hessian(model, torch.nn.CrossEntropyLoss(), data=(x, y), cuda=False).eigenvalues(top_n=k)
        model.zero_grad(set_to_none=True)  # PyHessian leaves the create_graph gradients in .grad
        return {"values": sorted(values, reverse=True), "hvps": count[0]}

    return run


def vitsam_run(model, x, y, k: int, seed: int, require_bottom: bool = False):
    result = hessian_eigenvalues(model, cross_entropy, [(x, y)], k=k, bottom=1, seed=seed,
                                 require_bottom=require_bottom)
    return {"values": result.eigenvalues, "hvps": result.steps, "lambda_min": result.bottom[0],
            "lambda_min_converged": result.bottom_converged}


def vitsam_with_lambda_min(model, x, y, k: int, seed: int):
    return vitsam_run(model, x, y, k, seed, require_bottom=True)


def timed(fn, *args):
    """fn's result with its wall-clock and CPU seconds (the CPU time of this process,
    all threads: less disturbed than the wall clock when other jobs share the cores)."""
    wall, cpu = time.perf_counter(), time.process_time()
    out = fn(*args)
    out["seconds"], out["cpu"] = time.perf_counter() - wall, time.process_time() - cpu
    return out


def error(values, reference) -> float:
    return max(abs(v - r) / abs(r) for v, r in zip(values, reference))


def compare(name: str, args, pyhessian) -> None:
    model, how = trained_model(name, args.train_steps, Path(args.weights_dir))
    model.eval()
    x, y, where = fashion_mnist(args.examples, seed=1)
    op = HessianOperator(model, cross_entropy, [(x, y)])
    ref = lanczos(op, op.dim, 3, 1e-8, 300, bottom=1, device=op.device, dtype=op.dtype)
    del op
    print(f"\n{name}: {sum(p.numel() for p in model.parameters())} parameters, {how}; {args.examples} {where} "
          f"training images, {torch.get_num_threads()} threads")
    print(f"  reference (Lanczos, tol 1e-8, {ref.steps} steps): top-3 {[round(v, 4) for v in ref.eigenvalues]}, "
          f"lambda_min {ref.bottom[0]:.4g}")
    for k in (1, 3):
        rows = {"pyhessian": [], "vitsam": [], "vitsam+min": []}
        runners = [("vitsam", vitsam_run), ("pyhessian", pyhessian), ("vitsam+min", vitsam_with_lambda_min)]
        for repeat in range(args.repeats):
            for label, fn in runners[:2][:: 1 if repeat % 2 else -1] + runners[2:]:
                if fn is not None:
                    rows[label].append(timed(fn, model, x, y, k, repeat))
        reference = ref.eigenvalues[:k]
        for label, runs in rows.items():
            if not runs:
                continue
            seconds, cpu = [r["seconds"] for r in runs], [r["cpu"] for r in runs]
            worst = max(error(r["values"], reference) for r in runs)
            extra = ""
            if label != "pyhessian":  # the smallest Ritz value bounds lambda_min from above
                extra = (f", lambda_min <= {runs[-1]['lambda_min']:.4g}"
                         f"{' (converged)' if runs[-1]['lambda_min_converged'] else ''}")
            print(f"  k={k} {label:<10} wall {statistics.median(seconds):6.2f}s [{min(seconds):.2f}-{max(seconds):.2f}]"
                  f" cpu {statistics.median(cpu):6.2f}s HVPs {[r['hvps'] for r in runs]} values "
                  f"{[round(v, 4) for v in runs[-1]['values']]} max rel. error {worst:.1e} "
                  f"{'right' if worst <= RIGHT else 'WRONG'}{extra}")
        if rows["pyhessian"]:
            for clock in ("seconds", "cpu"):
                ratios = [p[clock] / v[clock] for p, v in zip(rows["pyhessian"], rows["vitsam"])]
                print(f"  k={k} speed-up over PyHessian ({'wall' if clock == 'seconds' else 'cpu'} time): median "
                      f"{statistics.median(ratios):.2f}x [{min(ratios):.2f}-{max(ratios):.2f}] over {len(ratios)} "
                      "repeats")


def vit_b16_memory() -> None:
    """Three Lanczos steps on ViT-B/16 (224 px, 2 images): peak memory vs vector size."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = create_model("vit_b16", num_classes=10).to(device)
    g = torch.Generator().manual_seed(0)
    batches = [(torch.rand(2, 3, 224, 224, generator=g).to(device), torch.tensor([0, 1], device=device))]
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    op = HessianOperator(model, cross_entropy, batches)
    lanczos(op, op.dim, 1, 1e-3, 3, device=op.device, dtype=op.dtype)
    seconds = time.perf_counter() - start
    if device == "cuda":
        peak = f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"
    else:
        peak = f"peak process RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB"
    print(f"vit_b16 ({op.dim / 1e6:.1f}M parameters, one vector {op.dim * 4 / 2**20:.0f} MiB) on {device}, "
          f"products by {op.method}: 3 Lanczos steps in {seconds:.1f}s, {peak}; the Lanczos basis is on the CPU")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="vit_tiny,mixer_tiny,resnet_tiny")
    parser.add_argument("--examples", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--weights-dir", default="/tmp/vitsam-bench-hessian")
    parser.add_argument("--vit-b16", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    pyhessian = pyhessian_runner()
    if pyhessian is None:
        print("PyHessian is not installed (pip install pyhessian, or the 'bench' extra): printing vitsam only")
    for name in args.models.split(","):
        compare(name.strip(), args, pyhessian)
    if args.vit_b16:
        vit_b16_memory()


if __name__ == "__main__":
    main()
