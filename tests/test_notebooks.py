"""The chapters as teaching material: every one has a title, a parameters cell, a Summary and exercises with
answers (in a cell of their own, tagged `solution`), its prose quotes no measured figure that its own outputs do not
contain, and its stored outputs are for a reader: no progress bars or warnings (nothing on stderr), no nbval markers
in the code, no raw reprs, no table wider than 8 columns. tests/test_course.py checks the rest of the course
scaffolding (issue 20).

A figure is a number with decimals or a percentage in a markdown cell (outside code spans, maths, the exercises and
the answers, which derive their own arithmetic). It must appear, within the rounding it is written with, among the
numbers of the chapter's stored outputs or its parameters cell (a percentage may also be a fraction there: 40 % = 0.4).
Sentences that name their source are exempt: the paper's figures, NNI's, the real Kaggle data's.
"""
import re
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from helpers.chapters import CHAPTERS, is_solution

FIGURE = re.compile(r"(?<![\w.×/-])(\d+(?:\.\d+)?)(\s*%)?(?!\w|×|/|\.\d)")
CITED = re.compile(r"paper|Hao et al|\bNNI\b|He et al|Liu et al|Kaggle data|real (strips|data|Severstal)", re.I)
NOT_PROSE = re.compile(r"`[^`]*`|\$[^$]*\$|https?://\S+|\d+\s*[×x]\s*\d+")  # code, maths, links, 3×3 and 256x1600
RAW_REPR = re.compile(r"^Name: .*, dtype: \w+$|^dtype: \w+$|object at 0x[0-9a-f]+|^tensor\(|^<Figure size", re.M)
SENTENCE = re.compile(r"(?<=[.;:!?])\s+(?=[A-Z(*])|\n\n|\n\s*[-*]\s")
MAX_COLUMNS = 8  # a stored table's columns as a reader sees them: its index levels and its data columns
ROW = re.compile(r"<tr\b.*?</tr>", re.S)


def sentences(markdown: str):
    """The prose sentences of `markdown` that quote this work's own numbers: no code, maths, cited or exercises."""
    prose = NOT_PROSE.sub(" ", markdown.split("## Exercises")[0])
    return [" ".join(s.split()) for s in SENTENCE.split(prose) if not CITED.search(s)]


def figures(markdown: str):
    """(value, is_percentage, sentence) for every figure the prose quotes, cited sentences and exercises left out."""
    for sentence in sentences(markdown):
        for m in FIGURE.finditer(sentence):
            if "." in m.group(1) or m.group(2):
                yield m.group(1), bool(m.group(2)), sentence


MULTIPLE = re.compile(r"(?<![\w.×/-])(\d+(?:\.\d+)?)\s*×(?!\s*\d)")  # "1.63× faster", not "3 × 4"
RATIO_WORDS = {r"\btwice\b|\bdoubles?\b|\bdoubled\b|\btwo times\b": 2.0, r"\bhalves\b|\bhalf as\b": 0.5,
               r"\bthree times\b|\btriples?\b": 3.0}
VERSUS = re.compile(r"(\d+(?:\.\d+)?)\s*(?:ms\s*)?(?:vs\.?|versus|against)\s*(\d+(?:\.\d+)?)\s*ms")


def comparisons_contradicted(markdown: str) -> list:
    """Sentences whose comparison its own numbers contradict, where the sentence holds what it takes to check it:
    "twice" / "doubles" / "halves" / "three times" next to two figures none of whose ratios is within 10 % of it,
    and "faster" / "slower" next to "a vs b ms" that says the opposite (the first named is the subject)."""
    out = []
    for sentence in sentences(markdown):
        values = [float(m.group(1)) for m in FIGURE.finditer(sentence) if "." in m.group(1)]
        values += [float(v) for v in MULTIPLE.findall(sentence)]
        for words, factor in RATIO_WORDS.items():
            if re.search(words, sentence, re.I) and len(values) >= 2:
                ratios = [a / b for a in values for b in values if b and a is not b]
                if not any(abs(r / factor - 1) <= 0.1 for r in ratios):
                    out.append(f"{factor:g}x not among the ratios of {values}: {sentence[:160]}")
        for a, b in VERSUS.findall(sentence):
            faster, slower = re.search(r"\bfast", sentence, re.I), re.search(r"\bslow", sentence, re.I)
            if faster and not slower and float(a) > float(b) or slower and not faster and float(a) < float(b):
                out.append(f"{a} vs {b} ms contradicts the sentence: {sentence[:160]}")
    return out


