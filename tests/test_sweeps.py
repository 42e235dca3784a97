"""gmlib.book.sweeps: chapter 07's design as grids, read from a notebook's parameters, and split into work units that
never share a stored record."""
import nbformat
import pytest

from gmlib.book import sweeps


def steps(epochs):
    return int(round(epochs * 200))


def test_design_has_every_combination_and_per_criterion_seeds():
    d = sweeps.figure5_design(steps, rates=[0.1, 0.3], criteria=["fpgm", "bn"], seeds={"*": [0, 1, 2], "bn": [0]},
                              coupled_criteria=["fpgm"], coupled_rates=[0.3], budgets=[0.25, 1], budget_rates=[0.3],
                              budget_criteria=["fpgm"], budget_seeds=[0, 1], lrs=[1e-4, 1e-3], lr_rate=0.3,
                              lr_criteria=["fpgm"], lr_seeds=[0], baseline_seeds=[1], baseline_seed_rates=[0.3],
                              baseline_seed_criteria=["bn"])
    assert len(d["main"]) == 2 * (3 + 1) and {p["steps"] for p in d["main"]} == {50}
    assert {p["policy"] for p in d["policies"]} == {"coupled"} and len(d["policies"]) == 3
    assert sorted({p["steps"] for p in d["budgets"]}) == [50, 200] and len(d["budgets"]) == 4
    assert {p["kind"] for p in d["scratch"]} == {"scratch"} and len(d["scratch"]) == 4
    assert sorted(p["lr"] for p in d["lrs"]) == [1e-4, 1e-3]
    assert [p["baseline_seed"] for p in d["baseline_seeds"]] == [1]


def test_bad_seeds_and_a_learning_rate_sweep_without_a_rate_are_refused():
    with pytest.raises(ValueError, match="seeds of 'fpgm'"):
        sweeps.figure5_design(steps, rates=[0.1], criteria=["fpgm"], seeds=3)
    with pytest.raises(ValueError, match="lr_rate"):
        sweeps.figure5_design(steps, rates=[0.1], criteria=["fpgm"], seeds=[0], lrs=[1e-3], lr_criteria=["fpgm"])


def test_work_units_drop_duplicates_and_keep_a_shared_pruned_record_in_one_unit():
    d = sweeps.figure5_design(steps, rates=[0.3], criteria=["fpgm", "random"], seeds=[0, 1], budgets=[0.25, 1],
                              budget_rates=[0.3], budget_criteria=["fpgm", "random"], budget_seeds=[0, 1])
    units = sweeps.work_units(d)
    flat = [p for u in units for p in u]
    assert len(flat) == len({tuple(sorted(p.items())) for p in flat}) == 4 + 4 + 4  # main, the 1-epoch budget, scratch
    fpgm = [u for u in units if u[0]["criterion"] == "fpgm" and u[0]["kind"] == "pruned"]
    assert len(fpgm) == 1 and len(fpgm[0]) == 4  # both seeds, both budgets: one pruned record
    random = [u for u in units if u[0]["criterion"] == "random"]
    assert len(random) == 2 and all({p["seed"] for p in u} == {u[0]["seed"]} for u in random)


def test_design_of_notebook_reads_the_parameters_cell(tmp_path):
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        'SEED = 2\nRATES = [0.1, 0.5]\nCRITERIA = ["l1"]\nSEEDS = [0, 1]\nBUDGET = 1.0\nTHREADS = 2',
        metadata={"tags": ["parameters"]})], metadata={"kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}})
    path = tmp_path / "chapter.ipynb"
    nbformat.write(nb, path)
    d = sweeps.design_of_notebook(path, steps, RATES=[0.7])
    assert [(p["rate"], p["seed"], p["steps"], p["baseline_seed"]) for p in d["main"]] == [(0.7, 0, 200, 2),
                                                                                         (0.7, 1, 200, 2)]
