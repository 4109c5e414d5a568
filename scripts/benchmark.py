"""Measure rlli_jax throughput, print a table, and write JSON, Markdown tables and a PNG.

    python scripts/benchmark.py --suite env --out runs/benchmark

Each case compiles once (compile time reported apart), runs one warm-up call, then is timed
over --repeats calls synchronised with block_until_ready; the table shows the median with min
and max. With the act suite, the MLP actor and the diffusion actor at T = 5 are also traced with
jax.profiler (traces under OUT/profile) and their time is split by part of the actor.
"""

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_NUM_ENVS = [1, 64, 1024, 4096, 16384]
SUITES = ("env", "act", "update", "train", "sweep")


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
        help="numbers of parallel environments to measure",
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
        default=4096,
        help="with the act suite, profile the MLP actor and the diffusion actor at T = 5 with "
        "jax.profiler at this many envs and split their time by part (0: no profile)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per case (>= 1)")
    parser.add_argument("--out", type=Path, default=Path("runs/benchmark"), help="output folder")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats = {args.repeats} is invalid: it must be >= 1")
    if args.numpy_envs < 1:
        parser.error(f"--numpy-envs = {args.numpy_envs} is invalid: it must be >= 1")
    if args.num_steps < 1:
        parser.error(f"--num-steps = {args.num_steps} is invalid: it must be >= 1")
    for flag in ("num_envs", "train_envs", "sweep_members"):
        values = getattr(args, flag)
        if any(n < 1 for n in values):
            option = "--" + flag.replace("_", "-")
            parser.error(f"{option} = {values} is invalid: every value must be >= 1")
    if args.profile_envs < 0:
        parser.error(f"--profile-envs = {args.profile_envs} is invalid: it must be >= 0")
    if args.sweep_envs < 1:
        parser.error(f"--sweep-envs = {args.sweep_envs} is invalid: it must be >= 1")
    args.suite = args.suite or list(SUITES)
    return args


def print_table(records: list[dict]) -> None:
    header = f"{'suite':<6} {'num_envs':>9} {'median/s':>12} {'min/s':>12} {'max/s':>12} "
    header += f"{'compile s':>10}  case"
    print(header)
    for record in records:
        print(
            f"{record['suite']:<6} {record['num_envs']:>9} {record['throughput_median']:>12.4g} "
            f"{record['throughput_min']:>12.4g} {record['throughput_max']:>12.4g} "
            f"{record['compile_s']:>10.2f}  {record['case']}"
        )


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


def speed_ratios(records: list[dict]) -> dict[str, float]:
    """Ratios measured in this run.

    jax_env_<n>_over_numpy: JAX env steps/s at n envs over the NumPy reference's.
    diffusion_T<t>_cost_over_mlp_<n>: time per action of the diffusion actor with t denoising
    steps over the MLP actor's, at n envs.
    """
    ratios = {}
    reference = [r for r in records if r["case"].startswith("NumPy reference")]
    if reference:
        numpy_rate = reference[0]["throughput_median"]
        for r in records:
            if r["suite"] == "env" and not r["case"].startswith("NumPy reference"):
                ratios[f"jax_env_{r['num_envs']}_over_numpy"] = r["throughput_median"] / numpy_rate
    mlp = {r["num_envs"]: r for r in records if r["suite"] == "act" and r["case"] == "MLP actor"}
    for r in records:
        if r["suite"] == "act" and r["case"].startswith("diffusion") and r["num_envs"] in mlp:
            steps = r["case"].split("T=")[1]
            name = f"diffusion_T{steps}_cost_over_mlp_{r['num_envs']}"
            ratios[name] = mlp[r["num_envs"]]["throughput_median"] / r["throughput_median"]
    return ratios


def glue_ratios(records: list[dict], parts: dict[int, dict[str, float]]) -> dict[str, float]:
    """train_glue_<n>: seconds per training iteration over the sum of its parts timed alone
    (exploring act + env step + the gradient steps), at n envs; 1 means no glue cost."""
    ratios = {}
    for record in records:
        if record["suite"] != "train" or not record["case"].endswith("env steps"):
            continue
        num_envs = record["num_envs"]
        if num_envs not in parts:
            continue
        iterations = record["work_per_call"] / num_envs
        per_iteration = record["median_s"] / iterations
        ratios[f"train_glue_{num_envs}"] = per_iteration / sum(parts[num_envs].values())
    return ratios


