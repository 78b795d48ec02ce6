"""The sentence embedder and its training pieces: a transformer body, pooling, optional L2 normalisation, a loss.

    Embedder(body, pooling, normalize, loss, scale)    nn.Module: embed(ids, mask) -> [n, dim]; forward(pair batch)
                                                       -> EmbedderOutput(loss, anchor, positive)
    load_for_training(model_dir, settings, max_length, allow_pickle) -> (Embedder, tokenizer), fp32 weights
    collator(tokenizer, on_gpu)                        rows of token ids -> padded tensors + masks (+ score, key)
    validate(model, eval_dl, accelerator)              validation loss, retrieval metrics on the pairs (and
                                                       Spearman of cosine vs score on scored pairs)
    rank(metrics)                                      the order that picks the best checkpoint

hubflow's one training loop calls `model(**batch).loss`, so the pair loss lives in `forward`. The anchor's token ids
are the batch's `input_ids`: the loop groups training batches by that column's lengths.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .metrics import retrieval_scores
from .settings import EmbeddingTrain, Loss, Pooling, resolve_pooling

TRAIN_COLUMNS = ["input_ids", "positive_input_ids", "negative_input_ids", "score", "positive_key"]
SIDES = ("", "positive_", "negative_")  # column prefixes: anchor, positive, hard negative


@dataclass
class EmbedderOutput:
    loss: torch.Tensor | None
    anchor: torch.Tensor
    positive: torch.Tensor


def pool(hidden: torch.Tensor, mask: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """Token vectors [n, t, d] + attention mask [n, t] -> sentence vectors [n, d], as sentence-transformers pools."""
    if pooling is Pooling.cls:
        return hidden[:, 0]
    m = mask.unsqueeze(-1).to(hidden.dtype)
    if pooling is Pooling.max:
        return hidden.masked_fill(m == 0, -1e9).max(dim=1).values  # padding never wins the max
    return (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)


class Embedder(nn.Module):
    """A transformer body whose pooled (and optionally normalised) output is the sentence vector."""

    def __init__(self, body: nn.Module, pooling: Pooling, normalize: bool, loss: Loss = Loss.mnrl,
                 scale: float = 20.0, max_length: int | None = None):
        super().__init__()
        self.body, self.pooling, self.normalize = body, Pooling(pooling), normalize
        self.loss_kind, self.scale, self.max_length = Loss(loss), scale, max_length

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        hidden = self.body(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        vectors = pool(hidden, attention_mask, self.pooling)
        return F.normalize(vectors, p=2, dim=-1) if self.normalize else vectors

    def forward(self, input_ids, attention_mask, positive_input_ids, positive_attention_mask,
                negative_input_ids=None, negative_attention_mask=None, score=None, positive_key=None) -> EmbedderOutput:
        """A pair batch -> its loss and the anchor/positive vectors. `positive_key` (an id per distinct positive
        text) keeps a duplicate of a row's own positive elsewhere in the batch from counting as its negative."""
        anchor = self.embed(input_ids, attention_mask)
        positive = self.embed(positive_input_ids, positive_attention_mask)
        if self.loss_kind is Loss.cosine:
            if score is None:
                raise ValueError("loss=cosine needs a score per pair (data score_column)")
            loss = F.mse_loss(F.cosine_similarity(anchor, positive).float(), score.float())
            return EmbedderOutput(loss, anchor, positive)
        candidates = [positive]
        if negative_input_ids is not None:
            candidates.append(self.embed(negative_input_ids, negative_attention_mask))
        # Cosine similarity whatever `normalize` says, as sentence-transformers' MNRL does.
        sims = F.normalize(anchor, dim=-1) @ F.normalize(torch.cat(candidates), dim=-1).T * self.scale
        n = len(anchor)
        if positive_key is not None:
            same = positive_key[:, None] == positive_key[None, :]
            same.fill_diagonal_(False)
            sims = torch.cat([sims[:, :n].masked_fill(same, float("-inf")), sims[:, n:]], dim=1)
        loss = F.cross_entropy(sims.float(), torch.arange(n, device=sims.device))
        return EmbedderOutput(loss, anchor, positive)


