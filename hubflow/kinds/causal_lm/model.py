"""Causal LM models: load for training (full, LoRA, QLoRA), collate, validate, save, and generate in batches.

    load_for_training(model_dir, facts, cfg, allow_pickle)   AutoModelForCausalLM (+ peft adapters), its tokenizer
    Collator                                                 right-padded batches; packed ones keep position ids
    validate(model, eval_dl, accelerator)                    token-weighted loss and perplexity, over every process
    save_model(model, tokenizer, out)                        out/model (merged, full weights) [+ out/adapter]
    Generator.load(folder, device, dtype)                    generate(prompt_ids, ...) and nll(prompt_ids, target_ids)

Generation: prompts sorted by length (longest first, so an out-of-memory shows at once), left-padded per batch (a
right-padded prompt generates wrong text), KV cache on; greedy or sampled; stop strings; the finish reason of each
row is `eos`, `stop` or `length`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from ...config import TrainConfig
from ...refs import ModelFacts
from .data import IGNORE, load_tokenizer
from .settings import Decoding, Generation, TrainMethod

TRAIN_COLUMNS = ["input_ids", "labels", "position_ids"]  # position_ids only in packed data (the loop drops absent ones)


def load_for_training(model_dir: str, facts: ModelFacts, cfg: TrainConfig, allow_pickle: bool = False):
    """The base model in fp32 (or 4-bit for QLoRA) with adapters when the method says so, and its tokenizer."""
    from transformers import AutoModelForCausalLM

    kwargs: dict = {"dtype": torch.float32, "use_safetensors": None if allow_pickle else True}
    if cfg.method is TrainMethod.qlora:
        from transformers import BitsAndBytesConfig

        kwargs.update(dtype=torch.bfloat16, quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True))
    model = AutoModelForCausalLM.from_pretrained(model_dir, **kwargs)
    tokenizer = load_tokenizer(model_dir, facts)
    model.config.use_cache = False  # training: no KV cache; packed rows also need it off to mask per example
    if model.config.pad_token_id is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    if cfg.activation_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cfg.method is TrainMethod.full:
        return model, tokenizer
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if cfg.method is TrainMethod.qlora:
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=cfg.activation_checkpointing)
    elif cfg.activation_checkpointing:
        model.enable_input_require_grads()  # checkpointed blocks need a grad-requiring input when the base is frozen
    lora = LoraConfig(r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout, task_type="CAUSAL_LM",
                      target_modules=cfg.lora.target_modules or "all-linear")
    return get_peft_model(model, lora), tokenizer


class Collator:
    """Features -> a batch padded to its longest row: input ids with the pad id, labels with -100. Unpacked rows get
    an attention mask; packed rows get their position ids instead (padding continues as one more "example"), which
    is what makes transformers mask attention per packed example."""

    def __init__(self, pad_id: int, multiple: int | None):
        self.pad_id, self.multiple = pad_id, multiple

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        width = max(len(f["input_ids"]) for f in features)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        packed = "position_ids" in features[0]
        ids, labels, extra = [], [], []
        for f in features:
            pad = width - len(f["input_ids"])
            ids.append(list(f["input_ids"]) + [self.pad_id] * pad)
            labels.append(list(f["labels"]) + [IGNORE] * pad)
            extra.append(list(f["position_ids"]) + list(range(pad)) if packed
                         else [1] * len(f["input_ids"]) + [0] * pad)
        batch = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
        batch["position_ids" if packed else "attention_mask"] = torch.tensor(extra)
        return batch


@torch.no_grad()
def validate(model, eval_dl, accelerator) -> dict[str, float]:
    """Loss per label token over the whole split (every process), and its perplexity."""
    model.eval()
    total, count = torch.zeros((), device=accelerator.device), torch.zeros((), device=accelerator.device)
    for batch in eval_dl:
        labels = batch.pop("labels")
        logits = model(**batch).logits.float()
        nll, n = _token_nll(logits, labels)
        total, count = total + nll.sum(), count + n.sum()
    total, count = accelerator.reduce(total, "sum"), accelerator.reduce(count, "sum")
    loss = (total / count.clamp(min=1)).item()
    return {"eval_loss": loss, "eval_perplexity": math.exp(min(loss, 50.0))}


def _token_nll(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: summed next-token NLL over the label tokens, and how many there are."""
    import torch.nn.functional as F

    shift_logits, shift_labels = logits[:, :-1], labels[:, 1:]
    nll = F.cross_entropy(shift_logits.transpose(1, 2), shift_labels, ignore_index=IGNORE, reduction="none")
    return nll.sum(-1), (shift_labels != IGNORE).sum(-1)


def save_model(model, tokenizer, out: Path) -> dict[str, Path]:
    """The final model as save_pretrained folders: `model` (full weights, adapters merged in: reloads with
    AutoModelForCausalLM) and, for a LoRA run, `adapter` (the adapter alone: reloads with peft on the base)."""
    folders = {"model": out / "model"}
    if hasattr(model, "peft_config"):
        folders["adapter"] = out / "adapter"
        model.save_pretrained(folders["adapter"])
        tokenizer.save_pretrained(folders["adapter"])
        model = model.merge_and_unload()
    model.config.use_cache = True  # what inference wants; training turned it off
    model.save_pretrained(folders["model"])
    tokenizer.save_pretrained(folders["model"])
    return folders


