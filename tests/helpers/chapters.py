"""The chapters as the tests of the book read them (test_notebooks, test_course, test_book): the notebooks in order,
the four parts they come in, and which cells hold the worked answers."""
from pathlib import Path

CHAPTERS = sorted((Path(__file__).resolve().parents[2] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
PARTS = {"I · The method": ["01", "02", "03"], "II · Reproducing the paper": ["04", "05", "06", "07", "08"],
         "III · Beyond the paper": ["09", "10", "11", "12", "13"], "IV · Your network": ["14"]}


def is_solution(cell) -> bool:
    """A cell of worked answers (tagged `solution`): its arithmetic is its own, and student copies drop it."""
    return "solution" in cell.metadata.get("tags", [])