def markdown_report(document: dict) -> str:
    """Return the run's tables in Markdown, one per suite, then the ratios, the XLA cost
    analysis and the profile, ready to paste into docs/benchmarks.md."""
    machine = document["machine"]
    lines = [
        f"Command: `{document['command']}`",
        "",
        f"Machine: {machine['device']} ({machine['backend']} backend, {machine['num_devices']} "
        f"device(s)), {machine['processor']} host with {machine['cpu_count']} CPUs, "
        f"jax {machine['jax_version']}, Python {machine['python']}, {document['time_utc']}.",
        "",
    ]
    records = document["records"]
    for suite in SUITES:
        rows = [r for r in records if r["suite"] == suite]
        if not rows:
            continue
        lines += [f"#### {suite}", ""]
        lines += ["| case | num_envs | median /s | min /s | max /s | compile s |"]
        lines += ["|---|---:|---:|---:|---:|---:|"]
        for r in rows:
            lines.append(
                f"| {r['case']} | {r['num_envs']} | {r['throughput_median']:.4g} | "
                f"{r['throughput_min']:.4g} | {r['throughput_max']:.4g} | {r['compile_s']:.1f} |"
            )
        lines.append("")
    if document["ratios"]:
        lines += ["#### ratios", "", "| ratio | value |", "|---|---:|"]
        lines += [f"| {name} | {value:.1f}x |" for name, value in document["ratios"].items()]
        lines.append("")
    costs = document["act_cost_analysis"]
    if costs:
        lines += [f"#### XLA cost analysis per action (batch {costs[0]['batch']})", ""]
        lines += ["| actor | flops | x MLP | transcendentals | bytes accessed |"]
        lines += ["|---|---:|---:|---:|---:|"]
        for cost in costs:
            lines.append(
                f"| {cost['case']} | {cost['flops']:,.0f} | {cost['flops_over_mlp']:.2f} | "
                f"{cost['transcendentals']:,.0f} | {cost['bytes_accessed']:,.0f} |"
            )
        lines.append("")
    for profile in document["act_profile"]:
        lines += [f"#### profile of the {profile['case']} at {profile['num_envs']} envs", ""]
        lines += ["| part | kind | ns per action | share |", "|---|---|---:|---:|"]
        for part in profile["parts"]:
            lines.append(
                f"| {part['part']} | {part['kind']} | {part['ns_per_action']:.0f} | "
                f"{part['share']:.1%} |"
            )
        lines.append("")
    return "\n".join(lines)


def plot(records: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(6, 4))
    for case in sorted({r["case"] for r in records}):
        rows = sorted((r for r in records if r["case"] == case), key=lambda r: r["num_envs"])
        axis.errorbar(
            [r["num_envs"] for r in rows],
            [r["throughput_median"] for r in rows],
            yerr=[
                [r["throughput_median"] - r["throughput_min"] for r in rows],
                [r["throughput_max"] - r["throughput_median"] for r in rows],
            ],
            marker="o",
            label=case,
        )
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("num_envs")
    axis.set_ylabel("items per second (median, min-max bars)")
    axis.legend(fontsize=7)
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    from rlli_jax import benchmarking

    info = benchmarking.machine_info()
    print(f"machine: {info}")
    measurements = []
    if "env" in args.suite:
        measurements += benchmarking.benchmark_env(
            args.num_envs, num_steps=args.num_steps, repeats=args.repeats
        )
        measurements.append(
            benchmarking.benchmark_numpy_reference(
                args.numpy_envs, num_steps=args.num_steps, repeats=args.repeats
            )
        )
    if "act" in args.suite:
        measurements += benchmarking.benchmark_act(
            args.num_envs, num_calls=args.num_steps, repeats=args.repeats
        )
    if "update" in args.suite:
        measurements += benchmarking.benchmark_update(
            num_updates=args.num_steps, repeats=args.repeats
        )
    act_costs, act_profiles, profile_error = [], [], None
    if "act" in args.suite:
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
    parts = {}
    if "train" in args.suite:
        measurements += benchmarking.benchmark_train(args.train_envs, repeats=args.repeats)
        for num_envs in args.train_envs:
            parts[num_envs] = benchmarking.benchmark_train_parts(num_envs, repeats=args.repeats)
    if "sweep" in args.suite:
        measurements += benchmarking.benchmark_sweep(
            args.sweep_members, num_envs=args.sweep_envs, repeats=args.repeats
        )
    records = [m.as_dict() for m in measurements]
    print_table(records)
    ratios = speed_ratios(records)
    ratios.update(glue_ratios(records, parts))
    for name, value in ratios.items():
        print(f"{name}: {value:.1f}x")
    if act_costs:
        print_act_costs(act_costs)
    if act_profiles:
        print_act_profile(act_profiles)

    args.out.mkdir(parents=True, exist_ok=True)
    document = {
        "command": "python scripts/benchmark.py " + " ".join(argv),
        "time_utc": datetime.now(timezone.utc).isoformat(),
        "machine": info,
        "records": records,
        "ratios": ratios,
        "train_parts_s": {str(n): p for n, p in parts.items()},
        "act_cost_analysis": act_costs,
        "act_profile": act_profiles,
        "act_profile_error": profile_error,
    }
    (args.out / "benchmark.json").write_text(json.dumps(document, indent=2))
    (args.out / "benchmark.md").write_text(markdown_report(document))
    plot(records, args.out / "benchmark.png")
    print(f"wrote benchmark.json, benchmark.md and benchmark.png to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
