"""Execute notebooks in place with their default (quick) parameters and strip run metadata, keeping outputs and tags.

Usage: python scripts/refresh_notebooks.py [notebooks/01_geometric_median.ipynb ...]
Committed notebooks keep their outputs because nbval compares a fresh run against them.
"""
import sys
from pathlib import Path

import nbformat
import papermill as pm

ROOT = Path(__file__).resolve().parents[1]


def strip(path: Path) -> None:
    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop("papermill", None)
    nb.metadata.get("widgets", None) and nb.metadata.pop("widgets")
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            tags = [t for t in cell.metadata.get("tags", []) if t != "injected-parameters"]
            cell.metadata["tags"] = tags
            if not tags:
                cell.metadata.pop("tags")
            for out in cell.outputs:
                out.pop("execution_count", None) if out.get("output_type") != "execute_result" else None
                out.get("metadata", {}).pop("execution", None)
    nbformat.write(nb, path)


def main(paths):
    paths = [Path(p) for p in paths] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    for path in paths:
        print(f"==> {path.name}", flush=True)
        pm.execute_notebook(str(path), str(path), cwd=str(path.parent), progress_bar=False)
        strip(path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
