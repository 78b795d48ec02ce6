"""The sentence-embedding model's HTTP handler: TEI's `/embed`, the Inference API's `POST /`, OpenAI's `/v1/embeddings`.

    POST /embed          {"inputs": "text" | [...], "normalize": bool, "truncate": bool}  -> [[float, ...], ...]
    POST /               the same body (also with "parameters": {...}): InferenceClient(base_url=URL).feature_extraction
    POST /v1/embeddings  {"input": "text" | [...] | token ids, "model", "encoding_format": "float" | "base64"}
                         -> {"object": "list", "data": [{"object": "embedding", "index", "embedding"}], "usage"}
                         (the `openai` client's `embeddings.create` asks for base64 by default)

Self-contained (imports neither hubflow nor the server): the endpoint Space ships this file as `handler.py` next to
the server, which calls `create_handler(model_dir, kit)`; see docs/serving.md. Vectors equal hubflow's encoder's
(hubflow/kinds/sentence_embedding/encode.py): the sentence-transformers layout's pooling, normalization and
max_seq_length, the same padding and precision. `normalize` unset: as the model says; `truncate` unset: the server's
--on-too-long (TEI refuses unless asked to truncate; a client's explicit choice wins either way).
"""

from __future__ import annotations

import asyncio
import base64
import json
import struct
from pathlib import Path

from fastapi import APIRouter, Request  # at module level: FastAPI resolves route annotations in these globals

POOLINGS = {"pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max", "pooling_mode_mean_tokens": "mean"}


def read_layout(folder: Path) -> tuple[str, bool, int | None]:
    """(pooling, normalize, max_seq_length) of a sentence-transformers folder; a plain transformers folder: mean
    pooling, normalized, the tokenizer's limit — as hubflow's encoder reads them."""
    modules_file = folder / "modules.json"
    if not modules_file.exists():
        return "mean", True, None
    kinds = [m["type"].rsplit(".", 1)[-1] for m in json.loads(modules_file.read_text())]
    if any(k not in ("Transformer", "Pooling", "Normalize") for k in kinds):
        raise ValueError(f"modules {kinds}: this server implements Transformer, Pooling and Normalize")
    pooling = "mean"
    if (pooling_file := folder / "1_Pooling" / "config.json").exists():
        config = json.loads(pooling_file.read_text())
        modes = [m for key, m in POOLINGS.items() if config.get(key)]
        pooling = config.get("pooling_mode") if isinstance(config.get("pooling_mode"), str) else (
            modes[0] if len(modes) == 1 else None)
        if pooling not in ("cls", "max", "mean"):
            raise ValueError(f"pooling {config}: this server implements cls, max and mean")
    st_file = folder / "sentence_bert_config.json"
    max_seq = json.loads(st_file.read_text()).get("max_seq_length") if st_file.exists() else None
    return pooling, "Normalize" in kinds, max_seq


