"""A built wheel carries every config and recipe, and `xtok ls` / `xtok validate` work from it (no checkout)."""

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    src = out / "src"  # a copy: building writes build/ and *.egg-info next to pyproject.toml
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", "bench",
                                                             "tests", "xtok-out", ".*_cache"))
    build = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                            str(src)], capture_output=True, text=True, timeout=300, cwd=out)
    assert build.returncode == 0, build.stderr[-3000:]
    (path,) = out.glob("xtok-*.whl")
    return path


def _tracked(*patterns: str) -> set[str]:
    out = subprocess.run(["git", "ls-files", *patterns], capture_output=True, text=True, cwd=REPO, check=True).stdout
    return {p for p in out.split() if not p.startswith(("tests/", "bench/", ".ci/"))}


def test_wheel_holds_every_config_and_recipe(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    yamls = _tracked("*.yaml")
    recipes = {p for p in _tracked("*.py") if "recipes/" in p}
    from xtok.config import RECIPE_SCHEMAS

    # git listed what the package must hold: a config folder per recipe (and accelerate's), a module per recipe
    assert {p.split("/")[2] for p in yamls if p.startswith("xtok/configs/")} >= {*RECIPE_SCHEMAS, "accelerate"}
    assert {f"xtok/recipes/{r}.py" for r in RECIPE_SCHEMAS} <= recipes
    assert yamls <= names, sorted(yamls - names)
    assert recipes <= names, sorted(recipes - names)
    assert not any(n.startswith(("configs/", "recipes/")) for n in names)  # nothing outside the package


def test_xtok_ls_and_validate_from_the_installed_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    inst = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
                          capture_output=True, text=True, timeout=300)
    assert inst.returncode == 0, inst.stderr[-3000:]
    # Only the wheel's copy of xtok is importable (cwd outside the checkout); its dependencies come from this venv.
    env = {**os.environ, "PYTHONPATH": str(site), "HOME": str(tmp_path)}
    run = lambda *args: subprocess.run([sys.executable, "-m", "xtok", *args], capture_output=True, text=True, cwd=tmp_path,  # noqa: E731
                                       env=env, timeout=300)
    where = subprocess.run([sys.executable, "-c", "import xtok; print(xtok.__file__)"], capture_output=True, text=True,
                           cwd=tmp_path, env=env)
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout + where.stderr
    res = run("ls")
    assert res.returncode == 0, res.stderr[-3000:]
    out = " ".join(res.stdout.split())
    listed = next(line for line in res.stdout.splitlines() if line.startswith("recipes")).split(":", 1)[1]
    assert set(listed.replace(",", " ").split()) == {"align", "distill", "draft_check", "end_to_end", "ensemble", "eval",
                                                     "heal", "transplant"}
    for config in ("eval/catalogue.yaml", "end_to_end/qwen2.5-coder-0.5b_to_smollm2-135m.yaml", "accelerate/gpu_ddp.yaml"):
        assert f"config {config}" in out, config
    res = run("validate", "eval/catalogue", "end_to_end/qwen2.5-coder-0.5b_to_smollm2-135m")
    assert res.returncode == 0, res.stderr[-3000:]
