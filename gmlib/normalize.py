"""One canonical form per op before the channel rules see it: a name and its arguments by parameter name.

`torch.add(a, other=b)`, `a.add_(b)`, `a + b` and `operator.iadd(a, b)` all become ("add", {input: a, other: b});
aliases (`concat`, `concatenate`, `multiply`, `clip`, ...) and keywords (`axis` for `dim`, `input=`) are resolved,
in-place forms map to their out-of-place op (the value is the same; in place only changes who else sees it).
"""
import inspect
import operator

from .layers import OPS

__all__ = ["canonical", "bind_module_call"]

_OPERATORS = {operator.add: "add", operator.iadd: "add", operator.sub: "sub", operator.isub: "sub",
              operator.mul: "mul", operator.imul: "mul", operator.truediv: "div", operator.itruediv: "div",
              operator.neg: "neg", operator.getitem: "getitem", operator.pow: "pow", operator.ipow: "pow",
              operator.floordiv: "floor_divide", operator.mod: "remainder", getattr: "getattr"}
_ALIASES = {"concat": "cat", "concatenate": "cat", "multiply": "mul", "subtract": "sub", "divide": "div",
            "true_divide": "div", "clip": "clamp", "__add__": "add", "__radd__": "add", "__iadd__": "add",
            "__mul__": "mul", "__rmul__": "mul", "__imul__": "mul", "__sub__": "sub", "__isub__": "sub",
            "__truediv__": "div", "__itruediv__": "div", "__getitem__": "getitem", "__neg__": "neg"}
_SIGNATURES = {name: op.params for name, op in OPS.items()}  # positional parameters (the first: what a method is on)
_VARIADIC = {"view", "reshape", "permute", "repeat", "expand", "tile"}  # x.view(b, c, -1) == x.view((b, c, -1))


def op_name(node) -> str:
    """The canonical name of a call_function / call_method node's op."""
    target = node.target
    if node.op == "call_function":
        name = _OPERATORS.get(target) or getattr(target, "__name__", str(target))
    else:
        name = target
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]  # in place: relu_, add_, clamp_
    return _ALIASES.get(name, name)


def canonical(node):
    """(name, {parameter: argument}) of a call_function / call_method node; unknown parameters keep their keyword
    or get "arg<i>" names, so that no argument is dropped."""
    name = op_name(node)
    args, kwargs = list(node.args), dict(node.kwargs)
    if "axis" in kwargs and "dim" not in kwargs:
        kwargs["dim"] = kwargs.pop("axis")
    if "self" in kwargs and "input" not in kwargs:
        kwargs["input"] = kwargs.pop("self")
    if name in _VARIADIC and node.op == "call_method" and len(args) > 1 and "shape" not in kwargs \
            and not (len(args) == 2 and isinstance(args[1], (tuple, list))):
        args = [args[0], tuple(args[1:])]
    if name in ("view", "reshape") and "size" in kwargs:
        kwargs["shape"] = kwargs.pop("size")
    names = _SIGNATURES.get(name, ("input",))
    out = {}
    for i, a in enumerate(args):
        out[names[i] if i < len(names) else f"arg{i}"] = a
    for k, v in kwargs.items():
        out[k] = v
    return name, out


def bind_module_call(module, args, kwargs):
    """A module call's arguments as positions of its forward (act(input=y) is act(y)); None if they do not bind."""
    if not kwargs:
        return tuple(args)
    try:
        bound = inspect.signature(module.forward).bind(*args, **kwargs)
    except (TypeError, ValueError):
        return None
    if bound.kwargs:
        return None
    return tuple(bound.args)

