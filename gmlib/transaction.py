"""All or nothing: a snapshot of a model that puts it back exactly as it was if pruning fails half-way.

The snapshot holds references, not copies: surgery replaces a module's tensors rather than writing into them, so
putting back the old dicts restores the very Parameter objects (an optimizer built on them stays valid).
"""
from torch import nn

__all__ = ["Snapshot"]


class Snapshot:
    """Every module's train/eval flag, plus the parameters, buffers and attributes of the modules named in `names`."""

    def __init__(self, model: nn.Module, names=()):
        self.model = model
        self.modes = [(m, m.training) for m in model.modules()]
        self.kept_attr = model.__dict__.get("_gmlib_kept", None), "_gmlib_kept" in model.__dict__
        modules = dict(model.named_modules())
        names = [n if n in modules else n.rpartition(".")[0] for n in names]  # a tensor's name: its owner module
        self.state = [(modules[n], dict(modules[n]._parameters), dict(modules[n]._buffers),
                       {k: v for k, v in modules[n].__dict__.items() if not k.startswith("_")})
                      for n in dict.fromkeys(names) if n in modules]

    def restore_modes(self):
        for m, training in self.modes:
            m.training = training

    def restore(self):
        """Put back the modes, tensors and attributes recorded at construction."""
        for m, params, buffers, attrs in self.state:
            m._parameters.clear()
            m._parameters.update(params)
            m._buffers.clear()
            m._buffers.update(buffers)
            for k in [k for k in m.__dict__ if not k.startswith("_") and k not in attrs]:
                del m.__dict__[k]
            m.__dict__.update(attrs)
        value, present = self.kept_attr
        if present:
            self.model._gmlib_kept = value
        else:
            self.model.__dict__.pop("_gmlib_kept", None)
        self.restore_modes()
