"""Measure rlli_jax throughput, print a table, and write JSON, Markdown tables and a PNG.

    python scripts/benchmark.py --suite env --out runs/benchmark

Each case compiles once (compile time reported apart), runs one warm-up call (the train and
sweep suites: the chunks before gradient steps start, at least one), then is timed over
--repeats calls synchronised with block_until_ready; the table shows the median with min
and max. With the act suite, the MLP actor and the diffusion actor at T = 5 are also traced with
jax.profiler (traces under OUT/profile) and their time is split by part of the actor. The
outputs are rewritten after each suite, so a run stopped later keeps the suites it finished.
A case that runs out of memory is skipped and listed with the error, and the run goes on.
"""

import argparse
import io
import json
import math
import shlex
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_NUM_ENVS = [1, 64, 1024, 4096, 16384]
DEFAULT_PROFILE_ENVS = 4096
SUITES = ("env", "act", "update", "train", "sweep")
OUTPUT_FILES = ("benchmark.json", "benchmark.md", "benchmark.png")
# The compiled programs index arrays with int32, so no size may exceed its range.
MAX_SIZE = 2**31 - 1


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--suite",
        choices=SUITES,
        action="append",
        help="suite to run; repeat for several (default: all five)",
    )
    parser.add_argument(
        "--num-envs",
        type=int,
        nargs="+",
        default=DEFAULT_NUM_ENVS,
        help="numbers of parallel environments to measure in the env and act suites (the "
        "update suite measures batch sizes 256, 512 and 1024 instead)",
    )
    parser.add_argument(
        "--numpy-envs",
        type=int,
        default=16,
        help="environments in the NumPy reference's Python loop (its steps/s barely depends "
        "on this)",
    )
    parser.add_argument(
        "--train-envs",
        type=int,
        nargs="+",
        default=[1024, 4096],
        help="numbers of environments for the train suite",
    )
    parser.add_argument(
        "--sweep-members",
        type=int,
        nargs="+",
        default=[1, 8, 64],
        help="population sizes for the sweep suite",
    )
    parser.add_argument(
        "--sweep-envs", type=int, default=64, help="environments per member in the sweep suite"
    )
    parser.add_argument(
        "--num-steps",
        type=int,
        default=16,
        help=(
            "work per timed call: env steps (env), actions (act), gradient steps (update); "
            "the train and sweep suites run their own chunks"
        ),
    )
    parser.add_argument(
        "--profile-envs",
        type=int,
        default=None,
        help="with the act suite, profile the MLP actor and the diffusion actor at T = 5 with "
        f"jax.profiler at this many envs and split their time by part (default "
        f"{DEFAULT_PROFILE_ENVS}, 0: no profile)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (>= 1)")
    parser.add_argument("--out", default="runs/benchmark", help="output folder")
    args = parser.parse_args(argv)
    args.suite = args.suite or list(SUITES)
    for flag in ("repeats", "numpy_envs", "num_steps", "sweep_envs"):
        value = getattr(args, flag)
        if not 1 <= value <= MAX_SIZE:
            parser.error(f"{option_name(flag)} = {value} is invalid: it must be in [1, {MAX_SIZE}]")
    for flag in ("num_envs", "train_envs", "sweep_members"):
        values = getattr(args, flag)
        if any(not 1 <= n <= MAX_SIZE for n in values):
            parser.error(
                f"{option_name(flag)} = {values} is invalid: every value must be in [1, {MAX_SIZE}]"
            )
        # A repeated size would add a second row to the tables but overwrite its ratio.
        if len(set(values)) < len(values):
            parser.error(
                f"{option_name(flag)} = {values} is invalid: a value is repeated, give each once"
            )
    if args.profile_envs is None:
        args.profile_envs = DEFAULT_PROFILE_ENVS if "act" in args.suite else 0
    elif not 0 <= args.profile_envs <= MAX_SIZE:
        parser.error(
            f"--profile-envs = {args.profile_envs} is invalid: it must be in [0, {MAX_SIZE}]"
        )
    elif args.profile_envs and "act" not in args.suite:
        parser.error(
            f"--profile-envs = {args.profile_envs} needs the act suite: add --suite act, "
            "or leave --profile-envs out"
        )
    args.out = check_benchmark_folder(parser, args.out)
    return args


def option_name(flag: str) -> str:
    """Return the command-line option of an argparse destination, "num_envs" -> "--num-envs"."""
    return "--" + flag.replace("_", "-")


