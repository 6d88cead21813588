"""Mixing the next-token distributions of models that share a vocabulary, scoring and generating with the mix.

Two rules, one registry (``xtok ls``), each a pure function of the members' log-probs:
- ``prob``:    p(x) = sum_i w_i p_i(x)                          (a mixture; weights sum to 1)
- ``logprob``: p(x) ∝ prod_i p_i(x)^{w_i}, renormalized         (a product of experts / geometric mean)
An ``Ensemble`` looks like a causal LM to ``xtok.eval`` (``config``, ``parameters()``,
``get_output_embeddings()``, ``forward(...).logits``), with log-probs as its logits.
"""

from __future__ import annotations

from types import SimpleNamespace

import torch

from xtok.registry import ENSEMBLE_MODES
from xtok.vocab.identity import vocab_fingerprint


@ENSEMBLE_MODES.register("prob", help="mixture of probabilities: sum_i w_i p_i")
def mix_prob(logps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """(M, ..., V) member log-probs, (M,) weights summing to 1 -> (..., V) log-probs of the mixture."""
    shape = (-1,) + (1,) * (logps.dim() - 1)
    return torch.logsumexp(logps + weights.log().view(shape), dim=0)


@ENSEMBLE_MODES.register("logprob", help="mixture of log-probabilities (product of experts), renormalized")
def mix_logprob(logps: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    shape = (-1,) + (1,) * (logps.dim() - 1)
    return torch.log_softmax((logps * weights.view(shape)).sum(0), dim=-1)


def check_members(models, tokenizers, names) -> None:
    """Members must share one vocabulary: the same token table and the same logit width."""
    if len(models) < 2:
        raise ValueError(f"an ensemble needs at least two models, got {len(models)}")
    ref_tok, ref_width = vocab_fingerprint(tokenizers[0]), models[0].get_output_embeddings().weight.shape[0]
    for model, tok, name in zip(models[1:], tokenizers[1:], names[1:]):
        width = model.get_output_embeddings().weight.shape[0]
        if vocab_fingerprint(tok) != ref_tok or width != ref_width:
            raise ValueError(f"{name} has another vocabulary than {names[0]} ({len(tok)} tokens / {width} logits vs "
                             f"{len(tokenizers[0])} / {ref_width}): transplant it to {names[0]}'s tokenizer first "
                             f"(xtok transplant --student {name} --teacher {names[0]})")


def normalized_weights(weights: list[float] | None, n: int) -> torch.Tensor:
    if weights is None:
        return torch.full((n,), 1.0 / n)
    if len(weights) != n or any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"weights {weights} must be {n} non-negative numbers, one per model, not all zero")
    w = torch.tensor(weights, dtype=torch.float64)
    return (w / w.sum()).float()


class Ensemble(torch.nn.Module):
    """Members run side by side; ``forward`` returns the mixed log-probs as ``logits`` (B, T, V)."""

    def __init__(self, models, weights: torch.Tensor, mode: str = "prob"):
        super().__init__()
        self.members = torch.nn.ModuleList(models)
        self.register_buffer("weights", weights)
        self.mode, self.mix = mode, ENSEMBLE_MODES.get(mode)
        ctx = [getattr(m.config, "max_position_embeddings", None) for m in models]
        self.config = SimpleNamespace(max_position_embeddings=min((c for c in ctx if c), default=None),
                                      vocab_size=models[0].config.vocab_size)

    def get_output_embeddings(self):
        return self.members[0].get_output_embeddings()

    def member_logps(self, input_ids, attention_mask=None, past=None):
        outs = [m(input_ids=input_ids, attention_mask=attention_mask, past_key_values=p, use_cache=past is not None)
                for m, p in zip(self.members, past or [None] * len(self.members))]
        logps = torch.stack([torch.log_softmax(o.logits.float(), dim=-1) for o in outs])  # (M, B, T, V)
        return logps, [o.past_key_values for o in outs]

    @torch.no_grad()
    def forward(self, input_ids, attention_mask=None, **_):
        logps, _ = self.member_logps(input_ids, attention_mask)
        return SimpleNamespace(logits=self.mix(logps, self.weights))

    @torch.no_grad()
    def generate(self, input_ids: torch.Tensor, max_new_tokens: int, *, do_sample: bool = False, temperature: float = 1.0,
                 eos_token_id: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
        """Greedy or sampled continuation of (1, T) ``input_ids`` from the mixed distribution (each member keeps its
        KV cache)."""
        if input_ids.shape[0] != 1:
            raise ValueError(f"ensemble generation takes one prompt at a time, got a batch of {input_ids.shape[0]}")
        from transformers import DynamicCache

        past = [DynamicCache() for _ in self.members]
        ids, step = input_ids, input_ids
        for _ in range(max_new_tokens):
            logps, past = self.member_logps(step, None, past)
            mixed = self.mix(logps[:, :, -1], self.weights)  # (1, V)
            if do_sample:
                nxt = torch.multinomial(torch.softmax(mixed / temperature, -1), 1, generator=generator)
            else:
                nxt = mixed.argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
            step = nxt
            if eos_token_id is not None and int(nxt) == eos_token_id:
                break
        return ids
