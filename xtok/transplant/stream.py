"""The streaming transplant: only the embedding matrices in memory, every other tensor copied shard by shard.

A transplant changes two tensors, the input embeddings and the output head. So the student is never loaded here (a
head method that needs a forward pass, ``subword-prior``, gets its calibration from the caller, made on the models
before they were let go; only the head fit keeps the in-memory path): its two matrices are read alone from
its safetensors shards, the teacher's two (the donor's) alone from its own, the new rows computed by the registry's
methods as in memory, and written each to its own output shard as soon as it is made. Then every other tensor is
copied one source shard at a time in its stored dtype (or ``out_dtype``). Peak memory is one space at a time (the
student's and the donor's matrix in float32, the new matrix in the output dtype), then the largest source shard,
whatever the size of the model: 4.4 GB for a 7B-shaped bf16 student (``scripts/bench_scale.py``). The output is checked by loading it in
transformers on the meta device: every key present, none unexpected, every shape as its config wants.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Any

import torch

from xtok.transplant.apply import PortError, plan_transplant, space_rows, special_ids, transplant_report

log = logging.getLogger(__name__)

INDEX_FILE = "model.safetensors.index.json"


class Tensors:
    """A model folder's safetensors tensors by name, each read alone when asked for."""

    def __init__(self, folder: str | Path):
        from safetensors import safe_open

        self.folder = Path(folder)
        self.where: dict[str, Path] = {}
        for file in sorted(self.folder.glob("*.safetensors")):
            with safe_open(str(file), framework="pt") as f:
                for name in f.keys():
                    self.where[name] = file
        if not self.where:
            raise ValueError(f"{self.folder} holds no safetensors files; the streaming transplant reads safetensors "
                             "(re-save a .bin checkpoint with save_pretrained), or give a head method that loads the model")

    def get(self, name: str) -> torch.Tensor:
        from safetensors import safe_open

        if name not in self.where:
            raise ValueError(f"{self.folder} has no tensor {name!r} (its architecture names it so); is it a model of "
                             f"the architecture its config.json says?")
        with safe_open(str(self.where[name]), framework="pt") as f:
            return f.get_tensor(name)

    def by_file(self) -> dict[Path, list[str]]:
        out: dict[Path, list[str]] = {}
        for name, file in self.where.items():
            out.setdefault(file, []).append(name)
        return out

    def read(self, file: Path, names: list[str]) -> dict[str, torch.Tensor]:
        """Tensors ``names`` of one shard ``file``, the file opened once."""
        from safetensors import safe_open

        with safe_open(str(file), framework="pt") as f:
            return {n: f.get_tensor(n) for n in names}


def embedding_keys(config) -> tuple[str, str | None, bool]:
    """(input embedding key, head key or None, tied) in the state dict of ``config``'s architecture, from a meta model."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = {id(m): n for n, m in model.named_modules()}
    inp, head = model.get_input_embeddings(), model.get_output_embeddings()
    if inp is None or not hasattr(inp, "weight"):
        raise ValueError(f"unsupported architecture {type(model).__name__}: it has no input embedding matrix")
    in_key = f"{names[id(inp)]}.weight"
    if head is None:
        return in_key, None, False
    return in_key, f"{names[id(head)]}.weight", head.weight is inp.weight


def _donor_keys(teacher: Tensors | None, teacher_config) -> tuple[str | None, str | None]:
    """The teacher's tensors in the input and output roles (its head, or its input embeddings where tied)."""
    if teacher is None:
        return None, None
    in_key, head_key, tied = embedding_keys(teacher_config)
    return in_key, head_key if not tied and head_key is not None and head_key in teacher.where else in_key


def donor_matrices(folder: str | Path) -> dict[str, torch.Tensor]:
    """A model folder's input embedding and head (its input embedding where tied), float32, by role ("input",
    "output"), read alone from its safetensors: the rest of the model is never loaded."""
    from transformers import AutoConfig

    tensors = Tensors(folder)
    keys = _donor_keys(tensors, AutoConfig.from_pretrained(folder))
    return {role: _donor(tensors, key) for role, key in zip(("input", "output"), keys)}


def _donor(teacher: Tensors | None, key: str | None) -> torch.Tensor | None:
    return None if teacher is None else _finite(teacher.get(key).float(), f"teacher's {key}")