def load_for_training(model_dir: str, settings: EmbeddingTrain, max_length: int | None = None,
                      allow_pickle: bool = False):
    """A model folder (plain transformers or sentence-transformers, body at the root) -> (Embedder, tokenizer).

    Pooling: `settings.pooling`, else the folder's own (1_Pooling/config.json), else mean."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    if tokenizer.pad_token is None:  # decoder-only bases: pad with EOS; the attention mask hides it from pooling
        tokenizer.pad_token = tokenizer.eos_token
    body = AutoModel.from_pretrained(model_dir, use_safetensors=None if allow_pickle else True,
                                     dtype=torch.float32)  # fp32 master weights; transformers 5 keeps the file's dtype
    pooling = resolve_pooling(model_dir, settings.pooling)
    return Embedder(body, pooling, settings.normalize, settings.loss, settings.scale, max_length), tokenizer


def collator(tokenizer, on_gpu: bool):
    """Rows {input_ids, positive_input_ids, [negative_input_ids], [score], [positive_key]} -> padded tensors, each
    side padded to its own longest row, with attention masks."""
    pad_id = int(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0)
    multiple = 8 if on_gpu else 1  # tensor-core shapes on GPU; on CPU it would only add padding

    def collate(rows: list[dict]) -> dict[str, torch.Tensor]:
        out = {}
        for side in SIDES:
            if rows[0].get(f"{side}input_ids") is None:
                continue
            seqs = [r[f"{side}input_ids"] for r in rows]
            width = -(-max(map(len, seqs)) // multiple) * multiple
            ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            mask = torch.zeros((len(seqs), width), dtype=torch.long)
            for i, s in enumerate(seqs):
                ids[i, :len(s)], mask[i, :len(s)] = torch.as_tensor(s, dtype=torch.long), 1
            out[f"{side}input_ids"], out[f"{side}attention_mask"] = ids, mask
        if rows[0].get("score") is not None:
            out["score"] = torch.tensor([r["score"] for r in rows], dtype=torch.float32)
        if rows[0].get("positive_key") is not None:
            out["positive_key"] = torch.tensor([r["positive_key"] for r in rows], dtype=torch.long)
        return out

    return collate


@torch.no_grad()
def validate(model, eval_dl, accelerator) -> dict[str, float]:
    """Validation loss (mean over rows) and retrieval: each anchor searches the split's distinct positives for its
    own (recall@1, recall@10, MRR@10, nDCG@10), gathered from every process."""
    model.eval()
    losses, anchors, positives, keys, scores, keyed = [], [], [], [], [], True
    for batch in eval_dl:
        out = model(**batch)
        n = len(out.anchor)
        key = batch.get("positive_key")
        keyed = keyed and key is not None
        key = key if key is not None else torch.zeros(n, dtype=torch.long, device=out.anchor.device)
        score = batch.get("score")
        score = score if score is not None else torch.full((n,), float("nan"), device=out.anchor.device)
        a, p, k, s, loss = accelerator.gather_for_metrics((out.anchor.float(), out.positive.float(), key, score,
                                                           out.loss.detach().float().repeat(n)))
        anchors.append(a), positives.append(p), keys.append(k), scores.append(s), losses.append(loss)
    keys_np = torch.cat(keys).cpu().numpy()
    if not keyed:  # no keys: every row's positive counts as a document of its own
        keys_np = np.arange(len(keys_np))
    _, first, relevant = np.unique(keys_np, return_index=True, return_inverse=True)
    a, p = torch.cat(anchors).cpu().numpy(), torch.cat(positives).cpu().numpy()
    found = retrieval_scores(a, p[first], [np.array([r]) for r in relevant])
    out = {"eval_loss": torch.cat(losses).mean().item(), **{f"eval_{k}": float(v.mean()) for k, v in found.items()}}
    gold = torch.cat(scores).cpu().numpy()
    if not np.isnan(gold).any():  # scored pairs: how well cosine similarity orders them (what loss=cosine learns)
        cosine = (a * p).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(p, axis=1), 1e-12)
        out["eval_spearman"] = spearman(cosine, gold)
    return out


def spearman(x: np.ndarray, y: np.ndarray) -> float:
    """Spearman rank correlation (average ranks for ties); 0.0 when either side is constant."""
    rx, ry = _ranks(x), _ranks(y)
    if rx.std() == 0 or ry.std() == 0:
        return 0.0
    return float(np.corrcoef(rx, ry)[0, 1])


def _ranks(v: np.ndarray) -> np.ndarray:
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v), np.float64)
    ranks[order] = np.arange(len(v))
    _, inverse, counts = np.unique(v, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=ranks)
    return sums[inverse] / counts[inverse]  # tied values share their average rank


def rank(metrics: dict[str, float]) -> tuple[float, float]:
    # Best = highest validation nDCG@10 (it rewards ranking the right text first); on a tie, the lower loss. Scored
    # pairs (loss=cosine) are ranked by Spearman instead: their positives include pairs scored as unrelated.
    if "eval_spearman" in metrics:
        return metrics["eval_spearman"], -metrics["eval_loss"]
    return metrics["eval_ndcg_at_10"], -metrics["eval_loss"]
