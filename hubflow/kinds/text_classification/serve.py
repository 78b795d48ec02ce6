"""The text classifier's HTTP handler: `POST /` and `POST /predict`, as the Hugging Face Inference API answers.

    {"inputs": "text" | ["text", ...], "parameters": {"top_k": 2, "function_to_apply": "softmax"}}
    -> [[{"label": "billing", "score": 0.93}, {"label": "bug", "score": 0.05}], ...]   one list per input

so `huggingface_hub.InferenceClient(base_url=URL).text_classification(text, top_k=2)` works unmodified. The labels
are the model's id2label names, highest score first, every label unless `top_k`.

Self-contained (imports neither hubflow nor the server): the endpoint Space ships this file as `handler.py` next to
the server (hubflow/serving/server.py), which calls `create_handler(model_dir, kit)`; see docs/serving.md.
Answers equal hubflow's batch predictions (hubflow/kinds/text_classification/model.py `Classifier`): the same
truncation (the facts' max_length), padding (the tokenizer's pad id, masked), precision and softmax over fp32 logits.
"""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request  # at module level: FastAPI resolves route annotations in these globals

FUNCTIONS = ("softmax", "sigmoid", "none")


class ClassifierHandler:
    def __init__(self, model_dir: str, kit):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.kit, self.settings = kit, kit.settings
        int8 = kit.dtype == torch.qint8
        model = AutoModelForSequenceClassification.from_pretrained(
            model_dir, dtype=torch.float32 if int8 else kit.dtype, use_safetensors=True)
        model = model.to(kit.device).eval()
        if int8:  # as hubflow's int8 batch inference: the body's linear layers, per-tensor scales
            kit.quantize_int8(getattr(model, "base_model", model))
        self.model, self.tokenizer = model, AutoTokenizer.from_pretrained(model_dir)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else model.config.pad_token_id
        self.pad_id = int(pad or 0)
        self.labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
        positions = getattr(model.config, "max_position_embeddings", None) or 1 << 62
        # hubflow's own model: the length it was trained and batch-predicted with; a foreign one: its limits.
        self.max_length = int(kit.facts.get("max_length") or min(self.tokenizer.model_max_length, positions))
        multi = model.config.problem_type == "multi_label_classification" or len(self.labels) == 1
        self.default_function = "sigmoid" if multi else "softmax"  # as transformers' pipeline defaults
        self.batcher = kit.Batcher(self.logits, name="classify")
        self.logits([self.tokenizer("warm up")["input_ids"]])  # the first request should not pay for lazy inits

        self.router = APIRouter()

        async def predict(request: Request):
            return await self.answer(await kit.json_body(request))

        self.router.add_api_route("/", predict, methods=["POST"])
        self.router.add_api_route("/predict", predict, methods=["POST"])

    def info(self) -> dict:
        return {"labels": self.labels, "max_input_length": self.max_length, "routes": ["/", "/predict"]}

    async def stop(self):
        await self.batcher.stop()

    # ---- one request
    async def answer(self, body: dict) -> list[list[dict]]:
        texts, top_k, function = self.parse(body)
        ids = [self.tokenize(t) for t in texts]
        if self.batcher.depth + len(ids) > self.batcher.max_queue:
            raise self.kit.ServeError(429, "the server is busy; retry shortly", {"Retry-After": "1"})
        rows = await asyncio.gather(*(self.batcher.submit(i, len(i)) for i in ids))
        answers = [self.scores(r, top_k, function) for r in rows]
        # --sample-rate: the text and the top label (the batch's prediction) for the monitor; a no-op when off
        self.kit.sample("/predict", [{"text": t} for t in texts],
                        [{"prediction": a[0]["label"], "score": a[0]["score"]} for a in answers])
        return answers

    def parse(self, body: dict) -> tuple[list[str], int | None, str]:
        err = self.kit.ServeError
        inputs = body.get("inputs")
        texts = [inputs] if isinstance(inputs, str) else inputs
        if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
            raise err(400, "`inputs` must be a string or a list of strings")
        if not texts or not all(t.strip() for t in texts):
            raise err(400, "`inputs` is empty: send at least one non-empty text")
        if len(texts) > self.batcher.max_queue:
            raise err(400, f"{len(texts)} inputs in one request; this server takes at most {self.batcher.max_queue}")
        params = {} if body.get("parameters") is None else body["parameters"]
        if not isinstance(params, dict):
            raise err(400, "`parameters` must be a JSON object")
        top_k = params.get("top_k")
        if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1):
            raise err(400, "`parameters.top_k` must be a positive integer")
        function = params.get("function_to_apply") or self.default_function
        if function not in FUNCTIONS:
            raise err(400, f"`parameters.function_to_apply` must be one of {', '.join(FUNCTIONS)}")
        return texts, top_k, function

    def tokenize(self, text: str) -> list[int]:
        """Token ids as batch inference makes them (truncated at max_length), or 422 when refusing long inputs."""
        if self.settings.on_too_long == "refuse":
            ids = self.tokenizer(text)["input_ids"]
            if len(ids) > self.max_length:
                raise self.kit.too_long(len(ids), self.max_length)
            return ids
        return self.tokenizer(text, truncation=True, max_length=self.max_length)["input_ids"]

    def scores(self, logits: list[float], top_k: int | None, function: str) -> list[dict]:
        import torch

        row = torch.tensor(logits, dtype=torch.float32)  # fp32, as batch inference's softmax: the same numbers
        values = row.softmax(-1) if function == "softmax" else row.sigmoid() if function == "sigmoid" else row
        ranked = sorted(zip(self.labels, values.tolist()), key=lambda p: -p[1])[:top_k]
        return [{"label": label, "score": score} for label, score in ranked]

    # ---- one batch (the batcher's worker thread; rows arrive longest first)
    def logits(self, rows: list[list[int]]) -> list[list[float]]:
        import torch

        width = len(rows[0])
        ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        with torch.inference_mode():
            out = self.model(input_ids=ids.to(self.kit.device), attention_mask=mask.to(self.kit.device)).logits
        # Softmax is taken over fp32 logits, as batch inference does (here on the host, per request's function).
        return out.float().cpu().tolist()


def create_handler(model_dir: str, kit) -> ClassifierHandler:
    return ClassifierHandler(model_dir, kit)