def pin_adapter_base(adapter_dir: Path, repo_id: str, sha: str) -> None:
    """Point the adapter's config at the base model repo and the commit it was trained on."""
    path = adapter_dir / "adapter_config.json"
    config = json.loads(path.read_text())
    config.update(base_model_name_or_path=repo_id, revision=sha)
    path.write_text(json.dumps(config, indent=2) + "\n")


class Generator:
    """A causal LM ready to complete prompts in batches (left padding) and to score targets (teacher forcing)."""

    def __init__(self, model, tokenizer, device: torch.device):
        self.model, self.tokenizer, self.device = model, tokenizer, device
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.eos_ids = _eos_ids(model, tokenizer)

    @classmethod
    def load(cls, folder: str | Path, device: torch.device, dtype: torch.dtype) -> "Generator":
        """A merged model folder, or an adapter folder (its base at the pinned sha, fetched through the hub door)."""
        from transformers import AutoModelForCausalLM

        folder = Path(folder)
        if (folder / "adapter_config.json").exists() and not (folder / "config.json").exists():
            from peft import PeftModel

            from ...doors import hub
            from ...refs import PinnedRepo

            config = json.loads((folder / "adapter_config.json").read_text())
            base = PinnedRepo(repo_id=config["base_model_name_or_path"], repo_type="model",
                              revision=config["revision"], sha=config["revision"])
            model = AutoModelForCausalLM.from_pretrained(hub.model_dir(base), dtype=dtype, use_safetensors=True)
            model = PeftModel.from_pretrained(model, folder).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, use_safetensors=True)
        facts_file = folder / "hubflow.json"
        facts = ModelFacts.model_validate_json(facts_file.read_text()) if facts_file.exists() else None
        return cls(model.to(device).eval(), load_tokenizer(str(folder), facts), device)

    @torch.inference_mode()
    def generate(self, prompt_ids: list[list[int]], gen: Generation, batch_size: int, max_tokens: int,
                 seed: int = 0) -> list[tuple[str, int, str]]:
        """(completion, new tokens, finish reason) per prompt, in input order."""
        order = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))
        out: list[tuple[str, int, str] | None] = [None] * len(prompt_ids)
        torch.manual_seed(seed)  # sampling draws from this stream; greedy ignores it
        i = 0
        while i < len(order):
            width = len(prompt_ids[order[i]]) + gen.max_new_tokens
            size = max(1, min(batch_size, max_tokens // max(width, 1), len(order) - i))
            rows = [prompt_ids[j] for j in order[i:i + size]]
            for j, result in zip(order[i:i + size], self._batch(rows, gen)):
                out[j] = result
            i += size
        return out  # type: ignore[return-value]

    def _batch(self, rows: list[list[int]], gen: Generation) -> list[tuple[str, int, str]]:
        width = max(len(r) for r in rows)
        ids = torch.tensor([[self.pad_id] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        sample = gen.decoding is Decoding.sample
        kwargs = dict(do_sample=sample, temperature=gen.temperature, top_p=gen.top_p) if sample else dict(
            do_sample=False, temperature=None, top_p=None, top_k=None)
        if gen.stop:
            kwargs.update(stop_strings=list(gen.stop), tokenizer=self.tokenizer)
        new = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=gen.max_new_tokens,
                                  pad_token_id=self.pad_id, eos_token_id=self.eos_ids or None, use_cache=True,
                                  **kwargs)[:, width:].tolist()
        return [self._finish(tokens, gen) for tokens in new]

    def _finish(self, tokens: list[int], gen: Generation) -> tuple[str, int, str]:
        end = next((k for k, t in enumerate(tokens) if t in self.eos_ids), None)
        if end is not None:
            return self.tokenizer.decode(tokens[:end], skip_special_tokens=True), end + 1, "eos"
        tokens = [t for t in tokens if t != self.pad_id] if self.pad_id not in self.eos_ids else tokens
        text = self.tokenizer.decode(tokens, skip_special_tokens=True)
        cuts = [text.find(s) for s in gen.stop if s in text]
        if cuts:  # the output ends before the stop string, as in vLLM and TGI
            return text[:min(cuts)], len(tokens), "stop"
        return text, len(tokens), "length"

    @torch.inference_mode()
    def nll(self, input_ids: list[list[int]], labels: list[list[int]], batch_size: int) -> list[tuple[float, int]]:
        """(summed NLL of the label tokens, their count) per row: teacher forcing, right-padded batches."""
        out = []
        for i in range(0, len(input_ids), batch_size):
            ids, lab = input_ids[i:i + batch_size], labels[i:i + batch_size]
            width = max(len(r) for r in ids)
            batch = torch.tensor([r + [self.pad_id] * (width - len(r)) for r in ids], device=self.device)
            mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in ids], device=self.device)
            target = torch.tensor([r + [IGNORE] * (width - len(r)) for r in lab], device=self.device)
            logits = self.model(input_ids=batch, attention_mask=mask, use_cache=False).logits.float()
            nll, n = _token_nll(logits, target)
            out += list(zip(nll.tolist(), n.tolist()))
        return out


def _eos_ids(model, tokenizer) -> list[int]:
    """Every id that ends a turn: the generation config's (a list for chat models, e.g. <end_of_turn>) and EOS."""
    ids = getattr(model.generation_config, "eos_token_id", None)
    ids = list(ids) if isinstance(ids, (list, tuple)) else ([ids] if ids is not None else [])
    if tokenizer.eos_token_id is not None and tokenizer.eos_token_id not in ids:
        ids.append(tokenizer.eos_token_id)
    return ids