def multiples(markdown: str):
    """(value, sentence) for every "N×" the prose quotes (speedups, ratios), cited sentences and exercises left out."""
    return [(m.group(1), s) for s in sentences(markdown) for m in MULTIPLE.finditer(s)]


def measured(nb) -> list:
    """Every number in the stored outputs and in the parameters cell."""
    texts = []
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        if "parameters" in cell.metadata.get("tags", []):
            texts.append(cell.source)
        for out in cell.get("outputs", []):
            texts.append(out.get("text", ""))
            texts += [out.get("data", {}).get(kind, "") for kind in ("text/plain", "text/markdown", "text/html")]
    return [float(v) for t in texts for v in re.findall(r"\d+(?:\.\d+)?(?:e-?\d+)?", "".join(t))]


def unbacked_in(markdown: str, numbers: list) -> list:
    """The figures and multiples ("1.63×") of `markdown` that none of `numbers` backs, within the rounding they are
    written with."""
    out = []
    quoted = [*figures(markdown), *((v, False, s) for v, s in multiples(markdown) if "." in v)]
    for value, percent, sentence in quoted:
        x = float(value)
        tol = 0.5 * 10 ** -(len(value.split(".")[1]) if "." in value else 0) + 1e-12
        if not any(abs(n - x) <= tol or (percent and abs(100 * n - x) <= tol) for n in numbers):
            out.append(f"{value}{' %' if percent else ''} in: {sentence[:160]}")
    return out


def prose(nb) -> list:
    """The markdown cells a figure is checked in: all but the answers."""
    return [c.source for c in nb.cells if c.cell_type == "markdown" and not is_solution(c)]


def unbacked(nb) -> list:
    numbers = measured(nb)
    return [f for source in prose(nb) for f in unbacked_in(source, numbers)]


def clutter(nb) -> list:
    """What a reader should not see: anything stored from stderr (progress bars, warnings), an nbval marker left in
    the code instead of the cell tag `nbval-ignore-output`, and a raw repr as a cell's only rendering."""
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if "NBVAL_" in cell.source:
            found.append(f"cell {i}: an nbval comment in the code (tag the cell nbval-ignore-output instead)")
        for out in cell.get("outputs", []):
            if out.get("name") == "stderr":
                found.append(f"cell {i}: stderr stored: {out.text[:60]!r}")
            data = out.get("data", {})
            plain = out.get("text", "") if out.output_type == "stream" else data.get("text/plain", "")
            if (out.output_type == "stream" or set(data) == {"text/plain"}) and RAW_REPR.search(plain):
                found.append(f"cell {i}: a raw repr: {RAW_REPR.search(plain).group(0)[:60]!r}")
    return found


def test_the_clutter_check_finds_bars_markers_and_reprs():
    code = nbformat.v4.new_code_cell
    nb = nbformat.v4.new_notebook(cells=[
        code("# NBVAL_IGNORE_OUTPUT\nrun()", outputs=[nbformat.v4.new_output("stream", name="stderr", text="7%|▋ ")]),
        code("s", outputs=[nbformat.v4.new_output("execute_result", data={"text/plain": "a 1\nName: x, dtype: int64"})]),
        code("t", outputs=[nbformat.v4.new_output("execute_result", data={"text/plain": "<Figure size 640x480>",
                                                                          "image/png": "iVBOR"})]),
        code("ok", metadata={"tags": ["nbval-ignore-output"]},
             outputs=[nbformat.v4.new_output("stream", name="stdout", text="steps: 12\n")])])
    assert [f.split(":")[0] for f in clutter(nb)] == ["cell 0", "cell 0", "cell 1"]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_stored_outputs_are_clean(path):
    found = clutter(nbformat.read(path, as_version=4))
    assert not found, "\n".join(found)


