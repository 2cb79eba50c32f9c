"""The scoring engine: summed log-probabilities of completions under any HF causal LM.

Scoring follows the official BabyLM 2025 pipeline (causal backend) exactly: the text is
tokenized with the tokenizer's own special tokens (so BOS when the tokenizer adds one), a token
counts towards the score when its character span ends after the completion's first character,
each counted token is scored given everything before it, and the candidate with the highest
score wins, the first candidate winning ties.

It is fast by construction:
- all candidates of a task are sorted and planted in prefix trees: candidates with a common token
  prefix (a BLiMP minimal pair, EWoK's two targets, but also unrelated sentences that begin
  alike) share its tokens, each computed once; a tree of up to ~128 tokens is one sequence whose
  tokens attend to their ancestors only, at positions equal to their depth. A candidate's last
  token is only ever a target, so it is not fed at all. On all of BLiMP this feeds 2.6M tokens
  instead of 4.05M (the two whole sentences of each pair) or 3.07M (each pair over its own prefix);
- sequences are sorted by length and batched with little padding;
- the LM head and log-softmax run once per token that predicts a scored token; the whole task is
  tokenized in one call; `torch.inference_mode`, bf16 on GPU;
- all of that but the forward passes is a `Plan` of the task, which depends on its tokens alone:
  an evaluation actor makes it once per task and tokenizer and runs it on every checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import chain

import numpy as np
import torch

from classit.evaluate.progress import Progress


@dataclass(frozen=True)
class Encoded:
    """Candidates' token ids, right-padded with -1, and which tokens count towards each score."""

    ids: np.ndarray  # (candidates, width) int64
    scored: np.ndarray  # (candidates, width) bool, never a candidate's first token

    @classmethod
    def from_lists(cls, ids: list[list[int]], scored: list[list[bool]]) -> Encoded:
        lengths = np.fromiter(map(len, ids), np.int64, len(ids))
        return cls.from_flat(np.fromiter(chain.from_iterable(ids), np.int64, int(lengths.sum())),
                             np.fromiter(chain.from_iterable(scored), bool, int(lengths.sum())), lengths)

    @classmethod
    def from_flat(cls, ids: np.ndarray, scored: np.ndarray, lengths: np.ndarray) -> Encoded:
        in_seq = np.arange(max(int(lengths.max(initial=0)), 1)) < lengths[:, None]
        padded_ids = np.full(in_seq.shape, -1, dtype=np.int64)
        padded_scored = np.zeros(in_seq.shape, dtype=bool)
        padded_ids[in_seq], padded_scored[in_seq] = ids, scored
        return cls(padded_ids, padded_scored)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, rows) -> Encoded:
        rows = [rows] if isinstance(rows, (int, np.integer)) else rows  # always a batch
        return Encoded(self.ids[rows], self.scored[rows])

    @property
    def lengths(self) -> np.ndarray:
        return (self.ids >= 0).sum(axis=1)

    def candidate(self, i: int) -> tuple[list[int], list[bool]]:
        n = int(self.lengths[i])
        return self.ids[i, :n].tolist(), self.scored[i, :n].tolist()


def encode_candidates(tokenizer, candidates: list[tuple[str, str | None]]) -> Encoded:
    """Tokens of each `text`, padded; those overlapping its final `completion` characters are scored.

    With no completion the whole text is scored (BLiMP). Tokens are found by their character
    offsets, as the pipeline does, so any tokenizer's treatment of leading spaces is respected.
    """
    texts = [text for text, _ in candidates]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None and backend.padding is None and backend.truncation is None:
        # The Rust tokenizer the wrapper calls anyway, without building Python dicts: 3x faster.
        encodings = backend.encode_batch(texts)
        ids, offsets = [e.ids for e in encodings], [e.offsets for e in encodings]
    else:
        out = tokenizer(texts, return_offsets_mapping=True) if texts else {"input_ids": [], "offset_mapping": []}
        ids, offsets = out["input_ids"], out["offset_mapping"]
    lengths = np.fromiter(map(len, ids), np.int64, len(ids))
    total = int(lengths.sum())
    spans = np.fromiter(chain.from_iterable(chain.from_iterable(offsets)), np.int64, 2 * total).reshape(total, 2)
    first = np.cumsum(lengths) - lengths
    has_tokens = lengths > 0
    completion_start = np.array([len(text) - len(completion if completion is not None else text)
                                 for text, completion in candidates], dtype=np.int64)
    completion_start[has_tokens] += spans[first[has_tokens], 0]
    scored = spans[:, 1] > np.repeat(completion_start, lengths)
    scored[first[has_tokens]] = False  # nothing predicts a first token
    return Encoded.from_flat(np.fromiter(chain.from_iterable(ids), np.int64, total), scored, lengths)


