"""gmlib.prune on the CNN families people use (timm, torchvision), each checked against a by-value masked reference.

`FAMILIES` maps a family to its smallest stock model, `SEGMENTATION` the segmentation networks people use (smp,
torchvision); `try_family` prunes one (random init, float64) and says whether it pruned exactly ("prunes": params cut
by at least half the rate; "partial": exact, less cut; "refused": nothing pruned or an error, with the reason;
"timeout": no result in time), measured by `gmlib.verify.check_exact`, which does not read the report.
`stored_zoo_table` keeps a table as a results-store record, with the machine it ran on.
"""
import contextlib
import copy
import signal
import threading
import warnings
from dataclasses import dataclass

import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from .check import flat_outputs
from .store import Store, frame_rows, record_frame
from .surgery import NotExactError, prune
from .utils import package_version
from .verify import check_exact, fingerprint

__all__ = ["FAMILIES", "SEGMENTATION", "SMP_ENCODER", "create", "ZooResult", "try_family", "try_torch_pruning",
           "torch_pruning_step", "zoo_table", "stored_zoo_table", "segmentation_view", "unused_params", "run_cut",
           "EXACT_TOL"]

EXACT_TOL = 1e-9  # relative, in float64: an exact surgery lands at ~1e-15, a wrong one at >= 1e-3

# family: (library, model name, input side); the smallest stock variant of each, random init
FAMILIES = {
    "ResNet": ("timm", "resnet18", 64),
    "ResNet-D": ("timm", "resnet26d", 64),
    "SE-ResNet": ("timm", "seresnet18", 64),
    "ECA-ResNet": ("timm", "ecaresnet26t", 64),
    "GC-ResNeXt": ("timm", "gcresnext26ts", 64),
    "ResNeSt": ("timm", "resnest14d", 64),
    "SKNet": ("timm", "skresnet18", 64),
    "Res2Net": ("timm", "res2net50_26w_4s", 64),
    "RegNetX": ("timm", "regnetx_002", 64),
    "RegNetY": ("timm", "regnety_002", 64),
    "EfficientNet": ("timm", "efficientnet_b0", 64),
    "EfficientNetV2": ("timm", "tf_efficientnetv2_b0", 64),
    "MobileNetV2": ("timm", "mobilenetv2_050", 64),
    "MobileNetV3": ("timm", "mobilenetv3_small_050", 64),
    "MNASNet": ("timm", "mnasnet_small", 64),
    "FBNet": ("timm", "fbnetc_100", 64),
    "MixNet": ("timm", "mixnet_s", 64),
    "GhostNet": ("timm", "ghostnet_050", 64),
    "LCNet": ("timm", "lcnet_050", 64),
    "ReXNet": ("timm", "rexnet_100", 64),
    "DenseNet": ("timm", "densenet121", 64),
    "DLA": ("timm", "dla34", 64),
    "DPN": ("timm", "dpn48b", 64),
    "HRNet": ("timm", "hrnet_w18_small", 64),
    "CSPResNet": ("timm", "cspresnet50", 64),
    "CSPDarkNet": ("timm", "cspdarknet53", 64),
    "VoVNet": ("timm", "ese_vovnet19b_dw", 64),
    "ConvNeXt": ("timm", "convnext_atto", 64),
    "RepVGG": ("timm", "repvgg_a0", 64),
    "SelecSLS": ("timm", "selecsls42b", 64),
    "GENet": ("timm", "gernet_s", 64),
    "ResNetV2": ("timm", "resnetv2_18", 64),
    "Xception": ("timm", "legacy_xception", 64),
    "VGG": ("timm", "vgg11", 64),
    "NF-ResNet": ("timm", "nf_resnet26", 64),
    "Inception": ("timm", "inception_v3", 96),
    "MobileNetV3 (tv)": ("torchvision", "mobilenet_v3_small", 64),
    "EfficientNet (tv)": ("torchvision", "efficientnet_b0", 64),
    "DenseNet (tv)": ("torchvision", "densenet121", 64),
    "ShuffleNetV2 (tv)": ("torchvision", "shufflenet_v2_x0_5", 64),
    "SqueezeNet (tv)": ("torchvision", "squeezenet1_1", 64),
    "GoogLeNet (tv)": ("torchvision", "googlenet", 64),
}

