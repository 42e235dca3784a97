"""Read a Severstal `train.csv` in either format into one table of non-empty (ImageId, ClassId, EncodedPixels) rows.

Formats: the competition's `ImageId_ClassId,EncodedPixels` (4 rows per image, empty cells for no defect) and today's
`ImageId,ClassId,EncodedPixels` (only non-empty pairs). Every RLE is validated; errors name the file and CSV line.
Duplicates: identical repeated rows are dropped with a warning; two rows giving one (image, class) different masks
are an error.
"""
import warnings
from pathlib import Path

import pandas as pd

from .rle import IMAGE_SHAPE, rle_runs

__all__ = ["CLASS_NAMES", "REAL_CLASS_COUNTS", "read_labels"]

CLASS_NAMES = {1: "pit", 2: "edge crack", 3: "scratches", 4: "rolled-in scale"}
REAL_CLASS_COUNTS = {1: 897, 2: 247, 3: 5150, 4: 801}  # images carrying each class in the real train set (12,568)
OLD_HEADER = ["ImageId_ClassId", "EncodedPixels"]
NEW_HEADER = ["ImageId", "ClassId", "EncodedPixels"]


def read_labels(csv_path, shape=IMAGE_SHAPE) -> pd.DataFrame:
    """-> DataFrame(ImageId str, ClassId int 1-4, EncodedPixels str, line int), one row per non-empty pair.

    `line` is the 1-based line of the CSV file the row came from (the header is line 1).
    """
    path = Path(csv_path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label file not found")
    if not path.read_bytes().strip():
        raise ValueError(f"{path}: empty CSV; expected a header {','.join(NEW_HEADER)} "
                         f"or {','.join(OLD_HEADER)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", pd.errors.ParserWarning)  # extra fields would be silently cut
            raw = pd.read_csv(path, dtype=str, keep_default_na=False, skip_blank_lines=False, index_col=False)
    except (pd.errors.ParserError, pd.errors.ParserWarning, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: not a readable CSV ({exc})") from exc
    raw = raw.fillna("")  # short rows
    header = [c.strip() for c in raw.columns]
    raw.columns = header
    lines = pd.Series(range(2, len(raw) + 2), index=raw.index)  # blank lines are kept to count lines, then dropped
    blank = (raw == "").all(axis=1)
    raw, lines = raw[~blank], lines[~blank].to_numpy()
    if header == NEW_HEADER:
        table = pd.DataFrame({"ImageId": raw["ImageId"].str.strip(), "ClassId": raw["ClassId"].str.strip(),
                              "EncodedPixels": raw["EncodedPixels"].str.strip(), "line": lines})
    elif header == OLD_HEADER:
        key = raw["ImageId_ClassId"].str.strip()
        bad = ~key.str.contains("_", regex=False)
        if bad.any():
            i = int(bad.to_numpy().argmax())
            raise ValueError(f"{path}, line {lines[i]}: ImageId_ClassId {key.iloc[i]!r} has no '_<class>' suffix")
        parts = key.str.rsplit("_", n=1, expand=True)
        table = pd.DataFrame({"ImageId": parts[0], "ClassId": parts[1],
                              "EncodedPixels": raw["EncodedPixels"].str.strip(), "line": lines})
    else:
        raise ValueError(f"{path}: unknown or missing header {','.join(header)!r}; expected "
                         f"{','.join(NEW_HEADER)} or {','.join(OLD_HEADER)} (headerless CSVs are not accepted)")

    for row in table.itertuples(index=False):
        where = f"{path}, line {row.line} ({row.ImageId}, class {row.ClassId})"
        if not row.ImageId:
            raise ValueError(f"{path}, line {row.line}: empty ImageId")
        if row.ClassId not in {"1", "2", "3", "4"}:
            raise ValueError(f"{where}: class id must be 1-4, got {row.ClassId!r}")
        try:
            rle_runs(row.EncodedPixels, shape[0] * shape[1])
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
    table["ClassId"] = table["ClassId"].astype(int)
    table = _drop_duplicates(table, path)
    table = table[table["EncodedPixels"] != ""]
    return table.sort_values(["ImageId", "ClassId"]).reset_index(drop=True)


def _drop_duplicates(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """Identical repeats -> dropped with a warning; one (image, class) with two different masks -> ValueError."""
    same = table.duplicated(["ImageId", "ClassId", "EncodedPixels"])
    if same.any():
        warnings.warn(f"{path}: dropped {int(same.sum())} identical duplicate row(s), first at line "
                      f"{int(table['line'][same].iloc[0])}", stacklevel=3)
        table = table[~same]
    clash = table.duplicated(["ImageId", "ClassId"], keep=False)
    if clash.any():
        first = table[clash].iloc[0]
        rows = table[clash & (table["ImageId"] == first.ImageId) & (table["ClassId"] == first.ClassId)]
        raise ValueError(f"{path}, lines {', '.join(map(str, rows['line']))}: conflicting masks for "
                         f"({first.ImageId}, class {first.ClassId})")
    return table