def table_widths(out) -> list:
    """The widths of the tables in one stored output, index levels included: per HTML table (pandas' frames and
    stylers) the most cells in a row of its body; per text table (a frame printed with print or to_string: lines
    whose fields are two or more spaces apart, three such lines or more) the most fields in a line."""
    data = out.get("data", {})
    html = "".join(data.get("text/html", ""))
    if html:
        bodies = re.findall(r"<tbody>(.*?)</tbody>", html, re.S)
        return [max((len(re.findall(r"<t[hd]\b", row)) for row in ROW.findall(body)), default=0) for body in bodies]
    text = out.get("text", "") if out.output_type == "stream" else data.get("text/plain", "")
    fields = [len(re.split(r"\s{2,}", line.strip())) for line in "".join(text).splitlines()]
    return [max(fields)] if sum(f >= 2 for f in fields) >= 3 else []


def wide_tables(nb) -> list:
    """The stored tables wider than MAX_COLUMNS, by cell."""
    return [f"cell {i}: a table of {width} columns (at most {MAX_COLUMNS}: split it, or drop columns the prose does "
            "not read and write the whole table to a CSV)"
            for i, cell in enumerate(nb.cells) if cell.cell_type == "code"
            for out in cell.get("outputs", []) for width in table_widths(out) if width > MAX_COLUMNS]


def test_the_width_check_counts_index_levels_and_columns_of_html_and_text_tables():
    frame = pd.DataFrame([[1.0] * 7, [2.0] * 7], columns=[f"c{j}" for j in range(7)])
    wide = frame.assign(c7=0.0).set_index(["c0", "c1"])  # 2 index levels + 6 columns: 8
    wider = frame.assign(c7=0.0, c8=0.0).set_index(["c0", "c1"])  # 9
    show = lambda df: nbformat.v4.new_output("execute_result", data={"text/html": df.to_html(),
                                                                      "text/plain": df.to_string()})
    printed = nbformat.v4.new_output("stream", text="a frame:\n" + frame.assign(c7=0.0, c8=0.0).to_string() + "\n")
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("wide", outputs=[show(wide)]),
                                         nbformat.v4.new_code_cell("wider", outputs=[show(wider)]),
                                         nbformat.v4.new_code_cell("print", outputs=[printed])])
    assert table_widths(nb.cells[0].outputs[0]) == [8]
    assert [f.split(":")[0] for f in wide_tables(nb)] == ["cell 1", "cell 2"] and "10 columns" in wide_tables(nb)[1]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_stored_tables_are_at_most_8_columns_wide(path):
    found = wide_tables(nbformat.read(path, as_version=4))
    assert not found, "\n".join(found)


def test_the_checker_flags_an_unbacked_figure_and_spares_cited_ones():
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("print(0.948)", outputs=[nbformat.v4.new_output("stream", text="Dice 0.948\n")]),
        nbformat.v4.new_markdown_cell("Dice reaches 0.95 here. It then falls to 0.777, and params by 63.3 %. "
                                      "The paper reports FLOPs −48.81 % at 40 %. A `0.123` in code is a name.\n\n"
                                      "## Exercises\n\n1. What is 0.5 ** 4? 0.0625.")])
    assert unbacked(nb) == ["0.777 in: It then falls to 0.777, and params by 63.3 %.",
                            "63.3 % in: It then falls to 0.777, and params by 63.3 %."]


def test_the_comparison_check_catches_a_twice_and_a_faster_that_the_numbers_deny():
    text = ("Coupled buys about twice the speedup of or-merge (2.19 vs 1.62). Then int8 doubles it: 1.6× against 0.8×. "
            "The exact widths are faster (90 vs 111 ms). The rounded ones are faster (111 vs 90 ms). "
            "It is twice as big. The paper's network is twice as fast at 2.5 vs 1.1.")
    found = comparisons_contradicted(text)
    assert len(found) == 2 and "2.19, 1.62" in found[0] and found[1].startswith("111 vs 90 ms")