# segmentation_models_pytorch 0.6.0's CNN architectures, each on the SMP_ENCODER, and torchvision's four models
SMP_ENCODER = "resnet34"
SEGMENTATION = {
    **{f"smp {arch}": ("smp", arch, 128 if arch == "PAN" else 64)  # PAN's pyramid needs 128 px
       for arch in ["Unet", "UnetPlusPlus", "FPN", "PSPNet", "DeepLabV3", "DeepLabV3Plus", "Linknet", "MAnet", "PAN",
                    "UPerNet"]},
    "FCN (tv)": ("torchvision-seg", "fcn_resnet50", 64),
    "DeepLabV3 (tv)": ("torchvision-seg", "deeplabv3_resnet50", 64),
    "DeepLabV3-MobileNetV3 (tv)": ("torchvision-seg", "deeplabv3_mobilenet_v3_large", 64),
    "LRASPP (tv)": ("torchvision-seg", "lraspp_mobilenet_v3_large", 64),
}


def _entry(family: str):
    """(library, model name, input side) of a FAMILIES or SEGMENTATION key; any other name is a timm model."""
    return FAMILIES.get(family) or SEGMENTATION.get(family) or ("timm", family, 64)


def create(family: str, num_classes: int = 10, dtype=torch.float64) -> nn.Module:
    """The family's model (random init, eval mode, `dtype`); `family` is a FAMILIES or SEGMENTATION key or a timm
    model name. Nothing is downloaded: smp encoders and torchvision backbones start from random weights too."""
    library, name, _ = _entry(family)
    if library == "timm":
        import timm
        model = timm.create_model(name, pretrained=False, num_classes=num_classes)
    elif library == "smp":
        import segmentation_models_pytorch as smp
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = getattr(smp, name)(encoder_name=SMP_ENCODER, encoder_weights=None, classes=num_classes)
    elif library == "torchvision-seg":
        from torchvision.models import segmentation
        model = getattr(segmentation, name)(weights=None, weights_backbone=None, num_classes=num_classes)
    else:
        import torchvision
        kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    return model.to(dtype).eval()


@dataclass
class ZooResult:
    """One family pruned at one rate: what was cut, how much of the net could be, and whether it is exact."""
    family: str
    model: str
    rate: float
    policy: str
    params_cut: float        # percent
    macs_cut: float          # percent (nan when MACs were not counted)
    coverage: float          # percent of conv output channels in prunable sets
    error: float             # relative difference to the masked reference (nan when refused)
    status: str              # prunes | partial | refused | timeout | WRONG
    reason: str              # the largest frozen share's reason, or the error that refused it
    params_cut_run: float = 0.0  # percent of the parameters the forward runs, before and after (see run_cut)

    def as_dict(self):
        return dict(self.__dict__)


def _error(original, pruned, x):
    """(relative error, why) with why '' when exact; (inf, why) when the pruned model does not run or is not a
    sub-network by value."""
    try:
        error = check_exact(original, pruned, x)
        return error, "" if error <= EXACT_TOL else f"differs from the masked original by {error:.1e} (relative)"
    except Exception as e:  # noqa: BLE001 - a pruned model that breaks is a wrong result, not a crash of the zoo
        return float("inf"), f"{type(e).__name__}: {str(e)[:160]}"


def _status(error, params_cut, rate):
    if error > EXACT_TOL:
        return "WRONG"
    if params_cut <= 0:
        return "refused"
    return "prunes" if params_cut >= 50 * rate else "partial"


