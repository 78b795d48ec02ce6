"""hubflow's causal-LM handler for server.py: OpenAI-compatible chat and text completions with continuous batching.

Self-contained (the endpoint Space ships it as `handler.py` next to server.py): it imports neither hubflow nor
server.py, only what server.py hands it in `kit` (docs/serving.md, "The contract").

    create_handler(model_dir, kit) -> handler    routes: POST /v1/chat/completions, POST /v1/completions,
                                                 GET /v1/models; info(); start()/stop() run the generation thread

Prompts are what hubflow's batch generation builds: a chat model (hubflow.json `chat`) renders the messages with the
tokenizer's chat template (or the recipe's, from hubflow.json) and the generation prompt, tokenized without special
tokens; a plain model completes the last message's text, tokenized with them. Generation stops at the model's own
end-of-turn/EOS ids (its generation config's and the tokenizer's), at a request's stop strings (the text ends before
them) or at max_tokens; the text leaves special tokens out. Greedy (temperature 0, the default) equals batch
generation's answers; sampling draws from the request's seed.

Continuous batching: one thread owns the model. Between decode steps, waiting requests are prefilled (left-padded
together) and their KV caches joined to the running batch (left-padded to a common length, per-row attention masks
and position ids); finished, stopped or disconnected rows leave it at once, and padding no row needs is cut off.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import os
import queue
import threading
import time
import uuid
from pathlib import Path

import torch
from fastapi import APIRouter, Request
from fastapi.responses import StreamingResponse

log = logging.getLogger("hubflow.serve")
ROLES = ("system", "user", "assistant")
DEFAULT_MAX_NEW_TOKENS = 512  # SERVE_MAX_NEW_TOKENS: the most tokens one answer may have, whatever max_tokens asks


def create_handler(model_dir: str, kit) -> "ChatHandler":
    """The model folder (merged weights, or a LoRA adapter on its pinned base) -> a handler with its routes."""
    return ChatHandler(model_dir, kit)


# ---- loading ---------------------------------------------------------------------------------------------------------

def load_model(model_dir: str, kit):
    """(model, tokenizer) as hubflow's batch generation loads them: an adapter folder goes on its base at the sha it
    was trained on (downloaded read-only through huggingface_hub) and is merged; the recipe's chat template, if any,
    replaces the tokenizer's; a tokenizer without a pad token pads with EOS."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, facts = Path(model_dir), kit.facts or {}
    dtype = torch.float32 if kit.dtype == torch.qint8 else kit.dtype
    if (folder / "adapter_config.json").exists() and not (folder / "config.json").exists():
        from huggingface_hub import snapshot_download
        from peft import PeftModel

        config = json.loads((folder / "adapter_config.json").read_text())
        base = config["base_model_name_or_path"]
        if not Path(base).is_dir():  # hubflow pins a Hub repo and the sha the adapter was trained on
            token_file = getattr(kit.settings, "hub_token_file", None)  # the server's read-only token, if any
            token = Path(token_file).read_text().strip() if token_file else None
            base = snapshot_download(base, revision=config.get("revision"), token=token)
        model = AutoModelForCausalLM.from_pretrained(base, dtype=dtype, use_safetensors=True)
        model = PeftModel.from_pretrained(model, folder).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True)
    if kit.dtype == torch.qint8:
        kit.quantize_int8(model, per_channel=False)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    if facts.get("chat_template"):
        tokenizer.chat_template = facts["chat_template"]
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model.to(kit.device).eval(), tokenizer


