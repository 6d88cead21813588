"""Session fixtures (real catalogue tokenizers on tiny random models, hidden 64, 2 layers) and a hermetic home.

Hermetic: at ``pytest_configure``, before any test module is imported (so before anything imports
transformers, datasets, vLLM or matplotlib), every home-based location of this process and of the
subprocesses it starts points into an empty folder under pytest's session tmp dir: ``HOME`` itself,
the XDG folders, the xtok cache, the Hugging Face, vLLM, matplotlib, torch and triton caches. Real
tokenizers and converted models are therefore built from the installed GGUF packages once per
session, as on a new machine. The session fails if it wrote anything into the real home.

Nothing heavy is imported at module level here: this file is imported before the redirect.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            max_position_embeddings=512)

# Environment variable -> folder under the session home it points to.
HOME_REDIRECTS = {
    "HOME": ".",
    "XDG_CACHE_HOME": ".cache",
    "XDG_CONFIG_HOME": ".config",
    "XDG_DATA_HOME": ".local/share",
    "XDG_STATE_HOME": ".local/state",
    "HF_HOME": ".cache/huggingface",
    "MPLCONFIGDIR": ".config/matplotlib",
    "VLLM_CACHE_ROOT": ".cache/vllm",
    "VLLM_CONFIG_ROOT": ".config/vllm",
    "TORCH_HOME": ".cache/torch",
    "TORCHINDUCTOR_CACHE_DIR": ".cache/torchinductor",
    "TRITON_CACHE_DIR": ".cache/triton",
}
# Overrides that would take a cache out of HF_HOME: unset, so everything derives from it.
HF_OVERRIDES = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "TRANSFORMERS_CACHE", "HF_DATASETS_CACHE", "HF_ASSETS_CACHE",
                "HF_XET_CACHE", "HF_TOKEN_PATH")
# What the guard watches in the real home: every file below these (cheap: no pip cache) ...
WATCH_DEEP = (".cache/xtok", ".cache/huggingface", ".cache/vllm", ".cache/matplotlib", ".cache/torch", ".cache/triton",
              ".cache/torchinductor", ".config", ".triton", ".local/share/xtok")
# ... and the entries directly inside these (a new ~/.something or ~/.cache/something shows).
WATCH_SHALLOW = (".", ".cache", ".local/share", ".local/state")

_SESSION_HOME = pytest.StashKey[Path]()
_REAL_HOMES = pytest.StashKey[dict]()
_LEAKS = pytest.StashKey[list]()


def _snapshot(home: Path) -> dict[str, tuple]:
    """path -> (size, mtime_ns) of regular files, ("dir",) of folders, in the watched parts of ``home``."""
    seen: dict[str, tuple] = {}

    def note(path: Path) -> None:
        try:
            st = path.lstat()
        except OSError:
            return
        seen[str(path)] = ("dir",) if path.is_dir() and not path.is_symlink() else (st.st_size, st.st_mtime_ns)

    for rel in WATCH_SHALLOW:
        top = home / rel
        if top.is_dir():
            for entry in top.iterdir():
                note(entry)
    for rel in WATCH_DEEP:
        top = home / rel
        if not top.is_dir() or top.is_symlink():
            continue
        for root, dirs, files in os.walk(top):
            for name in dirs + files:
                note(Path(root) / name)
    return seen


def _changes(before: dict[str, tuple], after: dict[str, tuple]) -> list[str]:
    return sorted(f"{p} ({'new' if p not in before else 'changed'})" for p, v in after.items() if before.get(p) != v)


def real_home() -> Path | None:
    """The home this session was started with (what ``~`` means to every library), before the redirect."""
    home = os.environ.get("HOME")
    return Path(home).resolve() if home and Path(home).is_dir() else None


def redirect_home(session_home: Path) -> None:
    """Point every home-based location of this process (and its children) into ``session_home``."""
    import platformdirs  # reads XDG_* and HOME when called, so after the redirect below

    for var, rel in HOME_REDIRECTS.items():
        path = (session_home / rel).resolve()
        path.mkdir(parents=True, exist_ok=True)
        os.environ[var] = str(path)
    for var in HF_OVERRIDES:
        os.environ.pop(var, None)
    os.environ["HF_HUB_OFFLINE"] = "1"  # tests never download
    os.environ["HF_DATASETS_OFFLINE"] = "1"
    # The CLI reads XTOK_CACHE_DIR; library calls with cache_dir=None use platformdirs: one folder for both.
    os.environ["XTOK_CACHE_DIR"] = platformdirs.user_cache_dir("xtok")


@pytest.hookimpl(trylast=True)  # after pytest's tmpdir plugin has made the session's tmp_path_factory
def pytest_configure(config):
    home = real_home()
    session_home = config._tmp_path_factory.mktemp("home", numbered=True)
    config.stash[_REAL_HOMES] = {home: _snapshot(home)} if home else {}
    config.stash[_SESSION_HOME] = session_home
    redirect_home(session_home)


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if _REAL_HOMES not in config.stash:
        return
    leaks = [c for home, before in config.stash[_REAL_HOMES].items() for c in _changes(before, _snapshot(home))]
    config.stash[_LEAKS] = leaks
    if leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
    elif exitstatus == pytest.ExitCode.OK:
        shutil.rmtree(config.stash[_SESSION_HOME], ignore_errors=True)  # converted models are large; keep them only to debug


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    leaks = config.stash.get(_LEAKS, [])
    if leaks:
        terminalreporter.section("tests wrote into the real home", sep="=", red=True, bold=True)
        terminalreporter.write_line("The suite must write only under pytest's tmp dir; these appeared or changed:", red=True)
        for line in leaks[:50]:
            terminalreporter.write_line(f"  {line}", red=True)
        if len(leaks) > 50:
            terminalreporter.write_line(f"  ... and {len(leaks) - 50} more", red=True)


@pytest.fixture(scope="session")
def session_home(pytestconfig) -> Path:
    """The empty home this session's processes see (``$HOME``)."""
    return pytestconfig.stash[_SESSION_HOME]


