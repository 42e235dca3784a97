"""torch.fx tracing with the example input's concrete values: shape checks are evaluated, not refused.

Step 1 of 9, one filter from its score to its removal (README, Layout): the network, run once on the example input,
as a graph of what each op does.

Every node is run as it is recorded (leaf modules in eval mode, attributes on copies), so each node has a value;
`if h % 32` on sizes read from shapes takes the branch the example input takes and is remembered as a guard;
control flow on tensor data still fails (the module becomes opaque: a branch on data is not the same for every input).
A leaf module's forward hooks run on its output's proxy, as fx runs those of the modules it traces into, so a hook
that stores the output for a later block (a U-Net's skip) is in the graph. Whatever the trace writes on the model
(hook state, attributes) is put back when it ends (gmlib.transaction).
"""
import torch
from torch import fx

from .rules import leaf_types, registered_types
from .transaction import evaluating, guard

__all__ = ["trace", "Traced", "SHAPE_METHODS"]

SHAPE_METHODS = {"size", "dim", "numel", "ndimension", "nelement"}


class _EvalError(Exception):
    """A node failed to run on the example input (not a tracing limitation)."""


class _HookError(Exception):
    """A leaf module's forward hook does not run on a proxy (it is then run on concrete values only)."""

    def __init__(self, path):
        super().__init__(path)
        self.path = path


class _Proxy(fx.Proxy):
    """A proxy that answers len() and int() from its concrete value, recording that it did."""

    def __len__(self):
        return len(self.tracer.value(self))

    def __index__(self):
        return self.tracer.concrete(self, int)

    def __int__(self):
        return self.tracer.concrete(self, int)

    def __float__(self):
        return self.tracer.concrete(self, float)


class _Tracer(fx.Tracer):
    """Keeps convs, norms, activations (gmlib.layers), modules with a rule (gmlib.rules) and the `opaque` paths as leaves, runs every
    node as it is created, and remembers the innermost module a tracing failure happened in."""

    def __init__(self, root, inputs, opaque=(), hooks_off=()):
        super().__init__()
        self.root_module, self.inputs, self.opaque, self.hooks_off = root, list(inputs), set(opaque), set(hooks_off)
        self.failed_at = None   # (path, type name)
        self.values = {}        # node -> its value on the example input
        self.shape_nodes = set()  # nodes whose value is computed from tensor shapes and constants only
        self.guards = []        # shape-derived nodes whose concrete value the trace relied on (branches, int())
        self.hook_nodes = []    # nodes a leaf's hooks recorded: those nothing reads are dropped after the trace
        self._leaves = leaf_types() + registered_types()
        self._evaluating = False

    def is_leaf_module(self, m, qualname):
        return isinstance(m, self._leaves) or qualname in self.opaque or super().is_leaf_module(m, qualname)

    def call_module(self, m, forward, args, kwargs):
        if self._evaluating:  # running a leaf on concrete values: fx's patched Module.__call__ must not record
            return forward(*args, **kwargs)
        try:
            out = super().call_module(m, forward, args, kwargs)
        except (_EvalError, _HookError):
            raise
        except Exception:
            if self.failed_at is None:
                self.failed_at = (self.path_of_module(m), type(m).__name__)
            raise
        path = self.path_of_module(m) if m._forward_hooks else None
        if path is not None and path not in self.hooks_off and self.is_leaf_module(m, path):
            before = len(self.graph.nodes)
            try:
                for key, hook in list(m._forward_hooks.items()):  # as Module.__call__ runs them
                    result = hook(m, args, kwargs, out) if m._forward_hooks_with_kwargs.get(key) else hook(m, args, out)
                    out = out if result is None else result
            except Exception as e:
                raise _HookError(path) from e
            self.hook_nodes += list(self.graph.nodes)[before:]
        return out

    def _hooks_on_proxy(self, m):
        """Whether `m`'s forward hooks run on its proxy (then its concrete run leaves them out)."""
        return bool(m._forward_hooks) and self.path_of_module(m) not in self.hooks_off

    def getattr(self, attr, attr_val, parameter_proxy_cache):
        return attr_val if self._evaluating else super().getattr(attr, attr_val, parameter_proxy_cache)

    def proxy(self, node):
        return _Proxy(node, self)

    def value(self, proxy):
        return self.values[proxy.node]

    def concrete(self, proxy, kind):
        node = proxy.node
        if node not in self.shape_nodes:
            raise fx.proxy.TraceError(f"{kind.__name__}() of a value computed from tensor data ({node.name})")
        self.guards.append(node)
        return kind(self.values[node])

    def to_bool(self, proxy):
        return bool(self.concrete(proxy, bool))

    def iter(self, proxy):
        return iter([proxy[i] for i in range(len(self.values[proxy.node]))])

    def create_proxy(self, kind, target, args, kwargs, name=None, type_expr=None, proxy_factory_fn=None):
        proxy = super().create_proxy(kind, target, args, kwargs, name, type_expr, proxy_factory_fn)
        node = proxy.node
        if kind != "output":
            self.values[node] = self._run(node)
            ins = fx.node.map_arg((node.args, node.kwargs), lambda n: n)
            nodes = [n for n in _flat(ins) if isinstance(n, fx.Node)]
            reads_shape = (target is getattr and node.args[1] in ("shape", "ndim")) or \
                (kind == "call_method" and target in SHAPE_METHODS)
            if not isinstance(self.values[node], torch.Tensor) and kind.startswith("call") and \
                    (reads_shape or (nodes and all(n in self.shape_nodes for n in nodes))):
                self.shape_nodes.add(node)
        return proxy

    @torch.no_grad()
    def _run(self, node):
        self._evaluating = True  # fx's patched Module.__call__ / __getattr__ must not record while we run things
        try:
            return self._evaluate(node)
        finally:
            self._evaluating = False

    def _evaluate(self, node):
        if node.op == "placeholder":
            if self.inputs:
                return self.inputs.pop(0)
            if node.args:
                return node.args[0]  # a default argument
            raise _EvalError(f"the model takes more inputs than example_inputs gives ({node.target!r})")
        if node.op == "get_attr":
            value = self.root_module
            for part in node.target.split("."):
                value = getattr(value, part)
            return value.detach().clone() if isinstance(value, torch.Tensor) else value  # the user's stay untouched
        args, kwargs = fx.node.map_arg((node.args, node.kwargs), lambda n: self.values[n])
        try:
            if node.op == "call_function":
                return node.target(*args, **kwargs)
            if node.op == "call_method":
                return getattr(args[0], node.target)(*args[1:], **kwargs)
            m = self.root_module.get_submodule(node.target)
            hooks = dict(m._forward_hooks) if self._hooks_on_proxy(m) else {}
            for key in hooks:  # they run on the proxy (call_module): the value is the forward's alone
                del m._forward_hooks[key]
            try:
                with evaluating(m):  # train-mode BatchNorm would move the user's running statistics
                    return m(*args, **kwargs)
            finally:
                m._forward_hooks.update(hooks)
        except Exception as e:
            raise _EvalError(f"{node.name}: {type(e).__name__}: {e}") from e