def check_benchmark_folder(parser: argparse.ArgumentParser, value: str) -> Path:
    """Return --out as a Path; reject one that cannot take the outputs, before anything is
    measured."""
    from rlli_jax.outputs import check_output_folder  # the package imports jax: load it late

    try:
        out = check_output_folder(value)
    except ValueError as error:
        parser.error(str(error))
    for name in OUTPUT_FILES:
        path = out / name
        if path.exists() and not path.is_file():
            parser.error(f"--out = {out} is invalid: {path} exists and is not a file")
    return out


def write_outputs(out: Path, document: dict) -> None:
    """Render benchmark.json, benchmark.md and benchmark.png, then replace each file atomically.

    All three are rendered before the first is written, so a failed rendering leaves the older
    set whole. A kill between the three renames can still leave a mix of old and new files.
    """
    from rlli_jax.outputs import json_safe, write_bytes_atomic, write_text_atomic

    out.mkdir(parents=True, exist_ok=True)
    json_text = json.dumps(json_safe(document), indent=2, allow_nan=False) + "\n"
    markdown = markdown_report(document)
    image = io.BytesIO()
    plot(document["records"], image)
    write_text_atomic(out / "benchmark.json", json_text)
    write_text_atomic(out / "benchmark.md", markdown)
    write_bytes_atomic(out / "benchmark.png", image.getvalue())


def print_table(records: list[dict], skipped: Sequence[dict] = ()) -> None:
    """Print one row per record, then one per skipped case with the error that stopped it."""
    header = f"{'suite':<6} {'num_envs':>9} {'median/s':>12} {'min/s':>12} {'max/s':>12} "
    header += f"{'compile s':>10}  case"
    print(header)
    for record in records:
        print(
            f"{record['suite']:<6} {record['num_envs']:>9} {record['throughput_median']:>12.4g} "
            f"{record['throughput_min']:>12.4g} {record['throughput_max']:>12.4g} "
            f"{record['compile_s']:>10.2f}  {record['case']}"
        )
    for case in skipped:
        print(
            f"{case['suite']:<6} {case['num_envs']:>9} {'skipped':>12} {'':>12} {'':>12} "
            f"{'':>10}  {case['case']} (out of memory: {case['reason']})"
        )


def format_ratio(value: float | None) -> str:
    """Return a ratio as "12.3x", or "n/a" for one without a value (a case it needs was
    skipped, or a non-finite quotient)."""
    if value is None or not math.isfinite(value):
        return "n/a"
    return f"{value:.1f}x"


def print_act_costs(costs: list[dict]) -> None:
    """Print XLA's per-action cost analysis of each actor."""
    print(f"XLA cost analysis per action (batch {costs[0]['batch']}):")
    print(f"{'actor':<24}{'flops':>12}{'x MLP':>8}{'transcendentals':>17}{'bytes':>12}")
    for cost in costs:
        print(
            f"{cost['case']:<24}{cost['flops']:>12.0f}{cost['flops_over_mlp']:>8.2f}"
            f"{cost['transcendentals']:>17.0f}{cost['bytes_accessed']:>12.0f}"
        )


def print_act_profile(profiles: list[dict]) -> None:
    """Print where each actor's time goes, by part, from its jax.profiler trace."""
    for profile in profiles:
        print(
            f"profile of {profile['case']} at {profile['num_envs']} envs: "
            f"{profile['op_ns_per_action']:.0f} ns of operations per action "
            f"({profile['wall_ns_per_action']:.0f} ns wall under the profiler)"
        )
        for part in profile["parts"]:
            if part["share"] >= 0.001:
                print(
                    f"  {part['share']:>7.1%} {part['ns_per_action']:>9.0f} ns  "
                    f"{part['part']} ({part['kind']})"
                )


def speed_ratios(records: list[dict], skipped: Sequence[dict] = ()) -> dict[str, float | None]:
    """Ratios measured in this run.

    jax_env_<n>_over_numpy: JAX env steps/s at n envs over the NumPy reference's.
    diffusion_T<t>_cost_over_mlp_<n>: time per action of the diffusion actor with t denoising
    steps over the MLP actor's, at n envs.
    A ratio one of whose cases is in `skipped` (it ran out of memory) is None.
    """
    ratios = {}
    numpy_rate = None
    for r in [*records, *skipped]:
        if r["case"].startswith("NumPy reference"):
            numpy_rate = r.get("throughput_median", float("nan"))
    if numpy_rate is not None:
        for r in [*records, *skipped]:
            if r["suite"] == "env" and not r["case"].startswith("NumPy reference"):
                rate = r.get("throughput_median", float("nan"))
                ratios[f"jax_env_{r['num_envs']}_over_numpy"] = _quotient(rate, numpy_rate)
    act = [r for r in [*records, *skipped] if r["suite"] == "act"]
    mlp = {r["num_envs"]: r for r in act if r["case"] == "MLP actor"}
    for r in act:
        if r["case"].startswith("diffusion") and r["num_envs"] in mlp:
            steps = r["case"].split("T=")[1]
            name = f"diffusion_T{steps}_cost_over_mlp_{r['num_envs']}"
            mlp_rate = mlp[r["num_envs"]].get("throughput_median", float("nan"))
            ratios[name] = _quotient(mlp_rate, r.get("throughput_median", float("nan")))
    return ratios