@pytest.fixture(scope="session")
def cache_dir(session_home) -> Path:
    """The session's xtok cache, empty at the start: real tokenizers and converted models are built there once."""
    from xtok.models.catalogue import default_cache_dir

    cache = Path(os.environ["XTOK_CACHE_DIR"])
    assert cache == default_cache_dir() and session_home in cache.parents, (cache, default_cache_dir(), session_home)
    return cache


@pytest.fixture(scope="session")
def real_tokenizer(cache_dir):
    """Factory: the real tokenizer of a catalogue model (needs requirements-models.txt installed)."""
    from xtok.models.load import load_tokenizer

    loaded = {}

    def get(name: str):
        if name not in loaded:
            loaded[name] = load_tokenizer(name, cache_dir)
        return loaded[name]

    return get


def tiny_config(arch: str, vocab_size: int, tokenizer=None, **overrides):
    from transformers import Gemma3TextConfig, LlamaConfig, Qwen2Config

    kwargs = dict(TINY, vocab_size=vocab_size, **overrides)
    if tokenizer is not None:
        kwargs.update(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id)
    if arch == "llama":
        return LlamaConfig(tie_word_embeddings=kwargs.pop("tie_word_embeddings", True), **kwargs)
    if arch == "qwen2":
        return Qwen2Config(tie_word_embeddings=kwargs.pop("tie_word_embeddings", False), **kwargs)
    if arch == "gemma3":
        return Gemma3TextConfig(head_dim=16, tie_word_embeddings=kwargs.pop("tie_word_embeddings", True), sliding_window=64,
                                    **kwargs)
    raise ValueError(arch)


CATALOGUE_ARCH = {"smollm2-135m": "llama", "qwen2.5-coder-0.5b": "qwen2", "gemma3-270m": "gemma3"}


def build_tiny(arch: str, tokenizer, seed: int = 0, **overrides):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    vocab_size = overrides.pop("vocab_size", len(tokenizer))
    cfg = tiny_config(arch, vocab_size, tokenizer, **overrides)
    return AutoModelForCausalLM.from_config(cfg).eval()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, real_tokenizer):
    """Factory: a saved tiny random model carrying a catalogue model's real tokenizer (an HF folder)."""
    made = {}

    def get(name: str, **overrides):
        key = (name, tuple(sorted(overrides.items())))
        if key not in made:
            tok = real_tokenizer(name)
            model = build_tiny(CATALOGUE_ARCH[name], tok, **overrides)
            out = tmp_path_factory.mktemp(f"tiny-{name}")
            model.save_pretrained(out)
            tok.save_pretrained(out)
            made[key] = out
        return made[key]

    return get
