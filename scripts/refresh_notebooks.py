"""Execute notebooks in place with their default (quick) parameters and strip run metadata, keeping outputs and tags.

Usage: python scripts/refresh_notebooks.py [notebooks/01_geometric_median.ipynb ...]
Committed notebooks keep their outputs because nbval compares a fresh run against them; progress bars keep only
their last state (reproduce.clean_progress). The quick profile's synthetic strips are made first, so no chapter
stores the generator's progress bar.
"""
import sys
from pathlib import Path

import nbformat
import papermill as pm

import gmlib

from reproduce import KERNEL_CONFIG, clean_progress

ROOT = Path(__file__).resolve().parents[1]


def strip(path: Path) -> None:
    """Drop papermill's run metadata and the injected-parameters tag, collapse progress bars; keep outputs and tags."""
    nb = nbformat.read(path, as_version=4)
    nb.cells = [c for c in nb.cells if "papermill-error-cell-tag" not in c.metadata.get("tags", [])]
    nb.metadata.pop("papermill", None)
    nb.metadata.pop("widgets", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            tags = [t for t in cell.metadata.get("tags", []) if t != "injected-parameters"]
            cell.metadata["tags"] = tags
            if not tags:
                cell.metadata.pop("tags")
            for out in cell.outputs:
                if out.get("output_type") != "execute_result":
                    out.pop("execution_count", None)
                out.get("metadata", {}).pop("execution", None)
    nbformat.write(clean_progress(nb), path)


def main(paths):
    paths = [Path(p) for p in paths] or sorted((ROOT / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    cfg = gmlib.book.study.PROFILES["quick"][0]
    gmlib.data.ensure_data(ROOT / "data" / "synthetic", cfg.n_images, cfg.data_seed)
    for path in paths:
        print(f"==> {path.name}", flush=True)
        try:
            pm.execute_notebook(str(path), str(path), cwd=str(path.parent), progress_bar=False, config=KERNEL_CONFIG)
        finally:
            strip(path)  # a failed run leaves papermill's error banners in the notebook: never commit those
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