def _quotient(numerator: float, denominator: float) -> float | None:
    """Return numerator / denominator, or None when either is NaN (a skipped case)."""
    if math.isnan(numerator) or math.isnan(denominator):
        return None
    return numerator / denominator


def glue_ratios(
    records: list[dict], parts: dict[int, dict[str, float]], skipped: Sequence[dict] = ()
) -> dict[str, float | None]:
    """train_glue_<n>: seconds per training iteration over the sum of its parts timed alone
    (exploring act + env step + the gradient steps), at n envs; 1 means no glue cost.

    The ratio is None when the training chunk or its parts at n envs are in `skipped`.
    """
    chunk_records = {
        record["num_envs"]: record
        for record in records
        if record["suite"] == "train" and record["case"].endswith("env steps")
    }
    skipped_train = {case["num_envs"] for case in skipped if case["suite"] == "train"}
    ratios = {}
    for num_envs in dict.fromkeys([*chunk_records, *skipped_train]):  # the run's order, no repeats
        name = f"train_glue_{num_envs}"
        if num_envs in skipped_train:
            ratios[name] = None
        elif num_envs in parts:
            iterations = chunk_records[num_envs]["work_per_call"] / num_envs
            per_iteration = chunk_records[num_envs]["median_s"] / iterations
            ratios[name] = per_iteration / sum(parts[num_envs].values())
    return ratios


def markdown_table(title: str, header: list[str], align: str, rows: list[list]) -> list[str]:
    """Return the lines of a Markdown table under a `#### title` heading, then a blank line.

    align has one character per column: "l" for text, "r" for numbers.
    """
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    lines = [f"#### {title}", "", "| " + " | ".join(header) + " |", rule]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return lines + [""]


def markdown_report(document: dict) -> str:
    """Return the run's tables in Markdown, one per suite, then the ratios, the XLA cost
    analysis, the train parts and the profile, ready to paste into docs/benchmarks.md."""
    machine = document["machine"]
    lines = [
        f"Command: `{document['command']}`",
        "",
        f"Machine: {machine['device']} ({machine['backend']} backend, {machine['num_devices']} "
        f"device(s)), {machine['processor']} host with {machine['cpu_count']} CPUs, "
        f"jax {machine['jax_version']}, Python {machine['python']}, {document['time_utc']}.",
        *describe_versions(machine),
        "",
    ]
    requested = document.get("suites_requested", [])
    done = document.get("suites_done", requested)
    if done != requested:
        lines += [f"Incomplete run: suites done {done} of {requested}.", ""]

    header = ["case", "num_envs", "median /s", "min /s", "max /s", "compile s"]
    for suite in SUITES:
        rows = [
            [
                r["case"],
                r["num_envs"],
                f"{r['throughput_median']:.4g}",
                f"{r['throughput_min']:.4g}",
                f"{r['throughput_max']:.4g}",
                f"{r['compile_s']:.1f}",
            ]
            for r in document["records"]
            if r["suite"] == suite
        ]
        if rows:
            lines += markdown_table(suite, header, "lrrrrr", rows)

    skipped = document.get("skipped", [])  # records written before skipping lack the key
    if skipped:
        # A "|" in an error message would end its table cell.
        rows = [
            [case["suite"], case["case"], case["num_envs"], case["reason"].replace("|", "\\|")]
            for case in skipped
        ]
        title = "skipped cases (out of memory)"
        lines += markdown_table(title, ["suite", "case", "num_envs", "error"], "llrl", rows)

    ratios = document["ratios"]
    if ratios:
        rows = [[name, format_ratio(value)] for name, value in ratios.items()]
        lines += markdown_table("ratios", ["ratio", "value"], "lr", rows)
        if None in ratios.values():
            lines += ["n/a: a case that the ratio needs was skipped, or it is not finite.", ""]

    costs = document.get("act_cost_analysis", [])
    if costs:
        title = f"XLA cost analysis per action (batch {costs[0]['batch']})"
        header = ["actor", "flops", "x MLP", "transcendentals", "bytes accessed"]
        rows = [
            [
                cost["case"],
                f"{cost['flops']:,.0f}",
                f"{cost['flops_over_mlp']:.2f}",
                f"{cost['transcendentals']:,.0f}",
                f"{cost['bytes_accessed']:,.0f}",
            ]
            for cost in costs
        ]
        lines += markdown_table(title, header, "lrrrr", rows)

    train_parts = document.get("train_parts_s", {})
    if train_parts:
        title = "train parts timed alone (seconds per call)"
        header = ["num_envs", "exploring act", "env step", "gradient steps"]
        rows = [
            [n, f"{p['act_s']:.4g}", f"{p['env_step_s']:.4g}", f"{p['updates_s']:.4g}"]
            for n, p in train_parts.items()
        ]
        lines += markdown_table(title, header, "rrrr", rows)

    if document.get("act_profile_error"):
        lines += [f"The act profile failed: {document['act_profile_error']}", ""]
    for profile in document.get("act_profile", []):
        title = f"profile of the {profile['case']} at {profile['num_envs']} envs"
        rows = [
            [part["part"], part["kind"], f"{part['ns_per_action']:.0f}", f"{part['share']:.1%}"]
            for part in profile["parts"]
        ]
        table = markdown_table(title, ["part", "kind", "ns per action", "share"], "llrr", rows)
        summary = (
            f"Operations: {profile['op_ns_per_action']:.0f} ns per action. Wall time under the "
            f"profiler: {profile['wall_ns_per_action']:.0f} ns per action."
        )
        lines += table[:2] + [summary, ""] + table[2:]
    return "\n".join(lines)


