"""Benchmark start-up: how long a fresh Python process takes to import the package.

Every command-line entry point (``train_net.py``, ``demo/demo.py``, the tools) and every
process that ``train_net.py --num-gpus N`` starts pays this before any work. Each statement
of ``--statements`` runs in a new interpreter, ``--repeats`` rounds; with several
``--checkout`` folders (for instance a worktree of another commit), the checkouts take turns
within each round, so that they share the machine's disturbances and their ratio is
measured in one run. Each keeps its median round.

The modules that the package should not load until they are used (matplotlib with
detectron2's visualizer, scipy.optimize for the matcher) are listed as loaded or not, from
the last round of each checkout.

Prints a table and, at the end, the results as JSON.

Usage:
    python tools/benchmark_startup.py [--repeats 5] [--checkout DIR ...]
"""

import argparse
import json
import os
import statistics
import sys
import time
from typing import Dict, List

from mask2former.utils.benchmarking import run_child

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STATEMENTS = ("import torch", "import detectron2.engine", "import mask2former", "import train_net")
# loaded only by the code that uses them (see tests/test_imports.py)
DEFERRED = ("matplotlib", "scipy.optimize")


def time_statement(checkout: str, statement: str) -> Dict:
    """Seconds a fresh interpreter takes to run ``statement`` in ``checkout``, and which of
    DEFERRED it loaded."""
    report = f"import json, sys; print(json.dumps([m for m in {DEFERRED!r} if m in sys.modules]))"
    environment = dict(os.environ, PYTHONPATH=checkout, PYTHONWARNINGS="ignore")
    start = time.perf_counter()
    loaded = run_child(
        [sys.executable, "-c", f"{statement}\n{report}"],
        f"{statement!r} in {checkout}",
        cwd=checkout,
        env=environment,
    )
    return {"seconds": time.perf_counter() - start, "loaded": loaded}


def run(checkouts: List[str], statements: List[str], repeats: int) -> List[Dict]:
    times = {(c, s): [] for c in checkouts for s in statements}
    loaded = {}
    for _ in range(repeats):
        for statement in statements:
            for checkout in checkouts:
                measured = time_statement(checkout, statement)
                times[checkout, statement].append(measured["seconds"])
                loaded[checkout, statement] = measured["loaded"]
    rows = []
    for statement in statements:
        first = statistics.median(times[checkouts[0], statement])
        for checkout in checkouts:
            median = statistics.median(times[checkout, statement])
            rows.append(
                {
                    "statement": statement,
                    "checkout": checkout,
                    "median_s": round(median, 2),
                    "min_s": round(min(times[checkout, statement]), 2),
                    "vs_first_checkout": round(first / median, 2),
                    "deferred_modules_loaded": loaded[checkout, statement],
                }
            )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--checkout",
        action="append",
        default=None,
        help="repository folder to measure (repeatable; default: this one); the ratio column "
        "is the first checkout's median over each one's",
    )
    parser.add_argument("--statements", nargs="+", default=list(STATEMENTS))
    args = parser.parse_args(argv)
    checkouts = [os.path.abspath(path) for path in (args.checkout or [ROOT])]
    for checkout in checkouts:
        if not os.path.isfile(os.path.join(checkout, "mask2former", "__init__.py")):
            parser.error(f"--checkout {checkout}: no mask2former package in that folder")
    rows = run(checkouts, args.statements, args.repeats)
    print(f"median of {args.repeats} fresh interpreters (Python {sys.version.split()[0]})")
    print(f"{'statement':26} {'median s':>9} {'min s':>7} {'speed':>6}  checkout, deferred loaded")
    for row in rows:
        print(
            f"{row['statement']:26} {row['median_s']:9.2f} {row['min_s']:7.2f} "
            f"{row['vs_first_checkout']:6.2f}  {row['checkout']}, "
            f"{' '.join(row['deferred_modules_loaded']) or '-'}"
        )
    print(json.dumps({"repeats": args.repeats, "results": rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