def _flat(a):
    out = []
    fx.node.map_aggregate(a, out.append)
    return out


class Traced:
    """The graph, each node's value's shape (None for non-tensors) and value (non-tensors), the opaque module
    paths, the shape-derived nodes and the guards the trace relied on."""

    def __init__(self, graph, tracer, opaque):
        self.graph, self.opaque, self.guards, self.shape_nodes = graph, opaque, tracer.guards, tracer.shape_nodes
        self.shapes = {n: tuple(v.shape) if isinstance(v, torch.Tensor) else None for n, v in tracer.values.items()}
        self.constants = {n: v for n, v in tracer.values.items() if not isinstance(v, torch.Tensor)}


def trace(model, example_inputs) -> Traced:
    """Trace `model` on `example_inputs`: a module whose forward fx cannot trace (control flow on data) becomes one
    opaque node, so the rest of the network still prunes; a failure in the root module's own forward is an error."""
    with guard(model):
        return _trace(model, example_inputs)


def _trace(model, example_inputs):
    opaque, hooks_off = [], []
    while True:
        tracer = _Tracer(model, example_inputs, opaque, hooks_off)
        try:
            graph = tracer.trace(model)
            for node in reversed(tracer.hook_nodes):  # what a hook only logs (o.mean()) is no op of the network
                if not node.users:
                    graph.erase_node(node)
            return Traced(graph, tracer, opaque)
        except _HookError as e:
            hooks_off.append(e.path)
        except _EvalError as e:
            try:  # is it the inputs (the model itself fails) or the tracing?
                with torch.no_grad(), evaluating(model):
                    model(*example_inputs)
            except Exception as e2:
                raise ValueError(f"example_inputs do not run through the model ({type(e2).__name__}: {e2})") from e2
            raise TypeError(f"the traced graph of {type(model).__name__} fails where the model runs: {e}") from e
        except Exception as e:
            path, kind = tracer.failed_at or ("", type(model).__name__)
            if not path or path in opaque:
                raise TypeError(f"cannot trace the model with torch.fx: it fails in module {path or '(root)'} "
                                f"({kind}): {type(e).__name__}: {e}") from e
            opaque.append(path)
