"""Reproducible installs: constraints.txt pins exact versions, install.sh uses it everywhere, this venv matches it."""

from __future__ import annotations

import re
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

ROOT = Path(__file__).resolve().parent.parent


def _constraints() -> dict[str, Requirement]:
    reqs = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            reqs[canonicalize_name(req.name)] = req
    return reqs


def test_every_constraint_is_one_exact_version():
    reqs = _constraints()
    assert "xtok" not in reqs  # xtok itself comes from the checkout
    loose = [str(r) for r in reqs.values() if len(r.specifier) != 1 or next(iter(r.specifier)).operator != "=="]
    assert loose == []
    assert str(reqs["torch"].specifier) == "==2.13.0" and str(reqs["transformers"].specifier) == "==5.19.0"


def test_every_pip_install_in_install_sh_uses_the_constraints():
    script = (ROOT / "scripts" / "install.sh").read_text()
    assert 'pin=(-c constraints.txt)' in script
    installs = [ln for ln in script.splitlines() if re.search(r'"\$\{pip\[@\]\}" install', ln)]
    assert len(installs) >= 5 and all('"${pin[@]}"' in ln for ln in installs), installs


def test_the_installed_packages_are_the_pinned_versions():
    """A venv made by install.sh runs exactly the pinned versions (packages it did not install are skipped)."""
    wrong = []
    for name, req in _constraints().items():
        try:
            installed = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        if not req.specifier.contains(installed, prereleases=True):
            wrong.append(f"{name} {installed} (constraints.txt: {req.specifier})")
    assert wrong == [], "reinstall with bash scripts/install.sh: " + ", ".join(wrong)
