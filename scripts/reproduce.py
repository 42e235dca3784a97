"""Run the whole study: execute every notebook in notebooks/ with papermill into results/, in order.

Usage: python scripts/reproduce.py [--profile quick|paper] [--only 03] [-p NAME VALUE ...]
Parameters given with -p are passed to every notebook that declares them (checked with papermill.inspect_notebook).
"""
import argparse
import ast
import sys
import time
from pathlib import Path

import papermill as pm

ROOT = Path(__file__).resolve().parents[1]


def parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=["quick", "paper"], default="quick")
    ap.add_argument("--only", action="append", default=[], help="run notebooks whose name starts with this")
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    args = ap.parse_args(argv)

    results = Path(args.results)
    results.mkdir(parents=True, exist_ok=True)
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        notebooks = [nb for nb in notebooks if any(nb.name.startswith(o) for o in args.only)]
    if not notebooks:
        sys.exit("no notebooks selected")
    extra = {name: parse_value(value) for name, value in args.param}

    failures, summary = [], []
    for nb in notebooks:
        declared = pm.inspect_notebook(str(nb))
        if not declared:
            failures.append((nb.name, "no cell tagged 'parameters'"))
            continue
        params = {"PROFILE": args.profile, "RESULTS_DIR": str(results)}
        params.update(extra)
        params = {k: v for k, v in params.items() if k in declared}
        out = results / nb.name
        start = time.perf_counter()
        print(f"==> {nb.name} {params}", flush=True)
        try:
            pm.execute_notebook(str(nb), str(out), parameters=params, cwd=str(nb.parent), progress_bar=False)
            summary.append((nb.name, "ok", time.perf_counter() - start))
        except Exception as exc:  # keep going: later notebooks may not need this one
            failures.append((nb.name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            summary.append((nb.name, "FAILED", time.perf_counter() - start))

    print("\nsummary")
    for name, status, seconds in summary:
        print(f"  {name:40s} {status:7s} {seconds:7.1f} s")
    for name, why in failures:
        print(f"  {name}: {why}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
