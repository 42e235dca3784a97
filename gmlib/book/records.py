"""The study's records in the store: every key the experiments read or write is built here, and only here.

A key is sha256(kind, version, config) (gmlib.store.record_key), so a config below is a promise: change one field's
name, type or default and every record of that kind looks missing. Each config starts from the baseline's key, so a
record is tied to the network it was computed on; seeds enter only where they change the computation (a
deterministic criterion's pruned network is one record, shared by its fine-tuning seeds).
"""
import dataclasses
import json

from ..store import Store
from .profiles import KEYLESS_DEFAULTS, BaselineConfig, FinetuneConfig

__all__ = ["StudyRecords"]


class StudyRecords:
    """The configs (hence keys) of one profile's records, and the store they live in.

    Args:
        store: the results store.
        config, finetune: the profile's BaselineConfig and FinetuneConfig.
    """

    def __init__(self, store: Store, config: BaselineConfig, finetune: FinetuneConfig):
        self.store, self.config, self.finetune = store, config, finetune

    def fetch(self, kind: str, config: dict, compute):
        """The stored record of (kind, config), or compute() stored as it (gmlib.store.Store.fetch)."""
        return self.store.fetch(kind, config, compute)

    def get(self, kind: str, config: dict):
        return self.store.get(kind, config)

    def key(self, kind: str, config: dict) -> str:
        return self.store.path(kind, config).stem

    # ---------------------------------------------------------------------------------------------- the baseline
    def baseline(self, data_identity: dict, pretrained_sha256: str | None = None) -> dict:
        """Every BaselineConfig field (those added later left out at their old defaults, so older keys hold), the
        pretrained file by its sha256 (`pretrained_sha256`) rather than its path, and what the data is."""
        config = {k: v for k, v in dataclasses.asdict(self.config).items()
                  if not (k in KEYLESS_DEFAULTS and v == KEYLESS_DEFAULTS[k])}
        if self.config.pretrained:
            config["pretrained"] = {"sha256": pretrained_sha256}
        return {"config": config, "data": data_identity}

    # ---------------------------------------------------------------------------------------------- pruned points
    def budget(self, steps, lr) -> tuple:
        """(steps, lr) of a fine-tune: the profile's unless given."""
        ft = self.finetune
        return ft.steps if steps is None else int(steps), ft.lr if lr is None else float(lr)

    def pruned(self, baseline: str, criterion, rate, policy, seed) -> dict:
        """The baseline pruned at a uniform `rate` and recalibrated; `seed` matters for "random" only."""
        return {"baseline": baseline, "criterion": criterion, "rate": float(rate), "policy": policy,
                "seed": int(seed) if criterion == "random" else 0, "recal_batches": self.finetune.recal_batches}

    def finetuned(self, baseline: str, criterion, rate, policy, seed, steps, lr) -> dict:
        """`pruned`'s network fine-tuned with `seed` for `steps` at `lr` (the "finetuned_val" records share it)."""
        return {**self.pruned(baseline, criterion, rate, policy, seed), **self._tuning(seed, steps, lr)}

    def _tuning(self, seed, steps, lr) -> dict:
        return {"finetune_seed": int(seed), "steps": steps, "lr": lr, "weight_decay": self.finetune.weight_decay}

    def pruned_copy_tag(self, baseline: str, criterion, rate, policy, seed) -> str:
        """A string that is equal for the (criterion, rate, policy, seed) that prune to the same network."""
        return json.dumps(self.pruned(baseline, criterion, rate, policy, seed), sort_keys=True)

    # ---------------------------------------------------------------------------------------------- controls
    def scratch(self, baseline: str, criterion, rate, policy, seed, steps, lr, recipe) -> tuple:
        """(architecture, budget) parts of a from-scratch control: the architecture `criterion` leaves at `rate`,
        fresh weights of init seed 100 + `seed`; recipe "budget" trains at the baseline's lr unless `lr` is given."""
        ft = self.finetune
        steps = ft.steps if steps is None else int(steps)
        lr = (self.config.lr if recipe == "budget" else ft.lr) if lr is None else float(lr)
        arch = {"baseline": baseline, "criterion": criterion, "rate": float(rate), "policy": policy,
                "init_seed": 100 + int(seed)}
        return arch, {"finetune_seed": int(seed), "steps": steps, "lr": lr, "weight_decay": ft.weight_decay}

    def scratch_budget(self, arch: dict, budget: dict) -> dict:
        """The "finetuned" record of a control trained for its twin's budget only."""
        return {**arch, "scratch": "budget", **budget}

    def scratch_full(self, arch: dict, trained_key: str, budget: dict) -> dict:
        """The "finetuned" record of a control trained with the whole recipe first (the "scratch" record
        `trained_key`), then given its twin's budget."""
        return {**arch, "scratch": trained_key, **budget}

    # ---------------------------------------------------------------------------------------------- allocation
    def sensitivity(self, baseline: str, criterion, policy, rates, strips) -> dict:
        return {"baseline": baseline, "criterion": criterion, "policy": policy, "rates": [float(r) for r in rates],
                "strips": int(strips), "recal_batches": self.finetune.recal_batches}

    def allocation(self, baseline: str, method, cut, criterion, policy, seed) -> dict:
        return {"baseline": baseline, "method": method, "cut": float(cut), "criterion": criterion, "policy": policy,
                "seed": int(seed) if method == "random" else 0}

    def allocated(self, baseline: str, method, cut, allocation_seed, rates: dict, criterion, policy, seed) -> tuple:
        """("pruned", "finetuned") configs of the baseline pruned with an allocation's per-set `rates` (stored as
        the allocation record holds them), fine-tuned with the profile's budget and `seed`."""
        pruned = {"baseline": baseline, "allocation": {"method": method, "cut": float(cut),
                                                       "seed": allocation_seed if method == "random" else 0},
                  "rates": rates, "criterion": criterion, "policy": policy,
                  "recal_batches": self.finetune.recal_batches}
        return pruned, {**pruned, **self._tuning(seed, self.finetune.steps, self.finetune.lr)}

    # ---------------------------------------------------------------------------------------------- iterative
    def iterative(self, baseline: str, rates, criterion, policy, metric, tolerance, macs_target, seed) -> dict:
        ft = self.finetune
        return {"baseline": baseline, "rates": [float(r) for r in rates], "criterion": criterion, "policy": policy,
                "metric": metric, "tolerance": tolerance, "macs_target": macs_target, "seed": int(seed),
                "steps": ft.steps, "lr": ft.lr, "weight_decay": ft.weight_decay, "recal_batches": ft.recal_batches,
                "chosen_on": "val"}