def eos_ids(model, tokenizer) -> list[int]:
    """Every id that ends a turn: the generation config's (a list for chat models) and the tokenizer's EOS."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = list(ids) if isinstance(ids, (list, tuple)) else ([ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids


# ---- one generation --------------------------------------------------------------------------------------------------

class Sequence:
    """One prompt being completed: its settings, the tokens so far, and a way to tell the waiting request.

    The engine thread calls `emit` (text to send; `finish` set on the last call); the request's coroutine reads
    `events` (an asyncio.Queue of (text, finish_reason or None)). `cancel()` (client gone) makes the engine drop it."""

    def __init__(self, prompt_ids: list[int], max_new: int, temperature: float, top_p: float, seed: int | None,
                 stop: list[str], loop: asyncio.AbstractEventLoop, stream: bool = True):
        self.prompt_ids, self.max_new, self.temperature, self.top_p = prompt_ids, max_new, temperature, top_p
        self.stop, self.loop, self.events = stop, loop, asyncio.Queue()
        self.live = stream or bool(stop)  # decoded at every step (else once, at the end)
        self.generator = None
        if temperature > 0:
            self.generator = torch.Generator()
            self.generator.manual_seed(seed if seed is not None else int.from_bytes(os.urandom(4), "little"))
        self.tokens: list[int] = []
        self.text, self.sent, self.finish = "", 0, None
        self.cancelled = False
        self.submitted, self.first_token_at = time.perf_counter(), None

    def cancel(self) -> None:
        self.cancelled = True

    def emit(self, text: str, finish: str | None) -> None:
        self.loop.call_soon_threadsafe(self.events.put_nowait, (text, finish))


class Engine:
    """Continuous batching on one thread: the running batch's KV cache, attention mask and next input ids.

    `submit(seq)` queues a sequence (429 when `max_queue` are waiting); the thread prefills newcomers between decode
    steps (at most `max_batch` rows run at once) and removes finished rows after each step."""

    def __init__(self, model, tokenizer, kit, max_batch: int, max_queue: int, max_tokens: int):
        self.model, self.tokenizer, self.kit = model, tokenizer, kit
        self.device = next(model.parameters()).device
        self.eos = set(eos_ids(model, tokenizer))
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(self.eos)
        self.max_batch, self.max_queue, self.max_tokens = max_batch, max_queue, max_tokens
        self.held: Sequence | None = None  # taken from the inbox, waiting for room in the next prefill
        # what tokenizer.decode(ids, skip_special_tokens=True) runs, without its per-call checks of every id (a
        # third of a tiny model's decode step when a long answer is decoded at every step)
        decode = getattr(tokenizer, "_decode", None) or tokenizer.decode
        self.decode = lambda ids: decode(ids, skip_special_tokens=True)
        params = inspect.signature(model.forward).parameters
        self.cache_arg = "cache" if "cache" in params else "past_key_values"
        self.keep = {"logits_to_keep": 1} if "logits_to_keep" in params else {}  # the last position's logits only
        self.inbox: queue.Queue = queue.Queue()
        self.rows: list[Sequence] = []
        self.cache = self.mask = self.next_ids = None
        self.thread: threading.Thread | None = None
        self.stopping = False
        metrics = kit.metrics
        self.m_queue = metrics.queue_depth.labels(queue="generate")
        self.m_batch = metrics.batch_size.labels(queue="generate")
        self.m_ttft = _collector(metrics, "time_to_first_token", "time_to_first_token_seconds")
        self.m_generated = _collector(metrics, "generated_tokens", "generated_tokens_total")

    # -- the request side
    def submit(self, seq: Sequence) -> None:
        if self.inbox.qsize() >= self.max_queue:
            raise self.kit.ServeError(429, "the server is busy (generation queue full); retry shortly",
                                      {"Retry-After": "1"})
        self.inbox.put(seq)
        self.m_queue.set(self.inbox.qsize())

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="hubflow-generate", daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.stopping = True
        self.inbox.put(None)
        if self.thread is not None:
            self.thread.join(timeout=30)

    # -- the generation thread
    def _run(self) -> None:
        with torch.inference_mode():
            while not self.stopping:
                joiners = self._take()
                try:
                    if joiners:
                        self._prefill(joiners)
                    if self.rows:
                        self._decode()
                except Exception as err:  # noqa: BLE001 - one failed step fails its rows, never the thread
                    log.exception("generation step failed")
                    for seq in self.rows + joiners:
                        if seq.finish is None:
                            seq.finish = "error"
                            seq.emit(f"generation failed: {type(err).__name__}: {err}", "error")
                    self.rows, self.cache = [], None

    def _take(self) -> list[Sequence]:
        """Waiting sequences that fit in the batch (blocking while nothing runs): at most `max_batch` rows running,
        and one prefill at most `max_batch_tokens` padded prompt tokens (a longer prompt prefills alone), so a wave
        of newcomers does not stall the running rows for long."""
        out: list[Sequence] = []
        width = 0
        while len(self.rows) + len(out) < self.max_batch:
            if self.held is not None:
                seq, self.held = self.held, None
            else:
                try:
                    seq = self.inbox.get(block=not self.rows and not out, timeout=None)
                except queue.Empty:
                    break
            if seq is None:
                self.stopping = True
                break
            if seq.cancelled:
                continue
            if out and max(width, len(seq.prompt_ids)) * (len(out) + 1) > self.max_tokens:
                self.held = seq  # the next step's first newcomer
                break
            width = max(width, len(seq.prompt_ids))
            out.append(seq)
        self.m_queue.set(self.inbox.qsize())
        return out

    def _forward(self, ids, mask, positions, cache):
        """Logits of each row's last position; `cache` grows in place (transformers >= 5.x calls it `cache`)."""
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=True,
                         **self.keep, **{self.cache_arg: cache})
        return out.logits[:, -1, :].float(), cache

    def _prefill(self, joiners: list[Sequence]) -> None:
        """Run the newcomers' prompts (left-padded together), take their first tokens, join their cache to the
        batch's: both left-padded to the longer one (a zero key under a zero mask is never attended)."""
        from transformers import DynamicCache

        width = max(len(s.prompt_ids) for s in joiners)
        ids = torch.tensor([[self.pad_id] * (width - len(s.prompt_ids)) + s.prompt_ids for s in joiners],
                           device=self.device)
        mask = torch.tensor([[0] * (width - len(s.prompt_ids)) + [1] * len(s.prompt_ids) for s in joiners],
                            device=self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)  # as generate() numbers left-padded rows
        logits, cache = self._forward(ids, mask, positions, DynamicCache())
        first = self._choose(logits, joiners)
        if self.cache is None:
            self.cache, self.mask, self.next_ids, self.rows = cache, mask, first, list(joiners)
        else:
            old, new = self.mask.shape[1], width
            t = max(old, new)
            for mine, theirs in zip(self.cache.layers, cache.layers):
                mine.keys = torch.cat([_left_pad(mine.keys, t, 2), _left_pad(theirs.keys, t, 2)])
                mine.values = torch.cat([_left_pad(mine.values, t, 2), _left_pad(theirs.values, t, 2)])
            self.mask = torch.cat([_left_pad(self.mask, t, 1), _left_pad(mask, t, 1)])
            self.next_ids = torch.cat([self.next_ids, first])
            self.rows += joiners
        self._advance(first[:, 0].tolist(), range(len(self.rows) - len(joiners), len(self.rows)))
        self._drop_finished()

    def _decode(self) -> None:
        """One step for every running row: feed its last token, choose the next."""
        positions = self.mask.sum(-1, keepdim=True)  # each row's real tokens so far: the next one's position
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], dim=1)
        logits, self.cache = self._forward(self.next_ids, self.mask, positions, self.cache)
        self.next_ids = self._choose(logits, self.rows)
        self.m_batch.observe(len(self.rows))
        self._advance(self.next_ids[:, 0].tolist(), range(len(self.rows)))
        self._drop_finished()

    def _choose(self, logits: torch.Tensor, rows: list[Sequence]) -> torch.Tensor:
        """Next token per row: argmax (greedy), or a draw from the row's own seeded stream (temperature, top_p)."""
        chosen = logits.argmax(-1)
        for i, seq in enumerate(rows):
            if seq.generator is not None:
                probs = torch.softmax(logits[i].cpu() / seq.temperature, -1)
                if seq.top_p < 1:
                    p, idx = probs.sort(descending=True)
                    keep = p.cumsum(-1) - p < seq.top_p  # the smallest set whose mass reaches top_p
                    probs = torch.zeros_like(probs).scatter(0, idx[keep], p[keep])
                chosen[i] = torch.multinomial(probs, 1, generator=seq.generator).item()
        return chosen[:, None]

    def _advance(self, tokens: list[int], where) -> None:
        """Append each row's new token and tell the request. A streamed row, or one with stop strings, is decoded
        at every step (text held back while it may still become a stop string or an incomplete character); any
        other row once, when it ends. The text is batch generation's: the tokens before the EOS, decoded whole."""
        now = time.perf_counter()
        for token, i in zip(tokens, where):
            seq = self.rows[i]
            if seq.cancelled:
                continue
            if seq.first_token_at is None:
                seq.first_token_at = now
                self.m_ttft.observe(now - seq.submitted)
            seq.tokens.append(token)
            self.m_generated.inc()
            if token in self.eos:
                seq.finish = "stop"
            elif len(seq.tokens) >= seq.max_new:
                seq.finish = "length"
            if not (seq.live or seq.finish):
                continue
            if token not in self.eos or not seq.live:  # (a live row's text before the EOS is decoded already)
                seq.text = self.decode(seq.tokens[:-1] if token in self.eos else seq.tokens)
                cuts = [seq.text.find(s) for s in seq.stop if s in seq.text]
                if cuts:
                    seq.text, seq.finish = seq.text[:min(cuts)], "stop"
            hold = 0 if seq.finish else max([len(s) - 1 for s in seq.stop] + [0])
            ready = len(seq.text) - hold
            while not seq.finish and ready > seq.sent and seq.text[ready - 1] == "\ufffd":
                ready -= 1  # a character still being spelled out byte by byte
            if ready > seq.sent or seq.finish:
                seq.emit(seq.text[seq.sent:max(ready, seq.sent)], seq.finish)
                seq.sent = max(ready, seq.sent)

    def _drop_finished(self) -> None:
        keep = [i for i, s in enumerate(self.rows) if s.finish is None and not s.cancelled]
        for seq in self.rows:
            if seq.cancelled and seq.finish is None:
                seq.finish = "cancelled"
                log.info("generation stopped: the client went away after %d new tokens", len(seq.tokens))
        if len(keep) == len(self.rows):
            return
        if not keep:
            self.rows, self.cache = [], None
            return
        index = torch.tensor(keep, device=self.device)
        self.mask, self.next_ids = self.mask[index], self.next_ids[index]
        start = int((self.mask.sum(0) > 0).nonzero()[0])  # columns that are padding in every remaining row
        self.mask = self.mask[:, start:]
        for layer in self.cache.layers:
            layer.keys = layer.keys[index][:, :, start:]
            layer.values = layer.values[index][:, :, start:]
        self.rows = [self.rows[i] for i in keep]


