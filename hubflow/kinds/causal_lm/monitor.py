"""A causal LM's monitor role: prompt drift through the model's own perplexity, answer lengths, finish reasons.

    observe(model_dir, facts, prompts, columns) -> {perplexity [n], tokens [n], answer_tokens?, truncated?}
    signals(ref, new, ref_texts, new_texts, th) -> perplexity ratio, prompt length, answer length, truncation Scores

A prompt unlike anything the model was tuned on is one it finds surprising: the median perplexity of the batch's
prompts over the reference's is the model's own measure of "new". Answers come from the rows when batch inference
(or the served traffic) recorded them: `answer_tokens` / `completion_tokens` and `finish_reason` columns.
"""

from __future__ import annotations

import functools

import numpy as np

from ...monitor import signals as sig
from ...monitor.settings import Thresholds


@functools.lru_cache(maxsize=1)
def _load(model_dir: str):
    import torch

    from .model import Generator

    return Generator.load(model_dir, torch.device("cpu"), torch.float32)


def observe(model_dir: str, facts, texts: list[str], columns: dict | None = None,
            batch_size: int = 8) -> dict[str, np.ndarray]:
    """Prompts -> each prompt's perplexity under the model (mean token NLL, exponentiated) and token count; the
    answers' token counts and truncation flags when `columns` has them."""
    import torch

    gen = _load(str(model_dir))
    model, tok = gen.model, gen.tokenizer
    ids = [tok(t, add_special_tokens=True, truncation=True, max_length=facts.max_length)["input_ids"] for t in texts]
    ppl = np.zeros(len(texts))
    with torch.inference_mode():
        for i in range(0, len(ids), batch_size):
            rows = ids[i:i + batch_size]
            width = max(len(r) for r in rows)
            x = torch.tensor([r + [gen.pad_id] * (width - len(r)) for r in rows])
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
            logits = model(input_ids=x, attention_mask=mask).logits[:, :-1].float()
            nll = torch.nn.functional.cross_entropy(logits.transpose(1, 2), x[:, 1:], reduction="none")
            keep = mask[:, 1:].float()
            ppl[i:i + len(rows)] = torch.exp((nll * keep).sum(1) / keep.sum(1).clamp(min=1)).numpy()
    out = {"perplexity": ppl, "tokens": np.array([len(r) for r in ids], dtype=np.int64)}
    columns = columns or {}
    answer = columns.get("answer_tokens") or columns.get("completion_tokens")
    if answer is not None:
        out["answer_tokens"] = np.asarray(answer, dtype=np.int64)
    if columns.get("finish_reason") is not None:
        out["truncated"] = np.array([r == "length" for r in columns["finish_reason"]], dtype=bool)
    return out


def signals(ref: dict, new: dict, ref_texts: list[str], new_texts: list[str], th: Thresholds) -> list[sig.Score]:
    ref_ppl, new_ppl = float(np.median(ref["perplexity"])), float(np.median(new["perplexity"]))
    out = [sig.score("prompt_perplexity_ratio", new_ppl / max(ref_ppl, 1e-9), th.perplexity_ratio, "above",
                     reference=ref_ppl, batch=new_ppl, note="median prompt perplexity, batch / reference"),
           *sig.length_drift(ref["tokens"], new["tokens"], th, "prompt_tokens")]
    if "answer_tokens" in ref and "answer_tokens" in new:
        out += sig.length_drift(ref["answer_tokens"], new["answer_tokens"], th, "answer_tokens")
    if "truncated" in ref and "truncated" in new:
        r, n = float(ref["truncated"].mean()), float(new["truncated"].mean())
        out.append(sig.score("truncated_rise", n - r, th.truncated_rise, "above", reference=r, batch=n,
                             note="share of answers cut at the token limit (finish reason 'length')"))
    return out