def test_a_multiple_the_outputs_do_not_hold_is_unbacked():
    assert unbacked_in("It runs 1.63× faster, in a file 9× smaller.", [1.6301]) == []
    assert unbacked_in("It runs 1.73× faster.", [1.6301]) == ["1.73 in: It runs 1.73× faster."]


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_comparisons_agree_with_their_numbers(path):
    nb = nbformat.read(path, as_version=4)
    texts = prose(nb)
    texts += ["".join(o.get("data", {}).get("text/markdown", "")) for c in nb.cells if c.cell_type == "code"
              for o in c.get("outputs", [])]
    found = [f for t in texts for f in comparisons_contradicted(t)]
    assert not found, "\n".join(found)


def test_readme_comparisons_agree_with_their_numbers():
    found = comparisons_contradicted((Path(__file__).resolve().parents[1] / "README.md").read_text())
    assert not found, "\n".join(found)


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_prose_quotes_only_figures_the_chapter_produces(path):
    assert not unbacked(nbformat.read(path, as_version=4)), "\n".join(unbacked(nbformat.read(path, as_version=4)))


@pytest.mark.parametrize("path", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_has_title_parameters_summary_and_exercises(path):
    nb = nbformat.read(path, as_version=4)
    first = nb.cells[0]
    assert first.cell_type == "markdown" and first.source.startswith(f"# {path.stem[:2]} ·"), "title cell"
    assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1, "one cell tagged parameters"
    markdown = "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")
    summary = re.search(r"^## Summary\n(.*?)(?=^## |\Z)", markdown, re.S | re.M)
    assert summary, "a '## Summary' section"
    sentences = [s for s in re.split(r"(?<=[.!?])\s+", summary.group(1).strip()) if s]
    assert 3 <= len(sentences) <= 6, f"Summary has {len(sentences)} sentences, want 3-5 (plus where the numbers are)"
    exercises = [c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## Exercises\n")]
    assert len(exercises) == 1, "one cell that is the '## Exercises' section"
    assert 2 <= len(re.findall(r"^\d+\. ", exercises[0], re.M)) <= 3, "2-3 exercises"
    answers = [c.source for c in nb.cells if is_solution(c)]
    assert answers and "<details>" in answers[0] and "Answers" in answers[0], "worked answers in <details>"


def test_readme_findings_quote_only_figures_the_chapters_produce():
    """The README's Findings section is rendered from the store through the chapters: every figure it quotes must
    be among the stored outputs of the study's chapters (05-12), within its rounding."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = re.search(r"^## Findings\n(.*?)(?=^## |\Z)", readme, re.S | re.M)
    assert section, "README.md has a '## Findings' section"
    chapters = [nbformat.read(p, as_version=4) for p in CHAPTERS if "05" <= p.stem[:2] <= "12"]
    assert list(figures(section.group(1))), "the Findings quote no figure at all"
    missing = unbacked_in(section.group(1), [n for nb in chapters for n in measured(nb)])
    assert not missing, "\n".join(missing)


def test_readme_deployment_advice_quotes_only_what_chapter_10_measured():
    """The README's advice for deployment is chapter 10's: every figure and multiple in it is among that chapter's
    stored outputs or parameters, within its rounding."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    advice = re.search(r"^\*\*For deployment.*?(?=\n\n|\n`gmlib.latency`)", readme, re.S | re.M)
    assert advice, "README.md has the '**For deployment' paragraph"
    chapter = nbformat.read(next(p for p in CHAPTERS if p.stem.startswith("10_")), as_version=4)
    assert len(list(figures(advice.group(0)))) + len(multiples(advice.group(0))) >= 4, "the advice quotes its numbers"
    missing = unbacked_in(advice.group(0), measured(chapter))
    assert not missing, "\n".join(missing)
