"""Training sequences from the teacher's own greedy continuations: on-policy data of the target for a drafter.

A drafter is judged on agreeing with the target's greedy choice on text the target writes, not on the corpus's
next tokens (DistillSpec, EAGLE's self-distillation). So each packed block keeps its first ``prompt_tokens``
tokens of corpus text, and the rest of the block is what the teacher (the target) generates greedily after
them; the teacher's top-k cache and the loss then run over these blocks as over any others. Every
continuation has the block's full length: the end-of-sequence token is not allowed before it (``min_new_tokens``),
so where the target would have stopped it writes its next most likely token instead.

Generating is the expensive part (one target forward per new token per batch), so the result is written to
``generations.int32`` beside the run's blocks file and reused by a resumed run of the same teacher and settings.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from xtok.distill.data import _map_blocks, blocks_fingerprint, record_blocks, saved_blocks
from xtok.utils.hardware import autocast_bf16
from xtok.utils.io import tmp_sibling

log = logging.getLogger(__name__)

GENERATIONS_FILE, GENERATIONS_INFO = "generations.int32", "generations.json"


@torch.no_grad()
def greedy_continuations(teacher, prompts: torch.Tensor, new_tokens: int,
                         eos_token_id: int | list[int] | None) -> torch.Tensor:
    """(B, P + new_tokens) long: each prompt (B, P) and the teacher's greedy continuation, ``new_tokens`` long
    (``eos_token_id``: one id or a model's list of them, all held back until the continuation is full)."""
    pad = eos_token_id[0] if isinstance(eos_token_id, list) else eos_token_id  # no row ends early: never written
    out = teacher.generate(input_ids=prompts, attention_mask=torch.ones_like(prompts), do_sample=False,
                           max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=pad,
                           eos_token_id=eos_token_id, top_k=None, top_p=None, temperature=None,
                           repetition_penalty=1.0)  # the argmax, whatever a model's generation_config.json asks
    if out.shape != (prompts.shape[0], prompts.shape[1] + new_tokens):
        raise RuntimeError(f"the teacher generated {tuple(out.shape)} tokens for {tuple(prompts.shape)} prompts and "
                           f"{new_tokens} new tokens each")
    return out


def teacher_generations(teacher, teacher_name: str, blocks: torch.Tensor, prompt_tokens: int, batch_size: int,
                        eos_token_id: int | list[int] | None, folder: str | Path | None = None, progress: bool = False,
                        bf16: bool = False) -> torch.Tensor:
    """(N, seq_len) int32: each block's first ``prompt_tokens`` and the teacher's greedy continuation to the block's
    length (``bf16``: generated under bf16 autocast). With ``folder`` written there (temporary sibling, renamed into
    place) and memory-mapped; a file made earlier from the same blocks, teacher and settings is reused."""
    n, seq_len = blocks.shape
    if not 1 <= prompt_tokens < seq_len:
        raise ValueError(f"generations.prompt_tokens={prompt_tokens} must lie in [1, seq_len={seq_len}): the teacher "
                         "continues each block's first prompt_tokens tokens to its length")
    key = {"blocks": blocks_fingerprint(blocks), "teacher": teacher_name, "prompt_tokens": prompt_tokens,
           "seq_len": seq_len, "sequences": n, "precision": "bf16" if bf16 else "float32"}
    if folder is not None:
        info, path = Path(folder) / GENERATIONS_INFO, Path(folder) / GENERATIONS_FILE
        saved = saved_blocks(path, info, key, seq_len)
        if saved is not None:
            log.info("training data: %d teacher continuations, generated earlier in %s", n, folder)
            return saved
    from tqdm.auto import tqdm

    out = torch.empty((n, seq_len), dtype=torch.int32)
    teacher = teacher.eval()
    for s in tqdm(range(0, n, batch_size), desc="teacher generations", unit="batch", disable=not progress):
        prompts = blocks[s: s + batch_size, :prompt_tokens].long()
        with autocast_bf16(teacher, bf16):
            out[s: s + len(prompts)] = greedy_continuations(teacher, prompts, seq_len - prompt_tokens,
                                                            eos_token_id).to(torch.int32)
    if folder is None:
        return out
    tmp = tmp_sibling(path, "tmp")
    try:
        out.numpy().tofile(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    record_blocks(info, key, n)
    log.info("training data: %d blocks continued by the teacher after %d prompt tokens", n, prompt_tokens)
    return _map_blocks(path, n, seq_len)