def _finite(w: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.isfinite(w).all():
        raise ValueError(f"NaN or Inf in the {what}; the weights are broken")
    return w


def stream_transplant(student_dir: str | Path, student_tok, teacher_tok, out: str | Path, *, teacher_dir: str | Path | None,
                      out_dtype: str, method: str = "omp", head_method: str | None = None, alignment: Any = None,
                      teacher_vocab_size: int | None = None, progress: bool = False, calibration: Any = None,
                      **settings: Any) -> dict[str, Any]:
    """Write the transplant of the model in ``student_dir`` into the (empty, temporary) folder ``out`` and return its
    report; ``teacher_dir`` None = a teacher given as a tokenizer only; the weights are written in ``out_dtype``.
    ``calibration``: what a head method that runs the models needs (``apply.calibrate_models``, made by the caller
    with the models loaded and let go before this runs). ``settings``: k, candidates, chunk, dtype (of the OMP
    product), safety_z, max_coef_norm, head_context, as ``plan_transplant`` takes them."""
    from safetensors.torch import save_file
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    from xtok.models.load import torch_dtype

    out, write_dtype = Path(out), torch_dtype(out_dtype)
    s_cfg = AutoConfig.from_pretrained(student_dir)
    student = Tensors(student_dir)
    in_key, head_key, tied = embedding_keys(s_cfg)
    teacher = Tensors(teacher_dir) if teacher_dir is not None else None
    t_cfg = AutoConfig.from_pretrained(teacher_dir) if teacher_dir is not None else None
    if teacher_vocab_size is None and t_cfg is not None:
        teacher_vocab_size = t_cfg.get_text_config().vocab_size
    s_in = _finite(student.get(in_key).float(), "student's input embeddings")
    donor_in, donor_out = _donor_keys(teacher, t_cfg)
    d_in = _donor(teacher, donor_in)
    plan, needs = plan_transplant(student_tok, teacher_tok, method=method, head_method=head_method, donor=teacher is not None,
                                  student_rows=s_in.shape[0], donor_rows=None if d_in is None else d_in.shape[0],
                                  teacher_vocab_size=teacher_vocab_size, alignment=alignment, progress=progress, **settings)
    if needs.calibration and calibration is None:
        raise ValueError(f"head method {plan.head_method!r} calibrates by running the models, which the streaming "
                         "transplant does not load: pass calibration=apply.calibrate_models(...) made on them")
    untie = tied and plan.head_method != plan.method
    weight_map: dict[str, str] = {}

    def write(key: str, tensor: torch.Tensor, file: str) -> None:
        save_file({key: tensor.to(write_dtype).contiguous()}, str(out / file), metadata={"format": "pt"})
        weight_map[key] = file

    new_in, rep_in = space_rows(plan, "input", s_in, d_in, calibration, dtype=write_dtype)
    spaces = {"input": rep_in}
    write(in_key, new_in, "xtok-input-embeddings.safetensors")
    del new_in  # one space's matrices in memory at a time; a tied donor's one matrix (and its OMP codes) serves both
    if not tied or untie:
        d_out = d_in if donor_out == donor_in else None
        s_out = s_in if tied else None
        del s_in, d_in
        d_out = d_out if d_out is not None or teacher is None else _donor(teacher, donor_out)
        s_out = s_out if s_out is not None else _finite(student.get(head_key).float(), "student's output head")
        new_out, spaces["output"] = space_rows(plan, "output", s_out, d_out, calibration, dtype=write_dtype)
        del s_out, d_out
        write(head_key, new_out, "xtok-output-head.safetensors")
        del new_out
    else:
        del s_in, d_in
    files = student.by_file()
    for i, file in enumerate(sorted(files), 1):
        keep = [n for n in files[file] if n not in (in_key, head_key)]
        if not keep:
            continue
        name = f"model-{i:05d}-of-{len(files):05d}.safetensors"
        tensors = {n: t.to(write_dtype) if t.is_floating_point() else t for n, t in student.read(file, keep).items()}
        weight_map.update(dict.fromkeys(keep, name))
        save_file(tensors, str(out / name), metadata={"format": "pt"})
        del tensors
    total = sum((out / f).stat().st_size for f in set(weight_map.values()))
    (out / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))},
                                             indent=2))
    new_cfg = copy.deepcopy(s_cfg)
    new_cfg.get_text_config().vocab_size = plan.rows
    if hasattr(new_cfg, "vocab_size"):
        new_cfg.vocab_size = plan.rows
    new_cfg.tie_word_embeddings = tied and not untie
    ids = special_ids(teacher_tok)
    for key, value in ids.items():
        setattr(new_cfg, key, value)
    new_cfg.dtype = write_dtype
    new_cfg.save_pretrained(out)
    gen_from = teacher_dir if teacher_dir is not None and (Path(teacher_dir) / "generation_config.json").is_file() else None
    if gen_from is not None:
        GenerationConfig.from_pretrained(gen_from).save_pretrained(out)
    elif (Path(student_dir) / "generation_config.json").is_file():
        gen = GenerationConfig.from_pretrained(student_dir)
        for key, value in ids.items():
            setattr(gen, key, value)
        gen.save_pretrained(out)
    _, info = AutoModelForCausalLM.from_pretrained(out, device_map="meta", output_loading_info=True)
    bad = {k: sorted(v)[:3] for k, v in info.items() if k != "error_msgs" and v}
    if bad or info.get("error_msgs"):
        raise PortError(f"the streamed transplant does not load as its architecture: {bad or info['error_msgs']}")
    report = transplant_report(plan, spaces, tied, untie, student_tok, teacher_tok)
    report["streamed"] = True
    return report
