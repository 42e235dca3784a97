"""Student copies of the chapters: every cell tagged `solution` (the worked answers) is dropped, everything else,
stored outputs and cell ids included, is kept as it is.

Part I's exercises in code are three cells: the student's stub (tagged `exercise`, its body raises
NotImplementedError), the worked answer (a code cell tagged `solution`, dropped here) and the check (tagged `check`).
In the copy the check follows the stub directly, its stored output (the worked answer's "right") is cleared, and
run, it prints "not written yet" until the student fills the stub in, so the copy runs from top to bottom.

Usage: python scripts/student_copy.py [NOTEBOOK | NN ...] [--out results/student]
With no argument every chapter (notebooks/NN_*.ipynb) is copied; NN (e.g. 07) names a chapter by its number. Every
name is checked before anything is written: one that is not a notebook is an error that names it.

Why not nbstripout: its `--drop-tagged-cells="solution"` drops the same cells, but it also strips every output unless
it is given `--keep-output` (and renumbers the cell ids unless given `--keep-id`), and it would be one dependency
more; nbformat, which reads and writes the notebooks here, comes with papermill and JupyterLab already.

The copies keep the chapters' relative paths (`DATA_DIR = "../data/synthetic"`, `STORE_DIR = "../data/store"`,
`RESULTS_DIR = "../results"`), which lead from `notebooks/` to a checkout's data. Run them from a folder one level
below a checkout's root, e.g. the `notebooks/` folder of a student's own clone (`--out that/clone/notebooks`): opened
where they are written by default, in `results/student/`, they would look for `results/data/` and find an empty
store, and compute every record again.
"""
import argparse
import copy
import re
import sys
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
TAG = "solution"
CHECK = "check"


def is_solution(cell) -> bool:
    return TAG in cell.get("metadata", {}).get("tags", [])


def student_copy(nb):
    """A copy of `nb` without its cells tagged `solution`, and with no stored output in its cells tagged `check`
    (they said the worked answer was right); `nb` itself is left as it is."""
    out = copy.deepcopy(nb)
    out.cells = [c for c in out.cells if not is_solution(c)]
    for cell in out.cells:
        if CHECK in cell.get("metadata", {}).get("tags", []):
            cell.outputs, cell.execution_count = [], None
    return out


def resolve(name: str) -> Path | None:
    """The notebook `name` stands for: a path to an .ipynb file, or a chapter number NN; None if there is none."""
    path = Path(name)
    if path.is_file() and path.suffix == ".ipynb":
        return path
    if re.fullmatch(r"\d\d", name):
        found = sorted(NOTEBOOKS.glob(f"{name}_*.ipynb"))
        return found[0] if len(found) == 1 else None
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("notebooks", nargs="*", metavar="NOTEBOOK",
                    help="a notebook's path or a chapter's number (default: every chapter)")
    ap.add_argument("--out", default=str(ROOT / "results" / "student"), help="folder for the copies")
    args = ap.parse_args(argv)
    if args.notebooks:
        paths = [resolve(name) for name in args.notebooks]
        missing = [name for name, path in zip(args.notebooks, paths) if path is None]
        if missing:
            ap.error("no such notebook: " + ", ".join(missing))
    else:
        paths = sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))
        if not paths:
            ap.error(f"no chapters in {NOTEBOOKS}")
    out = Path(args.out)
    if any(out.resolve() == p.resolve().parent for p in paths):
        ap.error(f"--out {out} is where the notebooks are read from: the copies would overwrite them")
    out.mkdir(parents=True, exist_ok=True)
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        student = student_copy(nb)
        dropped = len(nb.cells) - len(student.cells)
        if not dropped:
            print(f"warning: {path.name} has no cell tagged {TAG!r}; copied as it is", file=sys.stderr)
        nbformat.write(student, out / path.name)
        print(f"{out / path.name}: {dropped} {TAG} cell{'s' if dropped != 1 else ''} dropped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
