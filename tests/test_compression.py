"""gmlib.book.compression: chapter 03's tables are counted once into the store and read back, never recounted."""
import pytest
import torch

import gmlib
from gmlib.book import compression
from gmlib.store import Store

pytestmark = pytest.mark.usefixtures("one_thread")
ARGS = (["fpn_resnest14d"], ["or-merge", "coupled"], [0.0, 0.5])
KW = dict(criterion="fpgm", input_size=[3, 32, 32], num_classes=4, progress=False)


def test_the_table_matches_prune_and_is_read_back_without_pruning(tmp_path, monkeypatch):
    store = Store(tmp_path / "store")
    table, layers = compression.compression_table(store, *ARGS, **KW)
    assert list(zip(table.policy, table.rate)) == [("or-merge", 0.0), ("or-merge", 0.5), ("coupled", 0.0),
                                                    ("coupled", 0.5)]
    direct = gmlib.prune(gmlib.models.create("fpn_resnest14d", num_classes=4, seed=0).eval(),
                         torch.zeros(1, 3, 32, 32), 0.5, criterion="fpgm", policy="coupled")
    row = table[(table.policy == "coupled") & (table.rate == 0.5)].iloc[0]
    assert row["params reduction %"] == direct.params_reduction and row["FLOPs reduction %"] == direct.macs_reduction
    assert (table[table.rate == 0.0]["params reduction %"] == 0).all()
    assert (layers[layers.rate == 0.0].sparsity == 0).all() and (layers[layers.rate == 0.5].sparsity > 0).any()
    assert layers.groupby(["policy", "rate"]).size().nunique() == 1  # every run lists the same layers

    monkeypatch.setattr(compression, "prune", lambda *a, **k: pytest.fail("recounted a stored table"))
    again, again_layers = compression.compression_table(store, *ARGS, **KW)
    assert again.equals(table) and again_layers.equals(layers)
    with pytest.raises(pytest.fail.Exception, match="recounted"):  # another configuration is another record
        compression.compression_table(store, *ARGS, **{**KW, "seed": 1})