def _setup(family, seed):
    """(model name, fingerprinted float64 original, example input)."""
    library, name, side = _entry(family)
    name = f"{name} ({SMP_ENCODER})" if library == "smp" else name
    x = torch.randn(1, 3, side, side, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return name, fingerprint(create(family), seed), x


def try_family(family: str, rate: float, policy: str = "or-merge", count_macs: bool = True, seed: int = 0,
               setup=None, verify: bool = False) -> ZooResult:
    """Prune the family's model at `rate` (FPGM) and check it against the masked reference by value, in float64.

    `setup` reuses a (name, original, x) from an earlier call on the same family (the original is not modified).
    `verify` is prune's own check, off by default: the by-value check here is the stronger one, and with prune's
    check on a wrong rule would show as "refused" (NotExactError) rather than as WRONG.
    """
    name, original, x = setup or _setup(family, seed)
    model = copy.deepcopy(original)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            report = prune(model, x, rate, policy=policy, count_macs=count_macs, verify=verify)
    except (TypeError, ValueError, NotExactError) as e:
        return ZooResult(family, name, rate, policy, 0.0, float("nan"), 0.0, float("nan"), "refused", str(e))
    error, why = _error(original, model, x)
    params_cut = report.params_reduction
    macs_cut = report.macs_reduction if count_macs else float("nan")
    status = _status(error, params_cut, rate)
    if not why and not report.frozen_reason and status == "partial" and policy == "or-merge":
        why = "or-merge keeps a channel that any conv sharing it keeps (residual streams); coupled cuts them"
    return ZooResult(family, name, rate, policy, params_cut, macs_cut, 100 * (report.coverage or 0.0), error,
                     status, why or report.frozen_reason, run_cut(original, model, x))


def zoo_table(families, rate: float, policies=("or-merge", "coupled"), torch_pruning: bool = False,
              timeout_s: float = 30.0, seed: int = 0, count_macs: bool = True) -> pd.DataFrame:
    """One row per family and method (gmlib's policies, then Torch-Pruning if asked), as a DataFrame, with the
    share of parameters the forward never reads (`params_unused`, %) and the cut among those it does
    (`params_cut_run`, %), which the status is judged on."""
    unknown = [f for f in families if f not in FAMILIES and f not in SEGMENTATION]
    if unknown:
        raise ValueError(f"unknown families {unknown}; choose from gmlib.zoo.FAMILIES or gmlib.zoo.SEGMENTATION")
    rows = []
    for family in tqdm(families, desc=f"zoo at rate {rate}", mininterval=5):
        setup = _setup(family, seed)
        unused = 100 * unused_params(setup[1], setup[2]) / sum(p.numel() for p in setup[1].parameters())
        results = [try_family(family, rate, p, count_macs=count_macs, seed=seed, setup=setup) for p in policies]
        if torch_pruning:
            results.append(try_torch_pruning(family, rate, seed=seed, timeout_s=timeout_s, setup=setup))
        for r in results:  # judged on the parameters that run: dead weight is no pruner's to cut
            status = _status(r.error, r.params_cut_run, rate) if r.status in ("prunes", "partial") else r.status
            rows.append({**r.as_dict(), "status": status, "params_unused": unused})
    return pd.DataFrame(rows)


def unused_params(model: nn.Module, example_inputs) -> int:
    """Parameters the forward on `example_inputs` never reads (no gradient reaches them): dead weight such as the
    encoder stages a decoder does not use. Counted on a copy; no pruner can shrink them, so cuts are also worth
    reading as a share of the parameters that run."""
    twin = copy.deepcopy(model)
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    sum(t.sum() for t in flat_outputs(twin(*inputs))).backward()
    return sum(p.numel() for p in twin.parameters() if p.requires_grad and p.grad is None)


def run_cut(original: nn.Module, pruned: nn.Module, example_inputs) -> float:
    """Percent of the parameters the forward runs that pruning removed: 100 (1 - run(pruned) / run(original)),
    run = all parameters less `unused_params`, each counted on its own network (a pruner may shrink dead weight
    too, which must not count as a cut). nan when the pruned network does not run."""
    def run(model):
        return sum(p.numel() for p in model.parameters()) - unused_params(model, example_inputs)
    try:
        after = run(pruned)
    except Exception:  # noqa: BLE001 - a broken result of another tool has no run parameters
        return float("nan")
    before = run(original)
    return 100 * (1 - after / before) if before else 0.0


def stored_zoo_table(store: Store, families, rate: float, policies=("or-merge", "coupled"),
                     torch_pruning: bool = False, timeout_s: float = 30.0, seed: int = 0,
                     count_macs: bool = True) -> pd.DataFrame:
    """`zoo_table` as a record of `store` (kind "zoo"), computed once: Torch-Pruning's timeouts depend on the
    machine, so its table is data, with the machine in attrs["environment"]. The versions of torch, timm, smp and
    Torch-Pruning are part of the key: another version is another table."""
    config = {"families": list(families), "rate": float(rate), "policies": list(policies),
              "torch_pruning": bool(torch_pruning), "timeout_s": float(timeout_s), "seed": int(seed),
              "count_macs": bool(count_macs),
              "versions": {p: package_version(p) for p in ("torch", "torchvision", "timm",
                                                           "segmentation-models-pytorch", "torch-pruning")}}

    def compute():
        table = zoo_table(families, rate, policies, torch_pruning, timeout_s, seed, count_macs)
        return {"rows": frame_rows(table)}
    table = record_frame(store.fetch("zoo", config, compute))
    table.attrs["versions"] = config["versions"]
    return table


def segmentation_view(by: dict, policies) -> pd.DataFrame:
    """For people: per network (the index of each frame of `by`, {method: its rows of `stored_zoo_table` by family},
    gmlib's `policies` and "torch-pruning"), the model, the share of parameters the forward never runs (%), and per
    method the share of the run parameters cut (%) and the status; then what went wrong with Torch-Pruning where it
    did not prune. Every Torch-Pruning column names it, so `.filter(like="torch-pruning")` takes them apart."""
    first = by[policies[0]]
    out = pd.DataFrame({"model": first.model, "never run %": first.params_unused.round(1)})
    for method in [*policies, "torch-pruning"]:
        out[f"params cut % ({method})"] = by[method].params_cut_run.round(1)
        out[f"result ({method})"] = by[method].status
    tp = by["torch-pruning"]
    out["what went wrong (torch-pruning)"] = tp.reason.where(tp.status != "prunes", "")
    return out


class _Timeout(Exception):
    pass


@contextlib.contextmanager
def _time_limit(seconds):
    """Raise _Timeout in the main thread after `seconds` (SIGALRM; no limit where signals are unavailable)."""
    if not seconds or not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise _Timeout(f"gave up after {seconds:g} s")
    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def torch_pruning_step(model: nn.Module, x: torch.Tensor, rate: float, num_classes: int = 10) -> None:
    """Torch-Pruning as its README shows: MetaPruner + FPGMImportance at `rate`, the classifier (the layers with
    `num_classes` outputs) kept. Needs `torch-pruning`."""
    import torch_pruning as tp
    heads = [m for m in model.modules() if (isinstance(m, nn.Linear) and m.out_features == num_classes)
             or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)]
    tp.pruner.MetaPruner(model, x, importance=tp.importance.FPGMImportance(), pruning_ratio=rate,
                         ignored_layers=heads).step()


