"""The chapters as a course (issue 20). Every chapter opens with a box, a blockquote right after its title: its part
of the book, 2-4 learning objectives, prerequisites that name only earlier chapters, a study time (a whole number of
minutes, an estimate) and the compute time of the README's chapter table (measured). Before its exercises it has a
`## Try it` section of one or two tasks, each naming a parameter of the chapter's parameters cell with a new literal
value and a budget from a measurement (the README's time for the chapter, or the stored records' times). Its answers
are one markdown cell tagged `solution`, right after the exercises and folded in `<details>`, with one answer per
exercise, and nothing of them is left in the exercises cell. `scripts/student_copy.py` writes the chapters without
their solution cells, everything else as it was, and refuses a name that is not a notebook.

Part I (01-03) also has exercises in code (issue 33), at least two a chapter: a cell tagged `exercise` that defines
a function whose body raises NotImplementedError, a code cell tagged `solution` (and `hide-input`, folded in the book)
with the worked answer, and a cell tagged `check` that calls `exercises.check("name", function)`. Each check is run
here three ways: on the stub (it must say "not written yet", so the student copy runs on), on the worked answer
("right") and on a wrong answer of this file ("wrong").

Each check returns the problems it finds, so the tests below also show that a broken chapter is caught.
"""
import ast
import contextlib
import io
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from helpers.chapters import CHAPTERS, PARTS, is_solution

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "student_copy.py"
LABELS = ("**Learning objectives.** After this chapter you can", "**Prerequisites:**", "**Study time:**",
          "**Compute time:**")
ASSIGNMENT = re.compile(r"`([A-Z][A-Z0-9_]*) = ([^`]+)`")


def readme_table() -> dict:
    """{"01": ("I · The method", "< 1 min"), ...}: each chapter's part and quick-run time in the README's table (a
    part's name is written out on its first row only)."""
    rows = re.findall(r"^\| ([^|`]+?) \| `(\d\d)_\w+` \|.*\| ([^|]+?) \|$", (ROOT / "README.md").read_text(), re.M)
    names = {part.split(" · ")[0]: part for part, _, _ in rows if " · " in part}
    return {chapter: (names.get(part, part), time) for part, chapter, time in rows}


def readme_compute_times() -> dict:
    """{"01": "< 1 min", ...}: the quick-run column of the README's chapter table."""
    return {chapter: time for chapter, (_, time) in readme_table().items()}


def part_of(number: int) -> str:
    return next(name for name, chapters in PARTS.items() if f"{number:02d}" in chapters)


