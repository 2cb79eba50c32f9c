"""The scoring engine: summed log-probabilities of completions under any HF causal LM.

Scoring follows the official BabyLM 2025 pipeline (causal backend) exactly: the text is
tokenized with the tokenizer's own special tokens (so BOS when the tokenizer adds one), a token
counts towards the score when its character span ends after the completion's first character,
each counted token is scored given everything before it, and the candidate with the highest
score wins, the first candidate winning ties.

It is fast by construction: candidates are sorted by length and batched with little padding,
right padding needs no attention mask under causal attention, only the target logits are
normalised (logsumexp) rather than the whole log-softmax kept, and it runs under
`torch.inference_mode`, in bf16 on GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Encoded:
    """Token ids of one candidate and which of them are scored."""

    ids: list[int]
    scored: list[bool]  # scored[i]: token i counts towards the score (never token 0)


def encode_candidate(tokenizer, text: str, completion: str | None = None) -> Encoded:
    """Tokens of `text`; those overlapping its final `completion` characters are scored.

    With no completion the whole text is scored (BLiMP). Tokens are found by their character
    offsets, as the pipeline does, so any tokenizer's treatment of leading spaces is respected.
    """
    out = tokenizer(text, return_offsets_mapping=True)
    ids, offsets = out["input_ids"], out["offset_mapping"]
    completion_start = len(text) - len(completion if completion is not None else text)
    start_char = completion_start + offsets[0][0]
    scored = [end > start_char for _, end in offsets]
    scored[0] = False  # nothing predicts the first token
    return Encoded(ids, scored)


def _batches_by_length(lengths: np.ndarray, max_tokens: int, max_batch: int):
    """Index batches in length order, each at most `max_tokens` padded tokens."""
    order = np.argsort(lengths, kind="stable")
    batch: list[int] = []
    for i in order:
        longest = lengths[i]  # sorted ascending: the newcomer is the longest
        if batch and ((len(batch) + 1) * longest > max_tokens or len(batch) >= max_batch):
            yield batch
            batch = []
        batch.append(int(i))
    if batch:
        yield batch


@torch.inference_mode()
def score(model, candidates: list[Encoded], pad_id: int, max_tokens: int = 8192, max_batch: int = 256) -> np.ndarray:
    """Summed log-probability of each candidate's scored tokens (float64, in input order)."""
    device = next(model.parameters()).device
    lengths = np.array([len(c.ids) for c in candidates])
    scores = np.zeros(len(candidates), dtype=np.float64)
    for batch in _batches_by_length(lengths, max_tokens, max_batch):
        width = int(lengths[batch].max())
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        scored = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, i in enumerate(batch):
            ids[row, : lengths[i]] = torch.as_tensor(candidates[i].ids)
            scored[row, : lengths[i]] = torch.as_tensor(candidates[i].scored)
        ids, scored = ids.to(device), scored.to(device)
        logits = model(input_ids=ids, use_cache=False).logits[:, :-1].float()
        targets = ids[:, 1:]
        target_logits = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
        logprobs = target_logits - torch.logsumexp(logits, dim=-1)
        sums = (logprobs * scored[:, 1:]).sum(dim=1, dtype=torch.float64)
        scores[batch] = sums.cpu().numpy()
    return scores


def choose(scores: np.ndarray) -> np.ndarray:
    """Index of the best candidate per row of a (items x candidates) array; ties go to the first."""
    return np.argmax(scores, axis=1)


@torch.inference_mode()
def reference_score(model, candidate: Encoded) -> float:
    """The deliberately simple reference: one sequence, a plain forward pass, summed log-softmax."""
    device = next(model.parameters()).device
    ids = torch.as_tensor([candidate.ids], device=device)
    logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
    picked = logprobs.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
    return float(picked[torch.as_tensor(candidate.scored[1:], device=device)].sum())


def load_model(path, device: str | None = None):
    """An HF causal LM for scoring: eval mode, on GPU in bf16 when there is one."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:  # as the pipeline does for causal models
        tokenizer.pad_token_id = tokenizer.eos_token_id
    return model, tokenizer