def describe_versions(machine: dict) -> list[str]:
    """Return a Markdown line with the package versions and commit, if the record has them."""
    packages = machine.get("packages")
    if not packages:  # records written before versions were stored
        return []
    installed = ", ".join(f"{name} {version}" for name, version in packages.items() if version)
    commit = machine.get("git_commit") or "unknown"
    return ["", f"Packages: {installed}. Commit: {commit}."]


PLOT_MARKERS = ("o", "s", "^", "D")


def plot(records: list[dict], file) -> None:
    """Draw throughput against num_envs (log-log) as a PNG into `file`, a path or binary stream."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    # The default color cycle has 10 colors and a full run has about 20 cases, so each case
    # gets its own pair of color and marker.
    colors = plt.get_cmap("tab10").colors
    for index, case in enumerate(sorted({r["case"] for r in records})):
        rows = sorted((r for r in records if r["case"] == case), key=lambda r: r["num_envs"])
        axis.errorbar(
            [r["num_envs"] for r in rows],
            [r["throughput_median"] for r in rows],
            yerr=[
                [r["throughput_median"] - r["throughput_min"] for r in rows],
                [r["throughput_max"] - r["throughput_median"] for r in rows],
            ],
            color=colors[index % len(colors)],
            marker=PLOT_MARKERS[index // len(colors) % len(PLOT_MARKERS)],
            label=case,
        )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("num_envs (batch size in the update suite)")
    axis.set_ylabel("items per second (median, min-max bars)")
    if records:
        axis.legend(fontsize=7)
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(file, format="png", dpi=120)
    plt.close(figure)


# Case name of a skipped `benchmark_train_parts` call, which otherwise makes no record.
TRAIN_PARTS_CASE = "train parts timed alone"


# Exit status after Ctrl-C (128 + SIGINT). It equals rlli_jax.cli.INTERRUPTED, repeated here
# because importing rlli_jax loads jax, which this script defers until the options are valid.
INTERRUPTED = 130


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    # Create the folder now, so a path that cannot be written fails before the measurements.
    try:
        args.out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        print(f"error: --out = {args.out} cannot be created: {error}", file=sys.stderr)
        return 2
    suites_done = []
    try:
        return measure(args, argv, suites_done)
    except KeyboardInterrupt:
        if suites_done:
            outcome = f"{args.out} contains the finished suites {suites_done}"
        else:
            outcome = f"no suite finished, so nothing in {args.out} was replaced"
        print(f"\ninterrupted: {outcome}", file=sys.stderr)
        return INTERRUPTED


def measure(args: argparse.Namespace, argv: list[str], suites_done: list[str]) -> int:
    """Run the requested suites, appending each finished one to `suites_done`."""
    from rlli_jax import benchmarking

    info = benchmarking.machine_info()
    print(f"machine: {info}")
    measurements, skipped = [], []
    act_costs, act_profiles, profile_error = [], [], None
    parts = {}

    def add(suite_results: list) -> None:
        # Print each suite's rows when it ends, so a long run shows its progress and a run
        # stopped by a time limit keeps the suites it finished in its log.
        suite_measurements = [m for m in suite_results if isinstance(m, benchmarking.Measurement)]
        suite_skipped = [m for m in suite_results if isinstance(m, benchmarking.SkippedCase)]
        measurements.extend(suite_measurements)
        skipped.extend(suite_skipped)
        print_table([m.as_dict() for m in suite_measurements], [c.as_dict() for c in suite_skipped])
        sys.stdout.flush()

    def save(suite: str) -> dict:
        # Rewrite the outputs after each suite, so a run stopped later (Ctrl-C, a time limit)
        # keeps the suites it finished in benchmark.json too.
        records = [m.as_dict() for m in measurements]
        skipped_records = [case.as_dict() for case in skipped]
        ratios = speed_ratios(records, skipped_records)
        ratios.update(glue_ratios(records, parts, skipped_records))
        document = {
            "command": shlex.join(["python", "scripts/benchmark.py", *argv]),
            "time_utc": datetime.now(timezone.utc).isoformat(),
            "machine": info,
            "suites_requested": [name for name in SUITES if name in args.suite],
            "suites_done": [*suites_done, suite],
            "records": records,
            "skipped": skipped_records,
            "ratios": ratios,
            "train_parts_s": {str(n): p for n, p in parts.items()},
            "act_cost_analysis": act_costs,
            "act_profile_envs": args.profile_envs,
            "act_profile": act_profiles,
            "act_profile_error": profile_error,
        }
        write_outputs(args.out, document)
        suites_done.append(suite)  # only once written, for the message after a Ctrl-C
        return document

    document = None
    if "env" in args.suite:
        add(
            benchmarking.benchmark_env(
                args.num_envs, num_steps=args.num_steps, repeats=args.repeats
            )
            + [
                benchmarking.benchmark_numpy_reference(
                    args.numpy_envs, num_steps=args.num_steps, repeats=args.repeats
                )
            ]
        )
        document = save("env")
    if "act" in args.suite:
        add(
            benchmarking.benchmark_act(
                args.num_envs, num_calls=args.num_steps, repeats=args.repeats
            )
        )
        act_costs = benchmarking.act_cost_analysis()
        if args.profile_envs:
            # A profiler that fails (no CUPTI on a GPU host, a trace format jax cannot read)
            # must not cost the timings measured so far, so the run goes on without it.
            try:
                act_profiles = benchmarking.act_profile(
                    args.profile_envs,
                    args.out / "profile",
                    num_calls=args.num_steps,
                    repeats=args.repeats,
                )
            except Exception as error:  # noqa: BLE001  (any profiler failure)
                profile_error = f"{type(error).__name__}: {error}"
                print(
                    f"act profile failed, continuing without it: {profile_error}", file=sys.stderr
                )
        document = save("act")
    if "update" in args.suite:
        add(benchmarking.benchmark_update(num_updates=args.num_steps, repeats=args.repeats))
        document = save("update")
    if "train" in args.suite:
        add(benchmarking.benchmark_train(args.train_envs, repeats=args.repeats))
        for num_envs in args.train_envs:
            result, reason = benchmarking.call_unless_out_of_memory(
                lambda num_envs=num_envs: benchmarking.benchmark_train_parts(
                    num_envs, repeats=args.repeats
                )
            )
            if reason is None:
                parts[num_envs] = result
            else:
                case = benchmarking.SkippedCase("train", TRAIN_PARTS_CASE, num_envs, reason)
                add([case])
        document = save("train")
    if "sweep" in args.suite:
        add(
            benchmarking.benchmark_sweep(
                args.sweep_members, num_envs=args.sweep_envs, repeats=args.repeats
            )
        )
        document = save("sweep")

    for name, value in document["ratios"].items():
        print(f"{name}: {format_ratio(value)}")
    if skipped:
        print(f"skipped {len(skipped)} case(s) that ran out of memory, listed in the tables")
    if act_costs:
        print_act_costs(act_costs)
    if act_profiles:
        print_act_profile(act_profiles)
    print(f"wrote benchmark.json, benchmark.md and benchmark.png to {args.out}")
    return 0


if __name__ == "__main__":
    code = main(sys.argv[1:])
    if code == INTERRUPTED:
        from rlli_jax.cli import exit_process  # jax is imported by then

        exit_process(code)
    sys.exit(code)