def parameters(nb) -> dict:
    """{NAME: default} of the cell tagged `parameters`, as papermill reads it (literal assignments)."""
    cell, = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    return {t.id: ast.literal_eval(node.value) for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def exercises_index(nb):
    found = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## Exercises\n")]
    return found[0] if len(found) == 1 else None


def section(nb, heading: str):
    """The text of the markdown cell that is the section `## heading`, or None."""
    cells = [c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith(f"## {heading}\n")]
    return cells[0] if len(cells) == 1 else None


def numbered(text: str) -> list:
    """The items of the numbered list in `text`, each with its continuation lines."""
    return [m.group(1) for m in re.finditer(r"^\d+\. (.*?)(?=^\d+\. |\Z)", text, re.S | re.M)]


def box_problems(nb, number: int, compute_time: str) -> list:
    """What is wrong with the chapter's box (the second cell)."""
    if len(nb.cells) < 2 or nb.cells[1].cell_type != "markdown":
        return ["no markdown cell after the title"]
    box = nb.cells[1].source
    found = []
    if not all(line.startswith(">") for line in box.splitlines()):
        found.append("the box is not one blockquote (every line starting with '>')")
    text = re.sub(r"^> ?", "", box, flags=re.M)
    if not text.startswith(f"**Part {part_of(number)}**, chapter {number} of {len(CHAPTERS)}\n"):
        found.append(f"first line is not '**Part {part_of(number)}**, chapter {number} of {len(CHAPTERS)}'")
    found += [f"no {label}" for label in LABELS if label not in text]
    objectives = re.search(r"After this chapter you can\n\n((?:- .*\n(?:  .*\n)*)+)", text)
    bullets = len(re.findall(r"^- ", objectives.group(1), re.M)) if objectives else 0
    if not 2 <= bullets <= 4:
        found.append(f"{bullets} learning objectives, want 2-4 bullets")
    prerequisites = re.search(r"\*\*Prerequisites:\*\* (.*?)(?:\n\n|\Z)", text, re.S)
    later = [n for n in re.findall(r"\b(?:0[1-9]|1[0-2])\b", prerequisites.group(1)) if int(n) >= number] \
        if prerequisites else []
    if later:
        found.append(f"prerequisites name chapter(s) {later}, not before chapter {number}")
    if not re.search(r"\*\*Study time:\*\* about \d+ min\b", text):
        found.append("the study time is not 'about N min' (whole minutes)")
    measured = re.search(r"\*\*Compute time:\*\* (.+?), measured \(the README's chapter table", text)
    if not measured or measured.group(1) != compute_time:
        found.append(f"compute time {measured and measured.group(1)!r}, the README's table says {compute_time!r}")
    if any(len(line) > 120 for line in box.splitlines()):
        found.append("a line of the box is over 120 columns")
    return found


def try_it_problems(nb, compute_time: str) -> list:
    """What is wrong with the chapter's Try it section: where it is, its tasks, their parameters and budgets."""
    text = section(nb, "Try it")
    if text is None:
        return ["no single '## Try it' cell"]
    found = []
    where = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source == text][0]
    summary = [i for i, c in enumerate(nb.cells) if c.cell_type == "markdown" and c.source.startswith("## Summary\n")]
    if not summary or not summary[0] < where < (exercises_index(nb) or 0):
        found.append("Try it is not between the Summary and the Exercises")
    tasks = numbered(text)
    if not 1 <= len(tasks) <= 2:
        found.append(f"{len(tasks)} tasks, want 1 or 2")
    defaults = parameters(nb)
    for k, task in enumerate(tasks, 1):
        named = ASSIGNMENT.findall(task.split("**Budget:**")[0])
        unknown = [name for name, _ in named if name not in defaults]
        if unknown:
            found.append(f"task {k} sets {unknown}, not in the parameters cell")
        changes = []
        for name, value in named:
            try:
                changes.append(name in defaults and ast.literal_eval(value) != defaults[name])
            except (ValueError, SyntaxError):
                found.append(f"task {k}: `{name} = {value}` is not a literal")
        if not any(changes):
            found.append(f"task {k} changes no parameter of the chapter (`NAME = new value`)")
        budget = re.search(r"\*\*Budget:\*\*\s+(.*)", task, re.S)
        budget = " ".join(budget.group(1).split()) if budget else ""
        if not re.search(r"\bmin\b", budget):
            found.append(f"task {k} states no budget in minutes")
        elif compute_time not in budget and "stored record" not in budget:
            found.append(f"task {k}'s budget cites neither the README's {compute_time!r} nor the stored records")
        elif "stored record" in budget and "data/store/" not in text:
            found.append(f"task {k} computes new records but Try it does not say they go to the store (data/store/)")
    if any(len(line) > 120 for line in text.splitlines()):
        found.append("a line of Try it is over 120 columns")
    return found


def solution_problems(nb) -> list:
    """What is wrong with the answers: one markdown solution cell, right after the exercises, nothing left in the
    exercises (the worked answers of exercises in code are code cells, checked by code_exercise_problems)."""
    found = []
    i = exercises_index(nb)
    if i is None:
        return ["no single cell that is the '## Exercises' section"]
    exercises = nb.cells[i].source
    if "<details>" in exercises or "Answers" in exercises:
        found.append("the exercises cell still holds answers")
    solutions = [j for j, c in enumerate(nb.cells) if is_solution(c) and c.cell_type == "markdown"]
    if len(solutions) != 1:
        return found + [f"{len(solutions)} markdown cells tagged solution, want 1"]
    j = solutions[0]
    answers = nb.cells[j]
    if j != i + 1 or answers.cell_type != "markdown":
        found.append("the solution cell is not the markdown cell right after the exercises")
    if not (answers.source.startswith("<details><summary>Answers</summary>")
            and answers.source.rstrip().endswith("</details>")):
        found.append("the answers are not folded in <details><summary>Answers</summary> ... </details>")
    asked, given = len(numbered(exercises)), len(numbered(answers.source))
    if asked != given or not 2 <= asked <= 3:
        found.append(f"{asked} exercises and {given} answers")
    return found


@pytest.fixture(scope="module")
def times():
    found = readme_compute_times()
    assert sorted(found) == [p.name[:2] for p in CHAPTERS], "the README's table has a row per chapter"
    return found


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_opens_with_the_box(path, times):
    found = box_problems(nbformat.read(path, as_version=4), int(path.name[:2]), times[path.name[:2]])
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_has_try_it_tasks_with_parameters_and_budgets(path, times):
    found = try_it_problems(nbformat.read(path, as_version=4), times[path.name[:2]])
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_answers_are_one_solution_cell_apart_from_the_exercises(path):
    found = solution_problems(nbformat.read(path, as_version=4))
    assert not found, "\n".join(found)


