"""gmlib.verdicts, the study's one decision rule, on small synthetic tables whose right call is known: equivalent,
ahead, behind, not separated, a difference that is real but below the margin, and one that multiplicity kills; and
the README's verdict sentences, which must be the chapters' own renderings of them."""
import re
from pathlib import Path

import nbformat
import numpy as np
import pandas as pd
import pytest
from scipy import stats

from gmlib import verdicts

from helpers.chapters import CHAPTERS

ROOT = Path(__file__).resolve().parents[1]


def diffs(mean, sd, n):
    """n values with exactly this mean and sample standard deviation."""
    z = np.linspace(-1, 1, n)
    return mean + sd * z / z.std(ddof=1)


def family(*groups, margin=0.01):
    return verdicts.decide(pd.DataFrame([verdicts.summarise(g) for g in groups]), margin)


def test_summarise_matches_scipy_t_test_and_interval():
    d = [0.012, 0.02, 0.005, 0.017, 0.011]
    out = verdicts.summarise(d)
    low, high = stats.t.interval(0.95, len(d) - 1, loc=np.mean(d), scale=stats.sem(d))
    assert out["mean"] == pytest.approx(np.mean(d)) and out["ci"] == pytest.approx((high - low) / 2)
    assert out["p"] == pytest.approx(stats.ttest_1samp(d, 0).pvalue) and out["n"] == 5
    assert verdicts.summarise(d, center=0.01)["p"] == pytest.approx(stats.ttest_1samp(d, 0.01).pvalue)
    assert np.isnan(verdicts.summarise([0.3])["ci"]) and verdicts.summarise([])["n"] == 0


def test_holm_matches_the_step_down_by_hand():
    assert verdicts.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert verdicts.holm([0.5, np.nan, 0.9]) == pytest.approx([1.0, np.nan, 1.0], nan_ok=True)  # 0.9 * 1 raised to 1.0


def test_each_call_where_the_right_one_is_known():
    called = family(diffs(0.0005, 0.002, 5),    # tight around zero: equivalent
                    diffs(0.05, 0.004, 5),      # far past the margin, tight: ahead
                    diffs(-0.05, 0.004, 5),     # the mirror: behind
                    diffs(0.02, 0.03, 3),       # wide: not separated
                    diffs(0.008, 0.0005, 5),    # real (p tiny) but inside the margin: equivalent, never "ahead"
                    diffs(0.009, 0.003, 5))     # real (p < 0.05 after Holm) but below the margin: not separated
    assert list(called["call"]) == ["equivalent", "ahead", "behind", "not separated", "equivalent", "not separated"]
    assert called["p_holm"].iloc[5] < 0.05


def test_multiplicity_kills_a_call_that_one_test_alone_would_make():
    lone = diffs(0.03, 0.03 * np.sqrt(5) / 4.604, 5)  # t = 4.604 on 4 df: p = 0.01
    assert verdicts.summarise(lone)["p"] == pytest.approx(0.01, abs=2e-4)
    assert family(lone)["call"].iloc[0] == "ahead"
    noise = [diffs(0.0, 0.03, 5) for _ in range(19)]  # 19 more comparisons with nothing in them
    crowd = family(lone, *noise)
    assert crowd["call"].iloc[0] == "not separated" and crowd["p_holm"].iloc[0] == pytest.approx(0.2, abs=0.01)


def test_a_single_seed_is_never_called():
    assert family([0.2])["call"].iloc[0] == "not separated"


def test_against_the_bar_is_the_same_rule_with_the_bar_for_zero():
    rows = pd.DataFrame([verdicts.summarise(v, center=0.03) for v in (diffs(0.01, 0.002, 5), diffs(0.05, 0.002, 5),
                                                                       diffs(0.029, 0.004, 3))])
    called = verdicts.against_bar(rows, 0.03)
    assert list(called["call"]) == ["within the bar", "beyond the bar", "undecided"]
    assert called["mean"].iloc[0] == pytest.approx(0.01)


def test_tally_counts_every_call_in_order():
    assert verdicts.tally_text(["ahead", "not separated", "ahead"]) == \
        "ahead 2, behind 0, equivalent 0, not separated 1 of 3"


FINDINGS = re.compile(r"^## Findings\n(.*?)(?=^## |\Z)", re.S | re.M)
BULLET = re.compile(r"^- (\*\*[^*]+\?\*\*.*?)(?=^- |^\S|\Z)", re.S | re.M)


def rendered(paths) -> str:
    """The markdown the chapters rendered (their stored text/markdown outputs), whitespace collapsed."""
    texts = []
    for path in paths:
        for cell in nbformat.read(path, as_version=4).cells:
            for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
                texts.append("".join(out.get("data", {}).get("text/markdown", "")))
    return " ".join(" ".join(texts).split())


def verdict_bullets(readme: str) -> list:
    """The README's verdict sentences: every Findings bullet that opens with a bold question."""
    return [" ".join(b.split()) for b in BULLET.findall(FINDINGS.search(readme).group(1))]


def test_the_bullet_reader_finds_questions_only():
    text = "## Findings\n\n- **Is it?** Yes,\n  0.1 ± 0.2.\n- **A statement.** No.\n\nLimits.\n\n## Next\n"
    assert verdict_bullets(text) == ["**Is it?** Yes, 0.1 ± 0.2."]


def test_every_verdict_in_the_readme_is_the_chapters_rendering_of_it():
    bullets = verdict_bullets((ROOT / "README.md").read_text())
    assert len(bullets) >= 5, "the README's Findings state their verdicts as bold questions"
    chapters = rendered([p for p in CHAPTERS if p.stem[:2] in ("07", "11", "12")])
    missing = [b[:120] for b in bullets if b not in chapters]
    assert not missing, "README verdicts that no chapter renders word for word:\n" + "\n".join(missing)


SENTENCE = re.compile(r"(?<=[.;])\s+")
INTERVAL = re.compile(r"\d ± \d")  # a measured mean ± half-width, not a margin ("inside ± 0.01")


def interval_sentences(text: str) -> list:
    """Every sentence (or clause after a ';') of `text` that states an interval, whitespace collapsed."""
    return [x.removeprefix("- ") for x in SENTENCE.split(" ".join(text.split())) if INTERVAL.search(x)]  # no bullet mark


def test_the_sentence_reader_keeps_only_intervals():
    text = "A loses\n+0.02 ± 0.01 Dice; B is fast. Inside ± 0.01 is a margin. C is +0.1 ± 0.2."
    assert interval_sentences(text) == ["A loses +0.02 ± 0.01 Dice;", "C is +0.1 ± 0.2."]


def test_every_interval_in_the_readme_is_a_chapters_rendering_of_it():
    """Beyond the Findings bullets (chapter 10's int8 candidate in the deployment section, say): an interval the
    README states must be word for word what a chapter rendered from the store."""
    chapters = rendered([p for p in CHAPTERS if p.stem[:2] in ("07", "10", "11", "12")])
    sentences = interval_sentences((ROOT / "README.md").read_text())
    assert any("int8" in x for x in sentences), "the README states the int8 candidate's intervals"
    missing = [x[:120] for x in sentences if x not in chapters]
    assert not missing, "README intervals that no chapter renders word for word:\n" + "\n".join(missing)