def try_torch_pruning(family: str, rate: float, seed: int = 0, timeout_s: float = 30.0, setup=None) -> ZooResult:
    """The same with Torch-Pruning (FPGMImportance, its README's MetaPruner, classifier kept), checked the same way.

    Needs `torch-pruning`. A crash is "refused" with the reason, no result within `timeout_s` is "timeout"; a
    result that differs from the masked original by more than EXACT_TOL is "WRONG".
    """
    name, original, x = setup or _setup(family, seed)
    model = copy.deepcopy(original)
    before = sum(p.numel() for p in model.parameters())
    try:
        with warnings.catch_warnings(), _time_limit(timeout_s):
            warnings.simplefilter("ignore")
            torch_pruning_step(model, x, rate)
    except Exception as e:  # noqa: BLE001 - any crash of the other tool is a result here
        status = "timeout" if isinstance(e, _Timeout) else "refused"
        return ZooResult(family, name, rate, "torch-pruning", 0.0, float("nan"), float("nan"), float("nan"),
                         status, str(e) if status == "timeout" else f"{type(e).__name__}: {str(e)[:120]}")
    error, why = _error(original, model, x)
    params_cut = 100 * (1 - sum(p.numel() for p in model.parameters()) / before)
    return ZooResult(family, name, rate, "torch-pruning", params_cut, float("nan"), float("nan"), error,
                     _status(error, params_cut, rate), why, run_cut(original, model, x))