def broken(mutate):
    """Chapter 07 with one thing broken by `mutate(nb)`."""
    nb = nbformat.read(next(p for p in CHAPTERS if p.name.startswith("07")), as_version=4)
    mutate(nb)
    return nb


def test_the_checks_catch_a_broken_chapter(times):
    def source(nb, start):
        return next(c for c in nb.cells if c.source.startswith(start))

    def replace(start, old, new):
        def mutate(nb):
            cell = source(nb, start)
            assert old in cell.source
            cell.source = cell.source.replace(old, new)
        return mutate

    def answers_back(nb):
        i = next(i for i, c in enumerate(nb.cells) if is_solution(c))
        nb.cells[i - 1].source += "\n\n" + nb.cells.pop(i).source

    t = times["07"]
    assert box_problems(broken(lambda nb: None), 7, t) == []
    assert box_problems(broken(lambda nb: None), 8, t)[0].startswith("first line")
    assert "compute time" in box_problems(broken(lambda nb: None), 7, "2 min")[0]
    assert box_problems(broken(replace("> **Part", "**Study time:** about 60 min", "**Study time:** an hour")),
                        7, t) == ["the study time is not 'about N min' (whole minutes)"]
    assert "prerequisites name chapter(s) ['08']" in box_problems(
        broken(replace("> **Part", "and 06 (the criteria)", "and 08 (the criteria)")), 7, t)[0]
    assert try_it_problems(broken(lambda nb: None), t) == []
    assert try_it_problems(broken(replace("## Try it", "`LOSSLESS = 0.05`", "`LOSELESS = 0.05`")), t) == [
        "task 1 sets ['LOSELESS'], not in the parameters cell",
        "task 1 changes no parameter of the chapter (`NAME = new value`)"]
    assert try_it_problems(broken(replace("## Try it", "`LOSSLESS = 0.05`", "`LOSSLESS = 0.03`")), t) == [
        "task 1 changes no parameter of the chapter (`NAME = new value`)"]
    assert try_it_problems(broken(replace("## Try it", "**Budget:** about 14 min", "**Budget:** a while")), t) == [
        "task 2 states no budget in minutes"]
    assert try_it_problems(broken(replace("## Try it", "from the stored\n   records' times", "by\n   eye")), t) == [
        "task 2's budget cites neither the README's '< 1 min (store)' nor the stored records"]
    assert try_it_problems(broken(replace("## Try it", "data/store/", "store/")), t) == [
        "task 2 computes new records but Try it does not say they go to the store (data/store/)"]
    assert solution_problems(broken(lambda nb: None)) == []
    assert solution_problems(broken(answers_back)) == [
        "the exercises cell still holds answers", "0 markdown cells tagged solution, want 1"]
    assert solution_problems(broken(replace("<details>", "\n3. ", "\n"))) == ["3 exercises and 2 answers"]


def run_script(*args, cwd=ROOT):
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def student(tmp_path_factory):
    out = tmp_path_factory.mktemp("student")
    proc = run_script("--out", out)
    assert proc.returncode == 0, proc.stderr
    return out


def test_student_copy_drops_the_solution_cells_and_nothing_else(student):
    assert sorted(p.name for p in student.iterdir()) == [p.name for p in CHAPTERS]
    for path in CHAPTERS:
        original, copied = (nbformat.read(p, as_version=4) for p in (path, student / path.name))
        kept = [c for c in original.cells if not is_solution(c)]
        for cell in kept:  # a check's stored output said the worked answer was right: the copy has none
            if "check" in tags(cell):
                cell.outputs, cell.execution_count = [], None
        assert copied.cells == kept, path.name
        assert len(copied.cells) == len(original.cells) - sum(map(is_solution, original.cells)), path.name
        for i, cell in enumerate(copied.cells):  # the student's cell, then straight away its check, not yet run
            if "exercise" in tags(cell):
                assert "check" in tags(copied.cells[i + 1]) and not copied.cells[i + 1].outputs, (path.name, i)
        assert copied.metadata == original.metadata
        assert section(copied, "Exercises") == section(original, "Exercises") is not None, path.name
        assert not any(is_solution(c) or "<summary>Answers" in c.source for c in copied.cells), path.name
        assert not any("NotImplementedError" not in c.source for c in copied.cells if "exercise" in tags(c)), \
            f"{path.name}: an exercise cell of the student copy gives the answer away"