@dataclass(frozen=True)
class Forest:
    """Candidates' fed tokens as prefix trees, one tree per row, nodes numbered in preorder.

    A node is one fed token; neighbouring candidates with a common prefix share its nodes. In
    preorder a node's descendants are the nodes numbered after it up to its `end`, so node i sees
    node j (j is i or one of its ancestors) when j <= i < end[j].
    """

    tokens: np.ndarray  # per node: its token id,
    depth: np.ndarray  # its position in its sequence,
    end: np.ndarray  # and one past its last descendant
    row_starts: np.ndarray  # each row's first node, then the node count
    predicting: np.ndarray  # per scored token: the node whose output predicts it,
    targets: np.ndarray  # its id,
    owners: np.ndarray  # and its candidate (index into the list given)


def plant(encoded: Encoded, row_tokens: int = 128) -> Forest:
    """The prefix trees of the candidates, packed greedily into rows of about `row_tokens` nodes.

    Each candidate adds only the tokens after its common prefix with the one before it (all of
    them when it opens a new row), so any order is correct, and sorted candidates (as `score`
    gives them) share every common prefix. A candidate's last token is only ever a target, so it
    is not fed at all.
    """
    n, width = encoded.ids.shape
    ids, scored = encoded.ids, encoded.scored
    fed_len = np.maximum(encoded.lengths - 1, 0)
    fed = np.where(np.arange(width) < fed_len[:, None], ids, -1)

    common = np.zeros(n, dtype=np.int64)  # fed tokens in common with the candidate before
    if n > 1:
        same = (fed[1:] == fed[:-1]) & (fed[1:] >= 0)
        common[1:] = np.cumprod(same, axis=1).sum(axis=1)
    common_list, fed_list, row_first, used = common.tolist(), fed_len.tolist(), [], 0
    for i in range(n):  # greedy rows: a candidate's whole path lies in one row
        if i == 0 or (used and used + fed_list[i] - common_list[i] > row_tokens):
            common_list[i], used = 0, 0
            row_first.append(i)
        used += fed_list[i] - common_list[i]
    common = np.asarray(common_list, dtype=np.int64)
    start = np.concatenate([[0], np.cumsum(fed_len - common)])  # candidate i's new nodes: start[i]...
    depth = np.arange(width - 1)
    creates = common[:, None] <= depth  # i creates its depth-k node (if it has one) iff common[i] <= k
    # The depth-k node on candidate i's path was created by the latest candidate up to i creating one
    # at depth k; its descendants end where the next candidate creating one at depth k starts.
    creator = np.maximum.accumulate(np.where(creates, np.arange(n)[:, None], -1), axis=0)
    node = start[creator] + depth - common[creator]
    next_creator = np.minimum.accumulate(np.where(creates, np.arange(n)[:, None], n)[::-1], axis=0)[::-1]
    next_creator = np.vstack([next_creator[1:], np.full((1, width - 1), n)])
    owned = creates & (depth < fed_len[:, None])
    predicts = scored[:, 1:] & (depth < fed_len[:, None])  # token k + 1 is predicted by node k
    return Forest(
        tokens=fed[:, :-1][owned], depth=np.broadcast_to(depth, owned.shape)[owned],
        end=start[next_creator][owned], row_starts=np.append(start[row_first], start[-1]),
        predicting=node[predicts], targets=ids[:, 1:][predicts],
        owners=np.broadcast_to(np.arange(n)[:, None], predicts.shape)[predicts])