def _collector(metrics, *names):
    return next(getattr(metrics, n) for n in names if hasattr(metrics, n))


def _left_pad(x: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - x.shape[dim]
    if missing == 0:
        return x
    shape = list(x.shape)
    shape[dim] = missing
    return torch.cat([x.new_zeros(shape), x], dim=dim)


# ---- requests --------------------------------------------------------------------------------------------------------

class ChatHandler:
    """The routes, the prompt rules and the engine around one loaded model."""

    def __init__(self, model_dir: str, kit):
        self.kit, self.facts = kit, kit.facts or {}
        self.model, self.tokenizer = load_model(model_dir, kit)
        self.chat = bool(self.facts.get("chat", bool(self.tokenizer.chat_template)))
        config = self.model.config.get_text_config()
        self.positions = getattr(config, "max_position_embeddings", None) or 1 << 30
        # hubflow's prompts are shorter than the facts' max_length (preprocess.max_length); a foreign model's limit
        # is its positions
        self.max_input = int(self.facts.get("max_length") or min(self.positions, 1 << 20))
        self.max_new = int(getattr(kit.settings, "max_new_tokens", None) or os.environ.get("SERVE_MAX_NEW_TOKENS")
                           or DEFAULT_MAX_NEW_TOKENS)
        settings = kit.settings
        self.engine = Engine(self.model, self.tokenizer, kit, max_batch=int(settings.max_batch_size),
                             max_tokens=int(settings.max_batch_tokens),
                             max_queue=int(settings.max_queue))
        self.model_id = kit.model_info.get("id") or Path(model_dir).name
        self.router = APIRouter()
        self.router.add_api_route("/v1/chat/completions", self.chat_completions, methods=["POST"])
        self.router.add_api_route("/v1/completions", self.completions, methods=["POST"])
        self.router.add_api_route("/v1/models", self.models, methods=["GET"])

    def info(self) -> dict:
        return {"max_input_length": self.max_input, "max_new_tokens": self.max_new, "chat": self.chat,
                "max_position_embeddings": self.positions if self.positions < 1 << 30 else None,
                "generation": {"batching": "continuous", "max_running": self.engine.max_batch,
                               "eos_token_ids": sorted(self.engine.eos)}}

    async def start(self) -> None:
        self.engine.start()

    async def stop(self) -> None:
        await asyncio.to_thread(self.engine.stop)

    # -- routes
    async def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model_id, "object": "model", "created": 0,
                                            "owned_by": "hubflow"}]}

    async def chat_completions(self, request: Request):
        body = await self.kit.json_body(request)
        messages = _messages(body.get("messages"), self.ServeError)
        if self.chat:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        else:  # a model trained without a template completes the last message's text, as batch generation does
            text = messages[-1]["content"]
        return await self._respond(request, body, [text], chat=True)

    async def completions(self, request: Request):
        body = await self.kit.json_body(request)
        prompt = body.get("prompt")
        prompts = [prompt] if isinstance(prompt, str) else prompt
        if not isinstance(prompts, list) or not prompts or not all(isinstance(p, str) for p in prompts):
            raise self.ServeError(400, "'prompt' must be a string or a non-empty list of strings")
        return await self._respond(request, body, prompts, chat=False)

    @property
    def ServeError(self):  # noqa: N802 - the kit's exception class
        return self.kit.ServeError

    async def _respond(self, request: Request, body: dict, texts: list[str], chat: bool):
        opts = _options(body, self.ServeError)
        loop = asyncio.get_running_loop()
        seqs = []
        for text in texts:
            ids = self.tokenizer(text, add_special_tokens=not self.chat)["input_ids"]
            ids = self._fit(ids)
            room = max(1, min(self.max_new, self.positions - len(ids)))
            seqs.append(Sequence(ids, min(opts["max_tokens"] or self.max_new, room), opts["temperature"],
                                 opts["top_p"], opts["seed"], opts["stop"], loop, opts["stream"]))
        _collector(self.kit.metrics, "prompt_tokens", "prompt_tokens_total").inc(sum(len(s.prompt_ids) for s in seqs))
        head = {"id": ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex, "created": int(time.time()),
                "model": self.model_id, "system_fingerprint": (self.kit.model_info.get("sha") or "")[:12] or None}
        try:
            for seq in seqs:
                self.engine.submit(seq)
        except Exception:
            for seq in seqs:
                seq.cancel()  # a full queue refuses the request whole
            raise
        if opts["stream"]:
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(self._stream(seqs, head, chat, include_usage), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            texts = [await self._collect(request, seq) for seq in seqs]
        finally:
            for seq in seqs:
                seq.cancel()  # a no-op for finished rows; frees the batch when the client left
        if any(s.finish == "error" for s in seqs):
            raise self.ServeError(500, next(t for t, s in zip(texts, seqs) if s.finish == "error"))
        if chat:
            choices = [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                        "finish_reason": s.finish} for i, (t, s) in enumerate(zip(texts, seqs))]
            return {**head, "object": "chat.completion", "choices": choices, "usage": _usage(seqs)}
        choices = [{"index": i, "text": t, "logprobs": None, "finish_reason": s.finish}
                   for i, (t, s) in enumerate(zip(texts, seqs))]
        return {**head, "object": "text_completion", "choices": choices, "usage": _usage(seqs)}

    def _fit(self, ids: list[int]) -> list[int]:
        """A prompt that leaves no room for an answer under the model's limit: its last tokens (the end of the
        conversation and the generation prompt), or 422 under --on-too-long refuse."""
        limit = self.max_input - 1
        if len(ids) <= limit:
            return ids
        if getattr(self.kit.settings, "on_too_long", "truncate") == "refuse":
            raise self.kit.too_long(len(ids), limit)
        return ids[-limit:]

    async def _collect(self, request: Request, seq: Sequence) -> str:
        """The whole answer; polls for a client that went away meanwhile (then stops its generation)."""
        parts = []
        while True:
            try:
                text, finish = await asyncio.wait_for(seq.events.get(), timeout=0.5)
            except asyncio.TimeoutError:
                if await request.is_disconnected():
                    seq.cancel()
                    raise self.ServeError(499, "the client closed the connection")
                continue
            if finish == "error":
                return text
            parts.append(text)
            if finish:
                return "".join(parts)

    async def _stream(self, seqs: list[Sequence], head: dict, chat: bool, include_usage: bool):
        """Server-sent events: a first chunk with the role, one per piece of text, a last one with the finish
        reason (and usage), then [DONE]. Cancelled (client gone): the generation stops."""
        obj = "chat.completion.chunk" if chat else "text_completion"

        def event(payload: dict) -> str:
            return f"data: {json.dumps({**head, 'object': obj, **payload}, ensure_ascii=False)}\n\n"

        def choice(i: int, text: str | None, finish: str | None, role: bool = False) -> dict:
            if not chat:
                return {"index": i, "text": text or "", "logprobs": None, "finish_reason": finish}
            delta = {"role": "assistant", "content": text or ""} if role else ({"content": text} if text else {})
            return {"index": i, "delta": delta, "logprobs": None, "finish_reason": finish}

        try:
            if chat:
                yield event({"choices": [choice(i, "", None, role=True) for i in range(len(seqs))]})
            for i, seq in enumerate(seqs):
                while True:
                    text, finish = await seq.events.get()
                    if finish == "error":
                        yield f"data: {json.dumps({'error': text, 'error_type': 'generation'})}\n\n"
                        return
                    if text or finish:
                        last = {"usage": _usage(seqs)} if finish and i == len(seqs) - 1 else {}
                        yield event({"choices": [choice(i, text, finish)], **last})
                    if finish:
                        break
            if include_usage:
                yield event({"choices": [], "usage": _usage(seqs)})
            yield "data: [DONE]\n\n"
        finally:
            for seq in seqs:
                seq.cancel()