def test_student_copy_of_chosen_chapters(tmp_path):
    proc = run_script("03", ROOT / "notebooks" / CHAPTERS[6].name, "--out", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHAPTERS[2].name, CHAPTERS[6].name]


def test_student_copy_refuses_a_missing_notebook_and_names_it(tmp_path):
    out = tmp_path / "out"
    proc = run_script("03", "notebooks/99_no_such_chapter.ipynb", "--out", out)
    assert proc.returncode != 0
    assert "no such notebook: notebooks/99_no_such_chapter.ipynb" in proc.stderr
    assert not out.exists(), "nothing is written when a name is wrong"


def test_student_copy_never_writes_over_the_chapters():
    before = [p.read_bytes() for p in CHAPTERS]
    proc = run_script("--out", ROOT / "notebooks")
    assert proc.returncode != 0 and "would overwrite them" in proc.stderr
    assert [p.read_bytes() for p in CHAPTERS] == before


def test_make_student_is_a_target_and_documented():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^\.PHONY:.*\bstudent\b", makefile, re.M), "student is a phony target"
    assert re.search(r"^student: \$\(STAMP\)\n\t\$\(PY\) scripts/student_copy\.py$", makefile, re.M)
    assert "make student" in (ROOT / "README.md").read_text()


def test_the_parts_are_the_readmes():
    """The boxes' parts (helpers.chapters.PARTS) are the ones the README's chapter table gives each chapter."""
    table = readme_table()
    assert {chapter: part for chapter, (part, _) in table.items()} == {
        n: name for name, chapters in PARTS.items() for n in chapters}


# ------------------------------------------------------------------------------------------ exercises in code (33)
PART_I = [p for p in CHAPTERS if p.name[:2] in PARTS["I · The method"]]
CHECK_CALL = re.compile(r'^exercises\.check\("(\w+)", (\w+)\)$')
# what the chapters' set-up cells import for their exercises
PRELUDE = "import torch\nfrom torch import nn\nimport gmlib\nfrom gmlib import exercises\n"
# one wrong answer per exercise, a mistake a student makes: each check must call it wrong
WRONG = {
    "l1_scores": "def l1_scores(weight):\n    return weight.flatten(1).norm(dim=1)",  # L2, not L1
    "distance_sums": "def distance_sums(weight):\n    w = weight.flatten(1)\n"
                     "    return ((w[:, None] - w[None]) ** 2).sum(-1).sum(1)",  # squared distances
    "prune_conv_bn": "def prune_conv_bn(conv, bn, keep):\n    import copy\n    from gmlib.shrink import shrink_module\n"
                     "    conv, new_bn = copy.deepcopy(conv), nn.BatchNorm2d(len(keep))\n"
                     "    shrink_module(conv, out=keep)\n    new_bn.weight.data = bn.weight.data[keep].clone()\n"
                     "    new_bn.bias.data = bn.bias.data[keep].clone()\n"
                     "    return conv, new_bn.eval()",  # running statistics forgotten
    "cut_inputs": "def cut_inputs(conv, keep):\n    new = nn.Conv2d(len(keep), conv.out_channels, conv.kernel_size, "
                  "padding=conv.padding, bias=False)\n    new.weight.data = conv.weight.data[:, :len(keep)].clone()\n"
                  "    return new",  # the first columns, not the kept ones
    "conv_macs": "def conv_macs(conv, height, width):\n    kh, kw = conv.kernel_size\n"
                 "    return conv.out_channels * conv.in_channels * kh * kw * height * width",  # no stride, groups
    "count_macs": "def count_macs(model, input_size):\n    total = 0\n    def add(m, i, o):\n        nonlocal total\n"
                  "        total += m.weight[0].numel() * o.numel()\n"
                  "    hooks = [m.register_forward_hook(add) for m in model.modules() if isinstance(m, nn.Conv2d)]\n"
                  "    model.eval()(torch.zeros(1, *input_size))\n    [h.remove() for h in hooks]\n"
                  "    return total",  # the Linear head forgotten
    "magnitude_mask": "def magnitude_mask(weight, sparsity):\n    k = round(sparsity * weight.numel())\n"
                      "    mask = torch.ones(weight.numel(), dtype=torch.bool)\n"
                      "    mask[weight.abs().flatten().topk(k).indices] = False\n"
                      "    return mask.view(weight.shape)",  # the largest zeroed
}


def tags(cell) -> set:
    return set(cell.metadata.get("tags", []))


def exercise_triples(nb) -> list:
    """[(exercise, solution, check) cells] of a chapter, as the cells after each `exercise` cell stand."""
    return [tuple(nb.cells[i:i + 3]) for i, c in enumerate(nb.cells) if "exercise" in tags(c)]


