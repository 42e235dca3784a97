"""All or nothing: a snapshot of a model that puts it back exactly as it was, whatever ran on it in between.

Step 8 of 9, one filter from its score to its removal (README, Layout): on any failure the model put back exactly as
it was (and after any trace or check, what they wrote on it).

It records every module's own state (train flag, attributes, hook tables) and, shallowly, what its attributes and
hooks hold (a hook object's `stored`, a closure's dict): tracing, counting and checking run forwards that write
there, fx Proxies included. With `names` it also keeps those modules' parameters and buffers: surgery replaces
tensors rather than writing into them, so the old dicts put back are the very Parameter objects (an optimizer
built on them stays valid). `guard(model)` restores on leaving the block (`guarded`: a function's whole call);
`evaluating(model)` puts back only the train flags; `copy_as(model, dtype)` copies a model with what it holds.
"""
import copy
import functools
import types
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["Snapshot", "guard", "guarded", "evaluating", "held", "copy_as"]

_TENSOR_DICTS = ("_parameters", "_buffers", "_modules")  # surgery's and the module tree's, restored apart
_DEPTH = 3  # how far from a module's attribute or hook the state of what it holds is kept
# every Module's own tables (hooks, non-persistent names): gmlib adds nothing there, and copying ~15 of them per
# module at every snapshot made prune measurably slower
_TORCH_TABLES = {k for k, v in nn.Module().__dict__.items() if isinstance(v, (dict, set))} - set(_TENSOR_DICTS)


class Snapshot:
    """Each module's attributes, what its attributes and hooks hold, and the tensors of the modules in `names`."""

    def __init__(self, model: nn.Module, names=()):
        self.modules = [(m, {k: v for k, v in m.__dict__.items() if k not in _TENSOR_DICTS})
                        for m in model.modules()]
        self.held = [_put_back(kind, obj) for kind, obj in held(model) if kind != "tensor"]
        owners = dict(model.named_modules())
        names = [n if n in owners else n.rpartition(".")[0] for n in names]  # a tensor's name: its owner module
        self.tensors = [(owners[n], dict(owners[n]._parameters), dict(owners[n]._buffers))
                        for n in dict.fromkeys(names) if n in owners]

    def restore(self):
        for m, params, buffers in self.tensors:
            m._parameters.clear()
            m._parameters.update(params)
            m._buffers.clear()
            m._buffers.update(buffers)
        for m, attrs in self.modules:
            for k in [k for k in m.__dict__ if k not in _TENSOR_DICTS and k not in attrs]:
                del m.__dict__[k]
            m.__dict__.update(attrs)
        for put_back in self.held:
            put_back()


@contextmanager
def guard(model: nn.Module):
    """Run the block, then put back everything a forward or a hook could have written on `model` (any outcome)."""
    snapshot = Snapshot(model)
    try:
        yield snapshot
    finally:
        snapshot.restore()


def guarded(fn):
    """`fn(model, ...)` run under `guard(model)` (a `model` that is not a Module is left to `fn` to refuse)."""
    @functools.wraps(fn)
    def run(model, *args, **kwargs):
        if not isinstance(model, nn.Module):
            return fn(model, *args, **kwargs)
        with guard(model):
            return fn(model, *args, **kwargs)
    return run


@contextmanager
def evaluating(model: nn.Module):
    """`model` in eval mode for the block; every module's own train flag put back after it."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in flags:
            m.training = training


def copy_as(model: nn.Module, dtype=None) -> nn.Module:
    """A deep copy with every floating parameter and buffer cast to `dtype` while copied (None: kept as it is).

    Computed tensors held as attributes (torch.nn.utils.weight_norm's `weight`) or by hooks (a stored output) are
    copied detached: the hook that made them recomputes them on the next forward.
    """
    def cast(t):  # always a new tensor: `to` returns its input when the dtype already matches
        return t.detach().to(dtype, copy=True) if dtype is not None and t.is_floating_point() else t.detach().clone()

    memo = {}
    for p in model.parameters():
        if id(p) not in memo:
            memo[id(p)] = nn.Parameter(cast(p), requires_grad=p.requires_grad)
    for b in model.buffers():
        if id(b) not in memo:
            memo[id(b)] = cast(b)
    for kind, t in held(model):  # weight_norm's weight, a hook's stored output of a forward with gradients
        if kind == "tensor" and not t.is_leaf and id(t) not in memo:
            memo[id(t)] = t.detach().clone()
    return copy.deepcopy(model, memo)


def held(model: nn.Module):
    """What the modules' attributes and hooks reach, depth-limited and each once: ("cell", closure cell),
    ("state", a dict, list or set, or an object's __dict__) and ("tensor", a tensor that is not a parameter or
    buffer of a module: a hook's stored output)."""
    seen = set()

    def visit(obj, depth):
        if depth < 0 or id(obj) in seen or isinstance(obj, (nn.Module, type, types.ModuleType, str, bytes, int,
                                                            float, complex, bool, type(None))):
            return
        seen.add(id(obj))
        if isinstance(obj, torch.Tensor):
            yield "tensor", obj
        elif isinstance(obj, types.MethodType):
            yield from visit(obj.__self__, depth)
        elif isinstance(obj, types.FunctionType):
            for cell in obj.__closure__ or ():
                yield "cell", cell
                try:
                    yield from visit(cell.cell_contents, depth - 1)
                except ValueError:  # an empty cell
                    pass
        elif isinstance(obj, functools.partial):
            for v in (obj.func, *obj.args, *obj.keywords.values()):
                yield from visit(v, depth - 1)
        elif isinstance(obj, (dict, list, set)):
            yield "state", obj
            for v in list(obj.values() if isinstance(obj, dict) else obj):
                yield from visit(v, depth - 1)
        elif isinstance(getattr(obj, "__dict__", None), dict):
            yield "state", obj.__dict__
            for v in list(obj.__dict__.values()):
                yield from visit(v, depth - 1)

    for m in model.modules():
        for k, v in list(m.__dict__.items()):
            if k in _TORCH_TABLES:  # the hook tables: what the hooks hold matters, not the tables themselves
                for hook in list(v.values() if isinstance(v, dict) else ()):
                    yield from visit(hook, _DEPTH - 1)
            elif k not in _TENSOR_DICTS:
                yield from visit(v, _DEPTH)


def _put_back(kind, obj):
    """A callable that puts `obj` (a closure cell, a dict, list or set) back as it is now, in place."""
    if kind == "cell":
        try:
            value = obj.cell_contents
        except ValueError:
            return lambda: None
        return functools.partial(setattr, obj, "cell_contents", value)
    saved = dict(obj) if isinstance(obj, dict) else list(obj)
    if isinstance(obj, list):
        return lambda: obj.__setitem__(slice(None), saved)
    return lambda: (obj.clear(), obj.update(saved))