def forests(encoded: Encoded, row_tokens: int = 128, chunk_cells: int = 2**21):
    """The candidates' prefix trees a chunk at a time (chunk size x longest candidate <= `chunk_cells`,
    bounding memory), in sorted order so that a chunk holds neighbours: (the chunk's candidates, their forest)."""
    order = np.lexsort(encoded.ids.T[::-1])  # -1 padding sorts a prefix before its extensions
    chunk = max(1, chunk_cells // encoded.ids.shape[1])
    for first in range(0, len(order), chunk):
        part = order[first:first + chunk]
        yield part, plant(encoded[part], row_tokens)


def _batches_by_length(lengths: np.ndarray, max_tokens: int):
    """Index batches in length order, each at most `max_tokens` padded tokens."""
    order = np.argsort(lengths, kind="stable")
    batch: list[int] = []
    for i in order:
        longest = lengths[i]  # sorted ascending: the newcomer is the longest
        if batch and (len(batch) + 1) * longest > max_tokens:
            yield batch
            batch = []
        batch.append(int(i))
    if batch:
        yield batch


def _plan_batches(forest: Forest, max_tokens: int):
    """The forest's rows in length-sorted batches of at most `max_tokens`; each row's place in its
    batch; and each batch's scored tokens (indices into `forest.predicting`)."""
    row_len = np.diff(forest.row_starts)
    batches = list(_batches_by_length(row_len, max_tokens))
    batch_of_row, row_in_batch = np.empty(len(row_len), np.int64), np.empty(len(row_len), np.int64)
    for b, rows in enumerate(batches):
        batch_of_row[rows], row_in_batch[rows] = b, np.arange(len(rows))
    target_row = np.searchsorted(forest.row_starts, forest.predicting, side="right") - 1
    target_batch = batch_of_row[target_row]
    by_batch = np.argsort(target_batch, kind="stable")  # each batch's scored tokens, contiguous
    bounds = np.searchsorted(target_batch[by_batch], np.arange(len(batches) + 1))
    return batches, row_in_batch, [by_batch[bounds[b]:bounds[b + 1]] for b in range(len(batches))]


@dataclass(frozen=True)
class Batch:
    """One forward pass: rows of prefix trees, padded, and the scored tokens its outputs predict."""

    ids: np.ndarray  # (rows, width) each node's token id, pad_id after the row's last node (every array int32)
    positions: np.ndarray  # (rows, width) each node's depth, 0 on padding
    ends: np.ndarray  # (rows, width) one past each node's last descendant, in the row; padding sees itself
    predictor_rows: np.ndarray  # per node whose output predicts a scored token: its row
    predictor_cols: np.ndarray  # and its column
    which: np.ndarray  # per scored token: its predictor (index into the two above),
    targets: np.ndarray  # its id,
    owners: np.ndarray  # and its candidate (index into the task's candidates)
    candidates: int  # how many candidates it scores (a candidate's path lies in one row)

    @property
    def nbytes(self) -> int:
        return sum(value.nbytes for value in vars(self).values() if isinstance(value, np.ndarray))


@dataclass(frozen=True)
class Plan:
    """A task's whole scoring but the model: every forward pass over its candidates' prefix trees.
    It depends on the tokens alone, so an evaluation actor makes it once per task and tokenizer and
    runs it on every checkpoint (planting all of BLiMP takes ~2 s on a CPU core)."""

    candidates: int
    batches: list[Batch]

    @property
    def unscored(self) -> int:
        """Candidates with no scored token (a single token), whose score is 0."""
        return self.candidates - sum(batch.candidates for batch in self.batches)

    @property
    def nbytes(self) -> int:
        return sum(batch.nbytes for batch in self.batches)


def plan_scoring(encoded: Encoded, pad_id: int, max_tokens: int = 4096, row_tokens: int = 128,
                 chunk_cells: int = 2**21) -> Plan:
    """The candidates planted in prefix trees a chunk at a time (`forests`), their rows batched by
    length (at most `max_tokens` padded tokens a batch); batches with nothing to score left out."""
    batches = []
    for part, forest in forests(encoded, row_tokens, chunk_cells):
        rows_by_batch, row_in_batch, scored = _plan_batches(forest, max_tokens)
        batches += [_batch(forest, part, rows, mine, row_in_batch, pad_id)
                    for rows, mine in zip(rows_by_batch, scored) if len(mine)]
    return Plan(len(encoded), batches)


def _batch(forest: Forest, part: np.ndarray, rows: list[int], mine: np.ndarray, row_in_batch: np.ndarray,
           pad_id: int) -> Batch:
    """The forest's `rows` as one padded batch, with its scored tokens `mine` (indices into
    `forest.predicting`); `part` maps the forest's candidates to the task's."""
    rows = np.asarray(rows)
    row_len = forest.row_starts[rows + 1] - forest.row_starts[rows]
    starts, local = forest.row_starts[rows][:, None], np.arange(int(row_len.max()))
    real = local < row_len[:, None]
    nodes = np.where(real, starts + local, 0)
    predictors, which = np.unique(forest.predicting[mine], return_inverse=True)
    predictor_row = np.searchsorted(forest.row_starts, predictors, side="right") - 1
    owners = part[forest.owners[mine]]
    kept = dict(ids=np.where(real, forest.tokens[nodes], pad_id), positions=np.where(real, forest.depth[nodes], 0),
                ends=np.where(real, forest.end[nodes] - starts, local + 1), predictor_rows=row_in_batch[predictor_row],
                predictor_cols=predictors - forest.row_starts[predictor_row], which=which,
                targets=forest.targets[mine], owners=owners)
    # int32 halves what an actor keeps per task (all of BLiMP: ~100 MB); ids and positions are widened where fed.
    return Batch(**{name: array.astype(np.int32) for name, array in kept.items()}, candidates=len(np.unique(owners)))


def _forward(transformer, head, batch: Batch, device) -> torch.Tensor:
    """The batch through the transformer, each token seeing its ancestors only; the log-probability
    of each scored token, from the LM head run on its predictor alone."""
    ids, positions = (torch.from_numpy(a).to(device, torch.int64) for a in (batch.ids, batch.positions))
    ends = torch.from_numpy(batch.ends).to(device)
    keys = torch.arange(ids.shape[1], device=device)
    sees = (keys[None, None, :] <= keys[None, :, None]) & (keys[None, :, None] < ends[:, None, :])
    hidden = transformer(input_ids=ids, position_ids=positions, attention_mask=sees[:, None],
                         use_cache=False).last_hidden_state
    at = (torch.from_numpy(batch.predictor_rows).to(device), torch.from_numpy(batch.predictor_cols).to(device))
    logprobs = torch.log_softmax(head(hidden[at]).float(), dim=-1)
    return logprobs[torch.from_numpy(batch.which).to(device), torch.from_numpy(batch.targets).to(device)]


@torch.inference_mode()
def run_plan(model, plan: Plan, progress: Progress | None = None, share: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Summed log-probability of each candidate's scored tokens (float64, in order).

    `share` (k, n): only every n-th batch from the k-th is run, the other candidates' totals left 0,
    and `progress` counts this share's candidates (the unscored ones in share 0). A candidate's
    tokens lie in one batch, so the n shares' totals summed are the whole run's, to the bit: the
    same batches, the same floats, on n actors at once.
    """
    progress = progress or Progress()
    mine = plan.batches[share[0]::share[1]]
    unscored = plan.unscored if share[0] == 0 else 0
    progress.start(sum(batch.candidates for batch in mine) + unscored, "candidates")
    progress.advance(unscored)
    device = next(model.parameters()).device
    transformer, head = model.base_model, model.get_output_embeddings()
    totals = torch.zeros(plan.candidates, dtype=torch.float64)
    for batch in mine:
        picked = _forward(transformer, head, batch, device)
        totals.index_add_(0, torch.from_numpy(batch.owners), picked.double().cpu())
        progress.advance(batch.candidates)
    return totals.numpy()


def score(model, encoded: Encoded, pad_id: int, max_tokens: int = 4096, row_tokens: int = 128,
          chunk_cells: int = 2**21, progress: Progress | None = None, share: tuple[int, int] = (0, 1)) -> np.ndarray:
    """`run_plan` of the candidates' `plan_scoring`: each row one sequence whose tokens attend to their
    ancestors only, at positions equal to their depth; the LM head and log-softmax run once per
    node that predicts a scored token."""
    return run_plan(model, plan_scoring(encoded, pad_id, max_tokens, row_tokens, chunk_cells), progress, share)


@torch.inference_mode()
def reference_scores(model, encoded: Encoded) -> np.ndarray:
    """The deliberately simple reference: one candidate at a time, a plain forward pass, summed
    log-softmax of its scored tokens."""
    device = next(model.parameters()).device
    scores = []
    for i in range(len(encoded)):
        ids, scored = encoded.candidate(i)
        ids = torch.as_tensor([ids], device=device)
        logprobs = torch.log_softmax(model(input_ids=ids).logits[0, :-1].double(), dim=-1)
        picked = logprobs.gather(-1, ids[0, 1:].unsqueeze(-1)).squeeze(-1)
        scores.append(float(picked[torch.as_tensor(scored[1:], device=device)].sum()))
    return np.array(scores)


def load_model(path, device: str | None = None):
    """An HF causal LM for scoring: eval mode, on GPU in bf16 when there is one."""
    from classit.models import load_checkpoint
    from classit.tokenizer import load_tokenizer

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    model = load_checkpoint(path, dtype=dtype).to(device).eval()
    tokenizer = load_tokenizer(path)
    if tokenizer.pad_token_id is None:  # as the pipeline does for causal models
        tokenizer.pad_token_id = tokenizer.eos_token_id
    return model, tokenizer
