"""The scoring engine: summed log-probabilities of completions under any HF causal LM.

Scoring follows the official BabyLM 2025 pipeline (causal backend) exactly: the text is
tokenized with the tokenizer's own special tokens (so BOS when the tokenizer adds one), a token
counts towards the score when its character span ends after the completion's first character,
each counted token is scored given everything before it, and the candidate with the highest
score wins, the first candidate winning ties.

It is fast by construction:
- an item's candidates (a BLiMP minimal pair, EWoK's two targets) share their common token prefix:
  they are packed into one sequence, prefix first and then each candidate's remaining tokens, each
  attending to the prefix and to itself (a block mask, positions restarting after the prefix), so
  the prefix is computed once, and a candidate's last token, only ever a target, is not fed at all
  (all of BLiMP: 24% fewer tokens than the two whole sentences);
- sequences are sorted by length and batched with little padding;
- the LM head and the log-normaliser (logsumexp) run only on the positions that predict a scored
  token; the whole batch is tokenized in one call; `torch.inference_mode`, bf16 on GPU.
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


def encode_candidates(tokenizer, candidates: list[tuple[str, str | None]]) -> list[Encoded]:
    """Tokens of each `text`; those overlapping its final `completion` characters are scored.

    With no completion the whole text is scored (BLiMP). Tokens are found by their character
    offsets, as the pipeline does, so any tokenizer's treatment of leading spaces is respected.
    """
    if not candidates:
        return []
    texts = [text for text, _ in candidates]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.padding is None and backend.truncation is None:
        # The Rust tokenizer the wrapper calls anyway, without building Python dicts: 3x faster.
        encodings = backend.encode_batch(texts)
        ids_offsets = [(e.ids, e.offsets) for e in encodings]
    else:
        out = tokenizer(texts, return_offsets_mapping=True)
        ids_offsets = list(zip(out["input_ids"], out["offset_mapping"]))
    encoded = []
    for (text, completion), (ids, offsets) in zip(candidates, ids_offsets):
        start_char = len(text) - len(completion if completion is not None else text) + offsets[0][0]
        scored = [end > start_char for _, end in offsets]
        scored[0] = False  # nothing predicts the first token
        encoded.append(Encoded(ids, scored))
    return encoded


def encode_candidate(tokenizer, text: str, completion: str | None = None) -> Encoded:
    return encode_candidates(tokenizer, [(text, completion)])[0]


@dataclass(frozen=True)
class Packed:
    """One forward sequence: a group's shared prefix, then each candidate's own tokens."""

    ids: np.ndarray
    positions: np.ndarray  # position ids: each candidate's tokens continue from the prefix
    segments: np.ndarray  # 0: the shared prefix; j + 1: candidate j's own tokens
    predicting: np.ndarray  # for each scored token: the position whose output predicts it,
    targets: np.ndarray  # its id,
    owners: np.ndarray  # and its candidate


def pack(group: list[Encoded]) -> Packed:
    """Candidates packed over their longest common prefix (of ids and scored flags)."""
    shortest = min(len(c.ids) for c in group)
    first_ids, first_scored = np.asarray(group[0].ids[:shortest]), np.asarray(group[0].scored[:shortest])
    same = np.ones(shortest, dtype=bool)
    for cand in group[1:]:
        same &= (np.asarray(cand.ids[:shortest]) == first_ids) & (np.asarray(cand.scored[:shortest]) == first_scored)
    # Every candidate keeps at least its last token to itself: a last token is only ever a target,
    # so it is not fed to the model at all (nothing attends to it, nothing is predicted from it).
    prefix = min(shortest if same.all() else int(np.argmin(same)), shortest - 1)
    ids, positions, segments = [group[0].ids[:prefix]], [np.arange(prefix)], [np.zeros(prefix, dtype=np.int64)]
    predicting, targets, owners = [], [], []
    start = prefix  # where the current candidate's own tokens begin in the packed sequence
    for j, cand in enumerate(group):
        own = len(cand.ids) - 1 - prefix  # fed tokens after the prefix, the last one left out
        ids.append(cand.ids[prefix:-1])
        positions.append(np.arange(prefix, len(cand.ids) - 1))
        segments.append(np.full(own, j + 1))
        index = np.arange(len(cand.ids))
        packed_index = np.where(index < prefix, index, start + index - prefix)
        scored = np.flatnonzero(cand.scored)  # never token 0
        predicting.append(packed_index[scored - 1])
        targets.append(np.asarray(cand.ids)[scored])
        owners.append(np.full(len(scored), j))
        start += own
    cat = lambda parts: np.concatenate(parts).astype(np.int64)  # noqa: E731
    return Packed(cat(ids), cat(positions), cat(segments), cat(predicting), cat(targets), cat(owners))


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


def _block_mask(segments: torch.Tensor) -> torch.Tensor:
    """(B, 1, T, T) bool: causal, and a candidate's tokens see the prefix and themselves only.

    Padding has segment -1 and sees only padding, so no row is fully masked (which would be NaN).
    """
    width = segments.shape[1]
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril()
    query, key = segments[:, :, None], segments[:, None, :]
    visible = (key == query) | ((key == 0) & (query != -1))
    return (visible & causal)[:, None]


@torch.inference_mode()
def score_groups(model, groups: list[list[Encoded]], pad_id: int, max_tokens: int = 4096,
                 max_batch: int = 256) -> list[np.ndarray]:
    """Summed log-probability of each candidate's scored tokens, per group (float64, input order)."""
    device = next(model.parameters()).device
    transformer, head = model.base_model, model.get_output_embeddings()
    packed = [pack(group) for group in groups]
    first = np.cumsum([0] + [len(group) for group in groups])  # group i's candidates: first[i]...
    lengths = np.array([len(p.ids) for p in packed])
    flat = torch.zeros(int(first[-1]), dtype=torch.float64)
    for batch in _batches_by_length(lengths, max_tokens, max_batch):
        width = int(lengths[batch].max())
        ids = np.full((len(batch), width), pad_id, dtype=np.int64)
        positions = np.zeros((len(batch), width), dtype=np.int64)
        segments = np.full((len(batch), width), -1, dtype=np.int64)
        for row, i in enumerate(batch):
            p = packed[i]
            ids[row, : len(p.ids)], positions[row, : len(p.ids)], segments[row, : len(p.ids)] = (
                p.ids, p.positions, p.segments)
        # Every scored token of the batch: (row, predicting column, target id, flat candidate index).
        rows = np.concatenate([np.full(len(packed[i].targets), row) for row, i in enumerate(batch)])
        cols = np.concatenate([packed[i].predicting for i in batch])
        targets = torch.from_numpy(np.concatenate([packed[i].targets for i in batch])).to(device)
        owners = torch.from_numpy(np.concatenate([first[i] + packed[i].owners for i in batch]))
        if not len(rows):
            continue
        segments = torch.from_numpy(segments).to(device)
        hidden = transformer(input_ids=torch.from_numpy(ids).to(device),
                             position_ids=torch.from_numpy(positions).to(device),
                             attention_mask=_block_mask(segments), use_cache=False).last_hidden_state
        logits = head(hidden[torch.from_numpy(rows).to(device), torch.from_numpy(cols).to(device)]).float()
        logprobs = logits.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        flat.index_add_(0, owners, logprobs.double().cpu())
    scores = flat.numpy()
    return [scores[a:b] for a, b in zip(first[:-1], first[1:])]


def score(model, candidates: list[Encoded], pad_id: int, **batching) -> np.ndarray:
    """Summed log-probability of each candidate's scored tokens, each scored on its own."""
    return np.array([s[0] for s in score_groups(model, [[c] for c in candidates], pad_id, **batching)])


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