def _usage(seqs: list[Sequence]) -> dict:
    prompt, completion = sum(len(s.prompt_ids) for s in seqs), sum(len(s.tokens) for s in seqs)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _messages(messages, error) -> list[dict]:
    """The request's messages as [{role, content: str}]; content given as text parts is joined. One-sentence 400s."""
    if not isinstance(messages, list) or not messages:
        raise error(400, "'messages' must be a non-empty list of {role, content} objects")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise error(400, f"messages[{i}]: 'role' must be one of {', '.join(ROLES)}")
        content = m.get("content")
        if isinstance(content, list) and all(isinstance(p, dict) and p.get("type") == "text"
                                             and isinstance(p.get("text"), str) for p in content):
            content = "".join(p["text"] for p in content)
        if not isinstance(content, str):
            raise error(400, f"messages[{i}]: 'content' must be a string (or a list of text parts)")
        out.append({"role": m["role"], "content": content})
    return out


def _options(body: dict, error) -> dict:
    """The sampling options a request may set, checked: one-sentence 400s for wrong types and ranges."""
    def number(name, lo, hi, default):
        v = body.get(name)
        if v is None:
            return default
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not lo <= v <= hi:
            raise error(400, f"'{name}' must be a number from {lo} to {hi}")
        return float(v)

    max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise error(400, "'max_tokens' must be a positive integer")
    seed = body.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise error(400, "'seed' must be an integer")
    stop = body.get("stop")
    stop = [stop] if isinstance(stop, str) else (stop or [])
    if not isinstance(stop, list) or len(stop) > 4 or not all(isinstance(s, str) and s for s in stop):
        raise error(400, "'stop' must be a non-empty string or a list of up to 4 of them")
    if body.get("n") not in (None, 1):
        raise error(400, "'n' must be 1 (one answer per request)")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise error(400, "'stream' must be true or false")
    return {"max_tokens": max_tokens, "temperature": number("temperature", 0, 2, 0.0),
            "top_p": number("top_p", 1e-6, 1, 1.0), "seed": seed, "stop": stop, "stream": stream}
