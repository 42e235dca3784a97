"""environment.yml and pyproject.toml (dependencies, test and deploy extras) must name the same dependencies with the
same pins."""
import re
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _name(req):
    return re.split(r"[<>=!~ \[;]", req.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _pyproject():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = meta["dependencies"] + meta["optional-dependencies"]["test"] + meta["optional-dependencies"]["deploy"] + \
        meta["optional-dependencies"]["real"]
    return {_name(r): r.replace(" ", "") for r in reqs}


def _environment():
    deps = yaml.safe_load((ROOT / "environment.yml").read_text())["dependencies"]
    pip = next(d["pip"] for d in deps if isinstance(d, dict) and "pip" in d)
    return {_name(r): r.replace(" ", "") for r in pip if not r.startswith("-e")}


def test_same_dependencies_and_pins():
    env, py = _environment(), _pyproject()
    assert env == py, f"only in environment.yml: {set(env.items()) - set(py.items())}; " \
                      f"only in pyproject.toml: {set(py.items()) - set(env.items())}"


def test_torch_is_pinned_to_the_local_wheels():
    py = _pyproject()
    assert py["torch"] == "torch==2.14.1" and py["torchvision"] == "torchvision==0.29.1"


def test_design_card_packages_are_declared():
    names = set(_pyproject())
    assert {"torch", "torchvision", "timm", "jupyterlab", "papermill", "nbval", "seaborn", "numpy"} <= names
