"""The layout's one rule: the book (gmlib/book/) stands on the library, never under it. Every import statement of
every library file is read (the source, not a run); then a fresh interpreter shows that `import gmlib` loads none
of the book, while the book's public names still answer from `gmlib`."""
import ast
import subprocess
import sys
from pathlib import Path

import pytest

import gmlib

PACKAGE = Path(gmlib.__file__).resolve().parent
BOOK = PACKAGE / "book"
LIBRARY = sorted(p for p in PACKAGE.rglob("*.py") if BOOK not in p.parents)


def imported_modules(path: Path) -> list:
    """The absolute module names a file imports (relative imports resolved against its package)."""
    package = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts[:-1])
    names = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module
            names += [module] + [f"{module}.{alias.name}" for alias in node.names]
    return names


def test_the_import_reader_sees_relative_and_absolute_imports(tmp_path):
    assert "gmlib.book.study" in imported_modules(BOOK / "elpv.py")  # `from .study import Study`, in a function
    assert "gmlib.store" in imported_modules(BOOK / "records.py")      # `from ..store import Store`


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_no_library_file_imports_the_book(path):
    found = [m for m in imported_modules(path) if m == "gmlib.book" or m.startswith("gmlib.book.")]
    if path == PACKAGE / "__init__.py":
        found = []  # its __getattr__ loads the book by name when asked for, never at import (the next test)
    assert not found, f"{path.relative_to(PACKAGE.parent)} imports {found}: the library must not depend on the book"


def test_importing_gmlib_loads_none_of_the_book_and_its_names_still_answer():
    code = ("import sys, gmlib\n"
            "assert not [m for m in sys.modules if m.startswith('gmlib.book')], 'import gmlib loaded the book'\n"
            "from gmlib import findings, palette\n"
            "assert gmlib.book.study.Study is gmlib.Study\n"
            "import gmlib.book.study, gmlib.book.findings\n"
            "assert gmlib.Study is gmlib.book.study.Study and findings is gmlib.book.findings\n"
            "try:\n    gmlib.no_such_name\nexcept AttributeError as e:\n    assert 'no_such_name' in str(e)\n"
            "else:\n    raise SystemExit('an unknown name answered')\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PACKAGE.parent)
    assert done.returncode == 0, done.stderr
