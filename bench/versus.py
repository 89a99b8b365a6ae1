"""Two commits side by side: bench/service.py from each checkout, in alternating rounds.

    .venv/bin/python bench/versus.py BEFORE_COMMIT [AFTER_COMMIT] --rounds 2 -- --sizes 1000,100000

Each commit is checked out in a temporary git worktree (AFTER defaults to this working tree)
and benchmarked with that checkout's own bench/service.py and server code, one after the
other, `--rounds` times (A B A B ...), so that both see the same machine load. The table gives
each scenario's median throughput and p99 per side and their ratio (after / before). Arguments
after `--` go to bench/service.py.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_bench(checkout: Path, extra: list[str], out: Path) -> dict:
    # The checkout's directory comes first on sys.path (bench/service.py inserts its root, and
    # the server subprocess starts in it), so each side runs its own code.
    subprocess.run(
        [sys.executable, "bench/service.py", *extra, "--out", str(out)],
        cwd=checkout,
        check=True,
        stdout=subprocess.DEVNULL,
    )
    return json.loads(out.read_text())


def scenarios(report: dict) -> dict[tuple[str, str], dict]:
    return {
        (size, name): figures
        for size, result in report["sizes"].items()
        for name, figures in result["http"].items()
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", help="commit to compare against")
    parser.add_argument("after", nargs="?", help="commit (default: this working tree)")
    parser.add_argument("--rounds", type=int, default=2)
    args, extra = parser.parse_known_args()
    extra = [arg for arg in extra if arg != "--"]
    runs: dict[str, list[dict]] = {"before": [], "after": []}
    with tempfile.TemporaryDirectory(prefix="opengallery-versus-") as tmp:
        checkouts = {}
        for side, commit in (("before", args.before), ("after", args.after)):
            if commit is None:
                checkouts[side] = ROOT
                continue
            path = Path(tmp) / side
            subprocess.run(
                ["git", "worktree", "add", "--detach", "-q", str(path), commit],
                cwd=ROOT,
                check=True,
            )
            checkouts[side] = path
        try:
            for round_ in range(args.rounds):
                for side in ("before", "after"):
                    print(f"round {round_ + 1}: {side}", file=sys.stderr, flush=True)
                    out = Path(tmp) / f"{side}-{round_}.json"
                    runs[side].append(run_bench(checkouts[side], extra, out))
        finally:
            for path in checkouts.values():
                if path != ROOT:
                    subprocess.run(
                        ["git", "worktree", "remove", "--force", str(path)], cwd=ROOT, check=False
                    )
    before = [scenarios(report) for report in runs["before"]]
    after = [scenarios(report) for report in runs["after"]]
    print(f"Before: `{args.before}`; after: `{args.after or 'working tree'}`; ")
    print(f"{args.rounds} alternating rounds of `bench/service.py {' '.join(extra)}`; medians.\n")
    print(
        "| gallery | scenario | before /s | after /s | after/before "
        "| before p99 ms | after p99 ms | server CPU ms/probe, before -> after |"
    )
    print("| ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for key in before[0]:
        b_rate = statistics.median(run[key]["per_s"] for run in before)
        a_rate = statistics.median(run[key]["per_s"] for run in after)
        b_p99 = statistics.median(run[key]["p99_ms"] for run in before)
        a_p99 = statistics.median(run[key]["p99_ms"] for run in after)
        # Server CPU per probe (sequential scenarios only): steadier than rates on a shared host.
        cpu = "-"
        if all("cpu_ms_per_probe" in run[key] for run in before + after):
            b_cpu = statistics.median(run[key]["cpu_ms_per_probe"] for run in before)
            a_cpu = statistics.median(run[key]["cpu_ms_per_probe"] for run in after)
            cpu = f"{b_cpu:.3f} -> {a_cpu:.3f}"
        size, name = key
        print(
            f"| {int(size):,} | {name} | {b_rate:.0f} | {a_rate:.0f} | {a_rate / b_rate:.2f} "
            f"| {b_p99:.2f} | {a_p99:.2f} | {cpu} |"
        )
    loads = [
        run["sizes"][size]["load_average_1min"]
        for run in runs["before"] + runs["after"]
        for size in run["sizes"]
    ]
    print(f"\nOne-minute load average at each server start: {min(loads):.1f}-{max(loads):.1f}.")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
