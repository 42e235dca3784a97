"""Run the whole study: execute every notebook in notebooks/ with papermill into results/, in order.

Usage: python scripts/reproduce.py [--profile quick|paper] [--only 03] [-p NAME VALUE ...] [--fresh] [--index-only]
Parameters given with -p are passed to every notebook that declares them (checked with papermill.inspect_notebook:
a name that no selected notebook declares is an error). The chapters read their expensive results from the store
(data/store/) and compute only what is missing; --fresh recomputes every record (resumable: a killed run goes on
where it stopped when started again with --fresh, and the marker is removed once every chapter has run).
Afterwards results/index.md collects every chapter's summary.json and the environment of the run (the paper's
Table 2); --index-only rewrites it from what is in results/ without running anything.
"""
import argparse
import ast
import json
import re
import sys
import time
from pathlib import Path

import nbformat
import papermill as pm
import zmq
from traitlets.config import Config

from gmlib.store import FRESH_MARKER
from gmlib.utils import atomic_open, environment

ROOT = Path(__file__).resolve().parents[1]
# Curve-encrypted kernel sockets where the kernel spec supports them (ipykernel's does). Over plain TCP, ipykernel
# >= 7 logs "Kernel is running over TCP without encryption..." to the terminal once per notebook.
KERNEL_CONFIG = Config(KernelManager={"transport_encryption": "auto" if zmq.has("curve") else "disabled"})
SHOWN_AS_COLUMNS = ("profile", "network", "seed")  # summary keys with a column of their own in index.md


def parse_value(text):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


# ---------------------------------------------------------------------------------------------------------------
# progress bars in stored outputs

_CURSOR_UP = re.compile(r"\x1b\[(\d*)A")
_TOKEN = re.compile(r"(\n|\x1b\[\d*A)")


def collapse_progress(text: str) -> str:
    """Render text as a terminal would for carriage returns and cursor-up escapes (text-mode tqdm, nested bars).

    Each line keeps its last state; lines that a closed bar blanked go. Text without either is returned unchanged.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    lines, row, redrawn = [""], 0, set()
    for token in _TOKEN.split(text):
        if token == "\n":
            row += 1
            if row == len(lines):
                lines.append("")
        elif up := _CURSOR_UP.fullmatch(token):
            row = max(row - int(up.group(1) or 1), 0)
        elif token:
            parts = token.split("\r")
            for part in parts:  # each part overwrites the line from its start
                lines[row] = part + lines[row][len(part):]
            if len(parts) > 1:
                redrawn.add(row)
    kept = [line.rstrip() if i in redrawn else line for i, line in enumerate(lines)]
    out = "\n".join(line for i, line in enumerate(kept) if line or i not in redrawn)
    return out + "\n" if text.endswith("\n") and out and not out.endswith("\n") else out


def _merge_streams(outputs):
    merged = []
    for out in outputs:
        last = merged[-1] if merged else None
        if out.output_type == "stream" and last and last.output_type == "stream" and last.name == out.name:
            last.text += out.text
        else:
            merged.append(out)
    return merged


def clean_progress(nb):
    """Keep only the last state of each progress line in the stream outputs (stdout, stderr) of every code cell.

    Consecutive stream outputs of one name are merged, rendered with collapse_progress, and dropped if left empty.
    """
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        outputs = _merge_streams(cell.outputs)
        for out in outputs:
            if out.output_type == "stream":
                out.text = collapse_progress(out.text)
        cell.outputs = _merge_streams([out for out in outputs if out.output_type != "stream" or out.text])
    return nb


# ---------------------------------------------------------------------------------------------------------------
# results/index.md

def _cell(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, list):
        return "[" + ", ".join(_cell(v) for v in value) + "]"
    return str(value).replace("|", "\\|").replace("\n", " ")


def headline(summary: dict) -> str:
    """A summary's scalar entries (and short lists of scalars) as "key=value, ...": nested tables are left out."""
    items = []
    for key, value in summary.items():
        short_list = isinstance(value, list) and len(value) <= 4 and not any(isinstance(v, (dict, list)) for v in value)
        if key not in SHOWN_AS_COLUMNS and (short_list or not isinstance(value, (dict, list))):
            items.append(f"{key}={_cell(value)}")
    return ", ".join(items) or "—"


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(data).__name__}")
    return data


def chapter_row(results: Path, chapter: str) -> list:
    """[chapter, status, profile, network, seed, wall time, headline] from results/<chapter>.ipynb (papermill's run
    record: duration, exception) and results/<chapter>/summary.json; "—" where either lacks a value."""
    notebook, summary_path = results / f"{chapter}.ipynb", results / chapter / "summary.json"
    run = _read_json(notebook).get("metadata", {}).get("papermill", {}) if notebook.is_file() else {}
    summary = _read_json(summary_path) if summary_path.is_file() else None
    status = "FAILED" if run.get("exception") else "ok" if summary is not None else "no summary"
    seconds = run.get("duration")
    summary = summary or {}
    return [chapter, status, *(_cell(summary.get(key)) for key in SHOWN_AS_COLUMNS),
            "—" if seconds is None else f"{seconds:.1f} s", headline(summary)]


