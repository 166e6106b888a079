"""Start-up cost: how long `import dlforge`, `import dlforge.training` and `dlforge --help` take, against
`import torch` alone, measured in the same run (issue 19).

Each source tree given (default: this checkout's src/) is timed interleaved with the others, N times, so that
the machine's load hits them alike. For each statement: the median wall time of a fresh `python -c STMT`, and
dlforge's own share: the `-X importtime` cumulative time of what is imported after torch (what dlforge adds on
top of it). `dlforge --help` runs `python -m dlforge --help` with the tree on PYTHONPATH.

    python benchmarks/bench_import_time.py                    # this checkout
    python benchmarks/bench_import_time.py OLD/src src        # before/after: a checkout of an older commit, then this

Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

STATEMENTS = ("import torch", "import dlforge", "import dlforge.training")


def wall_time(command: list[str], tree: str) -> float:
    start = time.perf_counter()
    subprocess.run(command, env=dict(os.environ, PYTHONPATH=tree), check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def share_after_torch(statement: str, tree: str) -> tuple[float, int]:
    """Milliseconds of imports after torch's (-X importtime cumulative of each top-level import), and how many
    dlforge modules were imported."""
    err = subprocess.run([sys.executable, "-X", "importtime", "-c", "import torch; " + statement],
                         env=dict(os.environ, PYTHONPATH=tree), capture_output=True, text=True, check=True).stderr
    rows = [line.split("|") for line in err.splitlines() if line.startswith("import time:") and "[us]" not in line]
    last_torch = max(i for i, row in enumerate(rows) if row[2].strip() == "torch")
    after = rows[last_torch + 1:]
    own_us = sum(int(row[0].split(":")[1]) for row in after)  # self times: nothing counted twice
    return own_us / 1e3, sum(row[2].strip().startswith("dlforge") for row in after)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", default=[str(Path(__file__).resolve().parents[1] / "src")])
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    walls = {(t, s): [] for t in args.trees for s in (*STATEMENTS, "dlforge --help")}
    shares = {(t, s): [] for t in args.trees for s in STATEMENTS[1:]}
    modules = {}
    for _ in range(args.repeats):
        for tree in args.trees:
            for statement in STATEMENTS:
                walls[(tree, statement)].append(wall_time([sys.executable, "-c", statement], tree))
            walls[(tree, "dlforge --help")].append(wall_time([sys.executable, "-m", "dlforge", "--help"], tree))
            for statement in STATEMENTS[1:]:
                milliseconds, count = share_after_torch(statement, tree)
                shares[(tree, statement)].append(milliseconds)
                modules[(tree, statement)] = count
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; median of {args.repeats}")
    print("| tree | statement | wall (s) | dlforge's share after torch (ms) | dlforge modules |")
    print("|---|---|---|---|---|")
    record = {"bench": "import_time", "repeats": args.repeats, "results": []}
    for tree in args.trees:
        for statement in (*STATEMENTS, "dlforge --help"):
            wall = statistics.median(walls[(tree, statement)])
            share = statistics.median(shares[(tree, statement)]) if (tree, statement) in shares else None
            count = modules.get((tree, statement))
            print(f"| {tree} | `{statement}` | {wall:.2f} | {'' if share is None else f'{share:.0f}'} | "
                  f"{'' if count is None else count} |")
            record["results"].append({"tree": tree, "statement": statement, "wall_s": round(wall, 3),
                                      "share_ms": None if share is None else round(share, 1), "modules": count})
    print(json.dumps(record))


if __name__ == "__main__":
    main()
