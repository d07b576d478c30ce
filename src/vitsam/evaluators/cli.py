"""``vitsam evaluate`` (any evaluator) and ``vitsam analyze`` (the geometry ones): thin
users of the protocol's runner. ``vitsam robust`` lives in ``evaluators.robustness``."""
from __future__ import annotations

from vitsam.errors import VitsamError
from vitsam.evaluators.protocol import evaluate_run, evaluators, names_in, summary_line


def parse_sets(texts: list[str] | None) -> dict[str, dict]:
    """["hessian.top_k=3", ...] -> {"hessian": {"top_k": "3"}} (converted by ``configure``)."""
    options: dict[str, dict] = {}
    for text in texts or []:
        key, sep, value = text.partition("=")
        name, dot, option = key.partition(".")
        if not (sep and dot):
            raise VitsamError(f"--set {text!r} must look like EVALUATOR.OPTION=VALUE, e.g. hessian.top_k=3")
        options.setdefault(name, {})[option] = value
    return options


def split_names(text: str | None, default: list[str], allowed: list[str], what: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()] if text else default
    for name in names:
        if name not in allowed:
            raise VitsamError(f"unknown {what} {name!r}; valid choices: {', '.join(allowed)}")
    return names


def run_and_print(args, names: list[str]) -> None:
    options = parse_sets(args.set)
    records = evaluate_run(args.run_dir, names, options, args.force, args.device, args.batch_size,
                           getattr(args, "data_dir", None))
    for name, record in records.items():
        print(f"{name}: {summary_line(name, record)}")


def cmd_evaluate(args) -> None:
    if args.list:
        for name, entry in evaluators().items():
            print(f"{name:<14} {entry.section:<11} {entry.doc}")
        return
    if not args.run_dir:
        raise VitsamError("give a run directory (or --list to see the evaluators)")
    everything = list(evaluators())
    run_and_print(args, split_names(args.only, ["accuracy"], everything, "evaluator"))


def cmd_analyze(args) -> None:
    geometry = names_in("geometry")
    run_and_print(args, split_names(args.only, geometry, geometry, "analyzer"))


def common_arguments(p) -> None:
    p.add_argument("--set", action="append", metavar="NAME.OPTION=VALUE",
                   help="an evaluator option, e.g. --set hessian.top_k=3 (repeatable)")
    p.add_argument("--force", action="store_true", help="recompute results that are cached for these weights")
    p.add_argument("--batch-size", type=int, default=128, help="images per forward pass (default 128)")
    p.add_argument("--device", default="auto")
    p.add_argument("--data-dir", help="where the run's data set lives, if it moved")


def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "evaluate", help="run any evaluator on a run (accuracy, geometry, robustness); --list names them",
        description="Run evaluators on a run's latest weights. Results are cached in RUN_DIR/results/ under the "
                    "weights' hash and every option, and reused (the output says so) until either changes.")
    p.add_argument("run_dir", nargs="?")
    p.add_argument("--only", help="comma-separated evaluators (default: accuracy)")
    p.add_argument("--list", action="store_true", help="list the evaluators and exit")
    common_arguments(p)
    p.set_defaults(func=cmd_evaluate)

    p = subparsers.add_parser(
        "analyze", help="loss geometry of a run: Hessian, NTK, landscape, sparsity, attention",
        description="Run the geometry analyzers on a run's latest weights (training images, eval mode, the run's "
                    "training loss); results and figures go to RUN_DIR/results/.")
    p.add_argument("run_dir")
    p.add_argument("--only", help="comma-separated subset of the geometry analyzers")
    common_arguments(p)
    p.set_defaults(func=cmd_analyze)
