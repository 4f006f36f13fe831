"""pyproject.toml declares ranges, requirements.lock pins: the pins (what the tests run with)
must sit inside the ranges, or ``./dev`` (lock, then ``pip install --no-deps -e .``) installs a
set that pip would refuse for ``pip install grokschedule``."""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def runtime_requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    return [Requirement(line) for line in project["dependencies"]]


def locked_versions() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements.lock").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[canonicalize_name(Requirement(name).name)] = Version(version)
    return pins


def test_runtime_dependencies_are_ranges_with_an_upper_bound() -> None:
    for requirement in runtime_requirements():
        operators = {spec.operator for spec in requirement.specifier}
        assert "==" not in operators, f"{requirement}: exact pins belong in requirements.lock"
        assert ">=" in operators and "<" in operators, f"{requirement}: give >=tested,<next"


def test_the_pinned_and_installed_versions_are_inside_the_ranges() -> None:
    pins = locked_versions()
    for requirement in runtime_requirements():
        name = canonicalize_name(requirement.name)
        # torch is not in the lock: ./dev keeps the one present (a CUDA build) or installs one.
        version = pins.get(name) or Version(metadata.version(requirement.name))
        assert requirement.specifier.contains(version, prereleases=True), (
            f"{requirement.name} {version} (requirements.lock) is outside {requirement}"
        )
        installed = Version(metadata.version(requirement.name))
        assert requirement.specifier.contains(installed, prereleases=True), (
            f"{requirement.name} {installed} (installed) is outside {requirement}"
        )