def write_index(results) -> Path:
    """Write results/index.md: one row per chapter found in `results` (an executed notebook or a summary.json),
    then the environment of this machine. Needs no notebook run; written atomically (temp file + os.replace)."""
    results = Path(results)
    if not results.is_dir():
        raise FileNotFoundError(f"results folder {results} does not exist")
    chapters = sorted({p.stem for p in results.glob("[0-9][0-9]_*.ipynb")}
                      | {p.parent.name for p in results.glob("[0-9][0-9]_*/summary.json")})
    lines = ["# Results", "", "| chapter | status | profile | network | seed | wall time | headline numbers |",
             "|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(chapter_row(results, c)) + " |" for c in chapters]
    lines += ["", "## Environment", "", "| item | value |", "|---|---|"]
    lines += [f"| {key} | {_cell(value)} |" for key, value in environment().items()]
    lines += ["", "torch_threads is torch's default in the batch runner; each notebook sets its own (THREADS).", ""]
    path = results / "index.md"
    with atomic_open(path, "w") as f:  # a reader never sees half a file
        f.write("\n".join(lines))
    return path


# ---------------------------------------------------------------------------------------------------------------

def run_notebook(nb: Path, out: Path, params: dict) -> None:
    """Execute nb into out with papermill (cwd: the notebook's folder), then collapse progress bars in out."""
    out.unlink(missing_ok=True)  # a stale notebook from an earlier run must not stand for this one
    failed = True
    try:
        pm.execute_notebook(str(nb), str(out), parameters=params, cwd=str(nb.parent), progress_bar=False,
                            config=KERNEL_CONFIG)
        failed = False
    finally:
        if out.is_file():  # papermill writes it early, and with the traceback when a cell fails
            executed = clean_progress(nbformat.read(out, as_version=4))
            if failed:  # papermill flags failed cells, not e.g. a kernel that never started: index.md reads this
                executed.metadata.setdefault("papermill", {})["exception"] = True
            nbformat.write(executed, out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", choices=["quick", "paper"], default="quick")
    ap.add_argument("--only", action="append", default=[], help="run notebooks whose name starts with this")
    ap.add_argument("--results", default=str(ROOT / "results"))
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    ap.add_argument("--index-only", action="store_true", help="only rewrite results/index.md from results/")
    ap.add_argument("--fresh", action="store_true", help="recompute every record of the store (resumable)")
    ap.add_argument("--store", default=str(ROOT / "data" / "store"))
    args = ap.parse_args(argv)

    results = Path(args.results)
    if args.index_only:
        print(f"wrote {write_index(results)}")
        return 0
    results.mkdir(parents=True, exist_ok=True)
    notebooks = sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    if args.only:
        notebooks = [nb for nb in notebooks if any(nb.name.startswith(o) for o in args.only)]
    if not notebooks:
        sys.exit("no notebooks selected")
    extra = {name: parse_value(value) for name, value in args.param}
    declared = {nb.name: pm.inspect_notebook(str(nb)) for nb in notebooks}
    known = set().union(*declared.values())
    unknown = sorted(set(extra) - known)
    if unknown:
        sys.exit(f"unknown parameter(s) {', '.join(unknown)}: no selected notebook declares them; "
                 f"they declare {', '.join(sorted(known))}")
    marker = Path(args.store) / FRESH_MARKER
    if args.fresh and not marker.is_file():  # kept across a kill, so the next --fresh run resumes
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.write_text(repr(time.time()))

    failures, summary = [], []
    for nb in notebooks:
        if not declared[nb.name]:
            failures.append((nb.name, "no cell tagged 'parameters'"))
            continue
        params = {"PROFILE": args.profile, "RESULTS_DIR": str(results), "STORE_DIR": str(Path(args.store))}
        params.update(extra)
        params = {k: v for k, v in params.items() if k in declared[nb.name]}
        start = time.perf_counter()
        print(f"==> {nb.name} {params}", flush=True)
        try:
            run_notebook(nb, results / nb.name, params)
            summary.append((nb.name, "ok", time.perf_counter() - start))
        except Exception as exc:  # keep going: later notebooks may not need this one
            failures.append((nb.name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__))
            summary.append((nb.name, "FAILED", time.perf_counter() - start))

    print("\nsummary")
    for name, status, seconds in summary:
        print(f"  {name:40s} {status:7s} {seconds:7.1f} s")
    for name, why in failures:
        print(f"  {name}: {why}")
    if args.fresh and not failures:
        marker.unlink(missing_ok=True)
    print(f"\nwrote {write_index(results)}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