def defined(source: str) -> set:
    return {n.name for n in ast.parse(source).body if isinstance(n, ast.FunctionDef)}


def code_exercise_problems(nb) -> list:
    """What is wrong with a chapter's exercises in code: fewer than two; an exercise cell that is not followed by
    its folded worked answer and a check; a stub that gives the answer away; a check that is not one call of
    exercises.check on the function both cells define; a stored check output that does not say right."""
    from gmlib.book.exercises import EXERCISES
    triples = exercise_triples(nb)
    found = [] if len(triples) >= 2 else [f"{len(triples)} exercises in code, want at least 2"]
    for k, triple in enumerate(triples, 1):
        if len(triple) < 3 or any(c.cell_type != "code" for c in triple):
            found.append(f"exercise {k}: not followed by two code cells")
            continue
        stub, answer, check = triple
        if not {"solution", "hide-input"} <= tags(answer):
            found.append(f"exercise {k}: the cell after it is not tagged solution and hide-input (folded)")
        if "check" not in tags(check):
            found.append(f"exercise {k}: the cell after its answer is not tagged check")
        body = [n for n in ast.parse(stub.source).body if isinstance(n, ast.FunctionDef)]
        if len(body) != 1 or not (len(body[0].body) <= 2 and "NotImplementedError" in ast.unparse(body[0].body[-1])):
            found.append(f"exercise {k}: the exercise cell is not one function whose body raises NotImplementedError")
        call = CHECK_CALL.match(check.source.strip())
        if not call:
            found.append(f"exercise {k}: the check is not one call exercises.check(\"name\", function)")
            continue
        name, fn = call.groups()
        if name not in EXERCISES:
            found.append(f"exercise {k}: no check named {name!r} in gmlib.book.exercises")
        if not fn in defined(stub.source) & defined(answer.source):
            found.append(f"exercise {k}: {fn} is not defined by both the exercise and its answer")
        said = "".join(o.get("text", "") for o in check.get("outputs", []))
        if not said.startswith("right: "):
            found.append(f"exercise {k}: the stored check says {said[:60]!r}, not right")
    return found


def said(source: str, namespace: dict) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(source, namespace)
    return out.getvalue()


@pytest.mark.parametrize("path", PART_I, ids=lambda p: p.stem)
def test_part_one_has_exercises_in_code_with_checks(path):
    found = code_exercise_problems(nbformat.read(path, as_version=4))
    assert not found, "\n".join(found)


def test_the_exercise_check_catches_a_broken_chapter():
    nb = nbformat.read(PART_I[0], as_version=4)
    assert code_exercise_problems(nb) == []
    stub, answer, check = exercise_triples(nb)[0]
    answer.metadata["tags"] = ["solution"]
    stub.source = stub.source.replace('raise NotImplementedError("your code here")', "return weight.abs().sum()")
    check.source = check.source.replace("exercises.check(", "exercises.verdict(")
    assert code_exercise_problems(nb) == [
        "exercise 1: the cell after it is not tagged solution and hide-input (folded)",
        "exercise 1: the exercise cell is not one function whose body raises NotImplementedError",
        "exercise 1: the check is not one call exercises.check(\"name\", function)"]
    nb.cells.remove(stub)
    assert code_exercise_problems(nb)[0] == "1 exercises in code, want at least 2"


def test_every_exercise_has_a_wrong_answer_to_test_its_check():
    from gmlib.book.exercises import EXERCISES
    named = [CHECK_CALL.match(t[2].source.strip()).group(1) for p in PART_I
             for t in exercise_triples(nbformat.read(p, as_version=4))]
    assert sorted(named) == sorted(EXERCISES) == sorted(WRONG)


@pytest.mark.parametrize("path", PART_I, ids=lambda p: p.stem)
def test_each_check_says_not_written_right_and_wrong(path, one_thread):
    """The student's stub is "not written yet" (and does not stop the notebook), the worked answer is right, a wrong
    answer is wrong: every check can fail."""
    for stub, answer, check in exercise_triples(nbformat.read(path, as_version=4)):
        name = CHECK_CALL.match(check.source.strip()).group(1)
        namespace = {}
        exec(PRELUDE, namespace)
        assert said(stub.source + "\n" + check.source, namespace).startswith("not written yet: "), name
        assert said(answer.source + "\n" + check.source, namespace).startswith("right: "), name
        verdict = said(WRONG[name] + "\n" + check.source, namespace)
        assert verdict.startswith("wrong: "), (name, verdict)