class EmbeddingHandler:
    def __init__(self, model_dir: str, kit):
        import torch
        from transformers import AutoModel, AutoTokenizer

        self.kit, self.settings = kit, kit.settings
        self.pooling, self.normalize, max_seq = read_layout(Path(model_dir))
        int8 = kit.dtype == torch.qint8
        body = AutoModel.from_pretrained(model_dir, dtype=torch.float32 if int8 else kit.dtype, use_safetensors=True)
        self.body = body.to(kit.device).eval()
        if int8:  # as hubflow's encoder: every Linear of the body, per-channel weight scales
            kit.quantize_int8(self.body, per_channel=True)
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.pad_id = int(pad or 0)
        positions = getattr(body.config, "max_position_embeddings", None) or 1 << 62
        self.max_length = int(max_seq or min(self.tokenizer.model_max_length, positions))
        self.dim = body.config.hidden_size
        self.model_id = kit.model_info["id"]
        self.batcher = kit.Batcher(self.embed, name="embed")
        self.embed([(self.tokenizer("warm up")["input_ids"], True)])  # the first request should not pay for lazy inits

        self.router = APIRouter()

        async def tei(request: Request):
            body = await kit.json_body(request)
            params = body.get("parameters") if isinstance(body.get("parameters"), dict) else {}
            option = {k: body.get(k, params.get(k)) for k in ("normalize", "truncate")}
            vectors, _ = await self.vectors(body.get("inputs"), "inputs", **option)
            return vectors

        async def openai(request: Request):
            body = await kit.json_body(request)
            encoding = body.get("encoding_format") or "float"
            if encoding not in ("float", "base64"):
                raise kit.ServeError(400, "`encoding_format` must be float or base64")
            if body.get("dimensions") not in (None, self.dim):
                raise kit.ServeError(400, f"`dimensions`: this model's vectors have {self.dim}")
            vectors, tokens = await self.vectors(body.get("input"), "input", None, None)
            data = [{"object": "embedding", "index": i,
                     "embedding": v if encoding == "float" else base64.b64encode(
                         struct.pack(f"<{len(v)}f", *v)).decode()} for i, v in enumerate(vectors)]
            return {"object": "list", "data": data, "model": body.get("model") or self.model_id,
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}

        self.router.add_api_route("/embed", tei, methods=["POST"])
        self.router.add_api_route("/", tei, methods=["POST"])
        self.router.add_api_route("/v1/embeddings", openai, methods=["POST"])

    def info(self) -> dict:
        return {"max_input_length": self.max_length, "dimensions": self.dim, "pooling": self.pooling,
                "normalize": self.normalize, "routes": ["/embed", "/", "/v1/embeddings"]}

    async def stop(self):
        await self.batcher.stop()

    # ---- one request
    async def vectors(self, inputs, field: str, normalize, truncate) -> tuple[list[list[float]], int]:
        """inputs (text(s), or token id list(s)) -> (vectors, tokens read)."""
        err = self.kit.ServeError
        for name, value in (("normalize", normalize), ("truncate", truncate)):
            if value is not None and not isinstance(value, bool):
                raise err(400, f"`{name}` must be true or false")
        if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and _is_ids(inputs)):
            inputs = [inputs]
        if not isinstance(inputs, list) or not all(isinstance(t, str) or _is_ids(t) for t in inputs):
            raise err(400, f"`{field}` must be a string or a list of strings")
        if not inputs or not all(t.strip() if isinstance(t, str) else t for t in inputs):
            raise err(400, f"`{field}` is empty: send at least one non-empty text")
        if len(inputs) > self.batcher.max_queue:
            raise err(400, f"{len(inputs)} inputs in one request; this server takes at most {self.batcher.max_queue}")
        cut = self.settings.on_too_long == "truncate" if truncate is None else truncate
        ids = [self.tokenize(t, cut) for t in inputs]
        if self.batcher.depth + len(ids) > self.batcher.max_queue:
            raise err(429, "the server is busy; retry shortly", {"Retry-After": "1"})
        unit = self.normalize if normalize is None else normalize
        vectors = await asyncio.gather(*(self.batcher.submit((i, unit), len(i)) for i in ids))
        texts = [(t, len(i)) for t, i in zip(inputs, ids) if isinstance(t, str)]  # token-id inputs are not sampled
        # --sample-rate: the texts (the monitor's query drift reads them); a no-op when off
        self.kit.sample(f"/embed:{field}", [{"text": t} for t, _ in texts], [{"tokens": n} for _, n in texts])
        return list(vectors), sum(map(len, ids))

    def tokenize(self, text, cut: bool) -> list[int]:
        ids = list(text) if not isinstance(text, str) else self.tokenizer(
            text, truncation=cut, max_length=self.max_length if cut else None)["input_ids"]
        if len(ids) > self.max_length:
            if not cut:
                raise self.kit.too_long(len(ids), self.max_length)
            ids = ids[:self.max_length]  # token ids given by an OpenAI client: cut as the tokenizer would
        if max(ids) >= self.tokenizer.vocab_size + len(self.tokenizer.get_added_vocab()) or min(ids) < 0:
            raise self.kit.ServeError(400, "a token id is outside this model's vocabulary")
        return ids

    # ---- one batch (the batcher's worker thread; items (ids, normalize) arrive longest first)
    def embed(self, items: list[tuple[list[int], bool]]) -> list[list[float]]:
        import torch

        rows = [row for row, _ in items]
        width = len(rows[0])
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        ids, mask = ids.to(self.kit.device), mask.to(self.kit.device)
        with torch.inference_mode():
            hidden = self.body(input_ids=ids, attention_mask=mask).last_hidden_state
            if self.pooling == "cls":
                vectors = hidden[:, 0]
            elif self.pooling == "max":
                vectors = hidden.masked_fill(mask.unsqueeze(-1) == 0, -1e9).max(dim=1).values
            else:
                m = mask.unsqueeze(-1).to(hidden.dtype)
                vectors = (hidden * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
            unit = torch.tensor([u for _, u in items], device=vectors.device)[:, None]
            # Normalized in the model's dtype, as hubflow's encoder does (those that asked for it).
            vectors = torch.where(unit, torch.nn.functional.normalize(vectors, p=2, dim=-1), vectors)
        return vectors.float().cpu().tolist()


def _is_ids(value) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(i, int) and not isinstance(i, bool)
                                                           for i in value)


def create_handler(model_dir: str, kit) -> EmbeddingHandler:
    return EmbeddingHandler(model_dir, kit)
