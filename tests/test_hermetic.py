"""The suite is hermetic: tests/conftest.py gives each session an empty home and fails a session that writes the real one.

Each case runs a small pytest session in a subprocess with tests/conftest.py as a plugin and a
fake "real" home, as a fresh machine would have.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

INNER = '''
import os
from pathlib import Path

import platformdirs

REAL = Path(os.environ["FAKE_REAL_HOME"]).resolve()


def test_every_home_location_is_redirected():
    home = Path(os.environ["HOME"])
    assert home != REAL and Path("~").expanduser() == home
    for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "HF_HOME", "XTOK_CACHE_DIR", "MPLCONFIGDIR", "VLLM_CACHE_ROOT",
                "VLLM_CONFIG_ROOT", "TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR"):
        assert home in Path(os.environ[var]).parents, var
    assert Path(platformdirs.user_cache_dir("xtok")) == Path(os.environ["XTOK_CACHE_DIR"])
    import huggingface_hub.constants as hf  # reads HF_HOME at import

    assert home in Path(hf.HF_HUB_CACHE).parents
    cache = Path(os.environ["XTOK_CACHE_DIR"])
    assert not cache.exists() or list(cache.iterdir()) == []  # empty at the start of the session
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "made-by-a-test").write_text("fine: inside the session home")


def test_the_cache_fixture_is_the_session_cache(cache_dir, session_home):
    from xtok.models.catalogue import default_cache_dir

    assert cache_dir == Path(os.environ["XTOK_CACHE_DIR"]) == default_cache_dir()
    assert session_home == Path(os.environ["HOME"]) and session_home in cache_dir.parents


def test_maybe_write_the_real_home():
    if os.environ.get("LEAK") == "new":
        (REAL / ".cache" / "xtok").mkdir(parents=True, exist_ok=True)
        (REAL / ".cache" / "xtok" / "leaked.json").write_text("{}")
    if os.environ.get("LEAK") == "changed":
        with open(REAL / ".config" / "settings.ini", "a") as fh:
            fh.write("more\\n")
'''


def _session(tmp_path: Path, leak: str = "") -> subprocess.CompletedProcess:
    real = tmp_path / "real-home"
    (real / ".config").mkdir(parents=True, exist_ok=True)
    (real / ".config" / "settings.ini").write_text("x = 1\n")
    (tmp_path / "test_inner.py").write_text(INNER)
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "HOME": str(real), "FAKE_REAL_HOME": str(real), "LEAK": leak,
           "PYTHONPATH": os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.conftest", "-p", "no:cacheprovider", "-q", "--rootdir", str(tmp_path),
         "--basetemp", str(tmp_path / "basetemp"), str(tmp_path / "test_inner.py")],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )


def test_a_session_gets_an_empty_home_of_its_own(tmp_path):
    res = _session(tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "real home" not in res.stdout


def test_a_new_file_in_the_real_home_fails_the_session(tmp_path):
    res = _session(tmp_path, leak="new")
    assert res.returncode == 1, res.stdout + res.stderr
    assert "3 passed" in res.stdout  # every test passed: the guard alone fails the session
    assert "tests wrote into the real home" in res.stdout
    assert f"{(tmp_path / 'real-home' / '.cache' / 'xtok' / 'leaked.json').resolve()} (new)" in res.stdout


def test_a_changed_file_in_the_real_home_fails_the_session(tmp_path):
    res = _session(tmp_path, leak="changed")
    assert res.returncode == 1, res.stdout + res.stderr
    assert f"{(tmp_path / 'real-home' / '.config' / 'settings.ini').resolve()} (changed)" in res.stdout
