"""Which rule handles a module: rules registered by users for their module types first (the newest first, by
isinstance), then the built-in rules in a fixed order (each with its own `matches`). Modules with a registered rule
are traced as one node (gmlib.trace), so the rule sees the call, not the ops inside it.
"""
from torch import nn

from .base import ModuleRule

__all__ = ["register_rule", "unregister_rule", "rule_for", "builtin_rule_for", "registered_types", "builtin"]

_USER = []      # (module type, rule), newest first
_BUILTIN = []   # rules with `matches(module)`, in the order they are consulted


def register_rule(module_type: type, rule: ModuleRule) -> ModuleRule:
    """Handle every instance of `module_type` (and its subclasses) with `rule` in `gmlib.prune` and `analyse`.

    Later registrations win over earlier ones and over the built-in rules. Returns the rule. Example, a module that
    scales each channel by its own learnt factor (the rule passes channels through and cuts the factor with them)::

        class Scale(nn.Module):                     # y = gamma[c] * x[:, c]
            def __init__(self, c):
                super().__init__()
                self.gamma = nn.Parameter(torch.ones(c))
            def forward(self, x):
                return x * self.gamma.view(1, -1, 1, 1)

        gmlib.register_rule(Scale, gmlib.rules.PerChannel("gamma"))
        gmlib.prune(model_with_scales, torch.randn(1, 3, 32, 32), 0.3)

    A rule that produces channels subclasses `gmlib.rules.ModuleRule` (see its docstring and gmlib.rules.conv):
    `analyse`, and where the defaults do not fit, `scores`, `expand`, `shrink` (with `shapes_after` and
    `macs_share`, what a cut leaves), `mask` and `layer`.
    """
    if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
        raise TypeError(f"module_type must be a subclass of torch.nn.Module, got {module_type!r}")
    if not isinstance(rule, ModuleRule):
        raise TypeError(f"rule must be a gmlib.rules.ModuleRule, got {type(rule).__name__}")
    _USER.insert(0, (module_type, rule))
    return rule


def unregister_rule(module_type: type) -> None:
    """Forget the rules registered for exactly `module_type` (the built-in ones stay)."""
    _USER[:] = [(t, r) for t, r in _USER if t is not module_type]


def builtin(rule: ModuleRule) -> ModuleRule:
    """Append a built-in rule (it must define `matches(module) -> bool`)."""
    _BUILTIN.append(rule)
    return rule


def rule_for(module, method: str | None = None):
    """The rule that handles `module`, or None (then its channels are kept: an unknown module). With `method`
    ("shrink", "mask", "layer"): the rule that does that for it, a user's rule only where it defines the method
    (a rule for a Conv2d subclass need not say how a conv is cut), else the built-in one."""
    if module is None:
        return None
    for t, rule in _USER:
        if isinstance(module, t):
            if method is None or getattr(type(rule), method) is not getattr(ModuleRule, method):
                return rule
            break
    return builtin_rule_for(module)


def builtin_rule_for(module):
    """The built-in rule that handles `module`, whatever the users registered (None: no built-in one)."""
    return next((r for r in _BUILTIN if r.matches(module)), None)


def registered_types() -> tuple:
    """Module types traced as one node because a rule handles them: the users' and the built-in blocks'."""
    return tuple(t for t, _ in _USER) + tuple(t for r in _BUILTIN for t in getattr(r, "types", ()))
