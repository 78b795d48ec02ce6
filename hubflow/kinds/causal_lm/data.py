"""Causal LM data: the three shapes users bring, rendered, tokenized, masked and (for raw text) packed.

    roles(data, columns)                          which columns hold what: chat / prompt-completion / text
    check_raw(splits, data)                       ValueError naming split, row and column for unusable rows
    prepare(raw, model_dir, cfg, data, out_uri)   raw parquet splits -> TokenizedRef (train/validation/test)
    prepare_inference(ds, data, model_dir, facts, out_root)   prompts to complete -> TokenizedRef (one split)

Chat rows (`messages`: [{role, content}, ...] ending with the assistant's answer) and prompt/completion rows are
rendered with the tokenizer's chat template (or `preprocess.chat_template`); prompt/completion without any template
is the prompt followed by the completion, as TRL does. The loss covers the completion, and the end-of-turn/EOS token
after it, so the model learns to stop (`preprocess.loss_on: all` trains on every token). Raw text is tokenized with
an EOS after each document and cut into blocks of `max_length`. Packing chat rows (`preprocess.packing`) puts several
examples in one sequence with position ids that restart per example: with no attention mask and no cache,
transformers then masks attention per example, so no example sees another.

Every split's rows carry `input_ids` and `labels` (-100 where no loss); the test split also carries what generation
and scoring need: `prompt_ids`, `prompt` (rendered), `target` (rendered completion), `reference` and `message`
(the answer and the last user message as plain text).
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pyarrow as pa

from ...config import DataConfig, PreprocessConfig
from ...doors import store
from ...errors import PreflightError
from ...refs import ModelFacts, RawDataRef, TokenizedRef
from ...tokenize import check_text, sha, texts_digest, tokenizer_hash
from .settings import CausalLMFacts, DataShape, LossOn

log = logging.getLogger("hubflow")
PREPARE_VERSION = 1
IGNORE = -100  # the label of a token that carries no loss (PyTorch's cross-entropy ignore_index)
ROLES = ("system", "user", "assistant")


def roles(data: DataConfig, columns: list[str], split: str | None = None, inference: bool = False) -> dict[str, str]:
    """{role: column} for the configured (or detected) shape; ValueError naming what is missing. Prompts to complete
    (`inference`) need no completion column; when they have one, it is kept as the reference."""
    shape = data.shape
    has_prompts = data.prompt_column in columns and (inference or data.completion_column in columns)
    if shape is DataShape.auto:
        if data.messages_column in columns:
            shape = DataShape.chat
        elif has_prompts:
            shape = DataShape.prompt_completion
        elif data.text_column in columns:
            shape = DataShape.text
        else:
            raise ValueError(
                f"data: no {data.messages_column!r} column (chat), no {data.prompt_column!r} + "
                f"{data.completion_column!r} columns (prompt-completion) and no {data.text_column!r} column (text) in "
                f"split {split or data.train_split!r}; available columns: {columns}; set data.shape and the column "
                "names")
    if inference and shape is DataShape.prompt_completion and data.completion_column not in columns:
        return {"prompt": data.prompt_column}
    return {DataShape.chat: {"messages": data.messages_column},
            DataShape.prompt_completion: {"prompt": data.prompt_column, "completion": data.completion_column},
            DataShape.text: {"text": data.text_column}}[shape]


def shape_of(columns: dict[str, str]) -> DataShape:
    return DataShape.chat if "messages" in columns else (
        DataShape.prompt_completion if "prompt" in columns else DataShape.text)


def check_raw(splits: dict, data: DataConfig, columns: dict[str, str]) -> None:
    """Strings where strings belong; chat turns with known roles, non-empty content, ending with the assistant."""
    for split, ds in splits.items():
        table = ds.with_format("arrow")[:]
        if "messages" in columns:
            for i, turns in enumerate(table.column(columns["messages"]).to_pylist()):
                _check_turns(turns, split, i, columns["messages"])
        else:
            check_text({split: (table.column(col), None) for col in columns.values()}, "/".join(columns.values()))


def _check_turns(turns, split: str, i: int, column: str) -> None:
    where = f"data.messages_column={column!r}, split {split!r}, row {i}"
    if not isinstance(turns, list) or not turns:
        raise ValueError(f"{where}: expected a non-empty list of {{role, content}} turns, got {turns!r:.80}")
    for turn in turns:
        if not isinstance(turn, dict) or turn.get("role") not in ROLES or not isinstance(turn.get("content"), str):
            raise ValueError(f"{where}: a turn must be {{role: one of {ROLES}, content: text}}, got {turn!r:.80}")
    if turns[-1]["role"] != "assistant":
        raise ValueError(f"{where}: the last turn is {turns[-1]['role']!r}; training needs the assistant's answer last")


def load_tokenizer(model_dir: str, facts_or_template: ModelFacts | str | None = None):
    """The model's tokenizer, with a pad token (its EOS when it has none) and the configured chat template."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    template = facts_or_template.chat_template if isinstance(facts_or_template, ModelFacts) else facts_or_template
    if template:
        tokenizer.chat_template = template
    if tokenizer.pad_token_id is None:
        # Padding is masked out of attention and loss, so any id works; EOS is what the ecosystem uses.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def prepare(raw: RawDataRef, model_dir: str, cfg: PreprocessConfig, data: DataConfig, out_uri: str) -> TokenizedRef:
    """Raw splits -> tokenized, masked splits saved at `out_uri`, and the facts of a model trained on them."""
    from datasets import Dataset, DatasetDict

    shape = shape_of(raw.columns)
    tokenizer = load_tokenizer(model_dir, cfg.chat_template)
    chat = shape is not DataShape.text and bool(tokenizer.chat_template)
    if shape is DataShape.chat and not chat:
        raise PreflightError("preprocess.chat_template: the tokenizer has no chat template and chat data needs one; "
                             "set preprocess.chat_template to a Jinja template")
    _check_positions(model_dir, cfg.max_length)
    fingerprint = sha({"v": PREPARE_VERSION, "raw": raw.fingerprint, "tokenizer": tokenizer_hash(model_dir),
                       "preprocess": cfg.model_dump(mode="json"), "roles": raw.columns,
                       "splits": [data.train_split, data.validation_split, data.test_split]})
    tables = {s: store.read_parquet(store.join(raw.uri, f"{s}.parquet")) for s in raw.splits}
    parts = _assign_splits(tables, data, cfg)
    out = DatasetDict()
    for role, table in parts.items():
        rows = _examples(table, raw.columns, shape, tokenizer, chat, cfg, role)
        if shape is DataShape.text:
            rows = _blocks(rows, cfg.max_length)
            if role == "test":  # the gate re-scores a champion on the block's text, tokenized its own way
                rows["target"] = tokenizer.batch_decode(rows["input_ids"])
        elif role == "train" and cfg.packing:
            rows = _pack(rows, cfg.max_length)
        if role != "test":
            rows = {k: v for k, v in rows.items() if k in ("input_ids", "labels", "position_ids")}
        out[role] = Dataset.from_dict(rows)
    uri = store.save_dataset(out, store.join(out_uri))
    facts = CausalLMFacts(max_length=cfg.max_length, shape=shape, chat=chat,
                       chat_template=cfg.chat_template)
    return TokenizedRef(uri=uri, fingerprint=fingerprint, splits={s: len(d) for s, d in out.items()}, facts=facts)


def prepare_inference(ds, data: DataConfig, model_dir: str, facts: ModelFacts, out_root: str,
                      split: str, max_samples: int | None = None) -> TokenizedRef:
    """Prompts to complete (chat turns up to the user's last, prompts, or text to continue) -> one split of
    `prompt_ids`, `prompt`, `message`, `reference` (the row's own answer, when it has one) at
    `{out_root}/{fingerprint}`; an existing one is reused."""
    from datasets import Dataset, DatasetDict

    columns = roles(data, ds.column_names, split, inference=True)  # the prompts' own shape, not the training data's
    if len(ds) == 0:
        raise ValueError(f"split {split!r} is empty")
    if max_samples:
        ds = ds.select(range(min(max_samples, len(ds))))
    table = ds.with_format("arrow")[:]
    tokenizer = load_tokenizer(model_dir, facts)
    prompts, messages, references = _prompts(table, columns, tokenizer, facts.chat, split)
    fingerprint = sha({"v": PREPARE_VERSION, "kind": "generation", "prompts": texts_digest(pa.array(prompts)),
                       "tokenizer": tokenizer_hash(model_dir), "facts": facts.model_dump(mode="json"), "split": split})
    uri = store.join(out_root, fingerprint[:24])
    ref = TokenizedRef(uri=uri, fingerprint=fingerprint, splits={split: len(prompts)}, facts=facts)
    if store.has_dataset(uri):
        return ref
    ids = tokenizer(prompts, add_special_tokens=not facts.chat)["input_ids"]
    _check_prompt_lengths(ids, facts.max_length, split)
    out = DatasetDict({split: Dataset.from_dict({
        "row_id": list(range(len(prompts))), "prompt": prompts, "prompt_ids": ids, "message": messages,
        "reference": references})})
    store.save_dataset(out, uri)
    return ref


# ----- rendering -----------------------------------------------------------------------------------------------------

def _turns(table: pa.Table, columns: dict[str, str]) -> list[list[dict]]:
    if "messages" in columns:
        return table.column(columns["messages"]).to_pylist()
    prompts, completions = table.column(columns["prompt"]).to_pylist(), table.column(columns["completion"]).to_pylist()
    return [[{"role": "user", "content": p}, {"role": "assistant", "content": c}] for p, c in zip(prompts, completions)]


def _render(turns: list[dict], tokenizer, chat: bool) -> tuple[str, str]:
    """(prompt, completion) as text: the template's prompt with the generation header, and the rest of the
    conversation, ending with the end-of-turn marker and the EOS token (so the model learns to stop)."""
    if not chat:  # prompt-completion without a template: plain concatenation, EOS after the completion
        return turns[0]["content"], turns[1]["content"] + (tokenizer.eos_token or "")
    prompt = tokenizer.apply_chat_template(turns[:-1], tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template(turns, tokenize=False)
    if not full.startswith(prompt):
        raise PreflightError("preprocess.chat_template: rendering the answer changes the prompt's text; the template "
                             "must render a conversation as its prompt followed by the answer")
    completion = full[len(prompt):]
    if tokenizer.eos_token and not completion.rstrip().endswith(tokenizer.eos_token):
        completion += tokenizer.eos_token  # templates end a turn with their own marker; EOS makes stopping certain
    return prompt, completion


def _examples(table: pa.Table, columns: dict[str, str], shape: DataShape, tokenizer, chat: bool,
              cfg: PreprocessConfig, split: str) -> dict[str, list]:
    """One tokenized example per row: input_ids, labels (+ the test split's prompt/target/reference/message)."""
    if shape is DataShape.text:
        texts = table.column(columns["text"]).to_pylist()
        ids = tokenizer(texts, add_special_tokens=True)["input_ids"]
        eos = [tokenizer.eos_token_id] if tokenizer.eos_token_id is not None else []
        return {"input_ids": [x + eos for x in ids]}
    turns = _turns(table, columns)
    rendered = [_render(t, tokenizer, chat) for t in turns]
    special = not chat  # a rendered template already holds its BOS text; plain text gets the tokenizer's own
    prompt_ids = tokenizer([p for p, _ in rendered], add_special_tokens=special)["input_ids"]
    target_ids = tokenizer([c for _, c in rendered], add_special_tokens=False)["input_ids"]
    _check_prompt_lengths(prompt_ids, cfg.max_length, split)
    input_ids, labels, cut = [], [], 0
    for p, c in zip(prompt_ids, target_ids):
        ids = (p + c)[: cfg.max_length]
        cut += len(p) + len(c) > cfg.max_length
        masked = ids if cfg.loss_on is LossOn.all else [IGNORE] * len(p) + ids[len(p):]
        input_ids.append(ids)
        labels.append(masked)
    if cut:
        log.warning("%d of %d %s examples were cut at preprocess.max_length=%d (their end, EOS included, carries no "
                    "loss)", cut, len(input_ids), split, cfg.max_length)
    rows = {"input_ids": input_ids, "labels": labels, "row_id": list(range(len(input_ids))),
            "prompt_ids": prompt_ids, "prompt": [p for p, _ in rendered], "target": [c for _, c in rendered],
            "reference": [t[-1]["content"] for t in turns], "message": [_last_user(t) for t in turns]}
    return rows


def _prompts(table: pa.Table, columns: dict[str, str], tokenizer, chat: bool, split: str):
    """Rows to complete -> (rendered prompts, last user messages, references or "")."""
    if "text" in columns:
        texts = table.column(columns["text"]).to_pylist()
        return texts, texts, [""] * len(texts)
    if "messages" in columns:
        convs = table.column(columns["messages"]).to_pylist()
        for i, turns in enumerate(convs):
            if not isinstance(turns, list) or not turns or turns[-1].get("role") not in ROLES:
                raise ValueError(f"data.messages_column={columns['messages']!r}, split {split!r}, row {i}: "
                                 "expected a list of {role, content} turns")
        answered = [t[:-1] if t[-1]["role"] == "assistant" else t for t in convs]
        refs = [t[-1]["content"] if t[-1]["role"] == "assistant" else "" for t in convs]
    else:
        prompts = table.column(columns["prompt"]).to_pylist()
        refs = table.column(columns["completion"]).to_pylist() if columns.get("completion") in table.column_names \
            else [""] * len(prompts)
        answered = [[{"role": "user", "content": p}] for p in prompts]
    if chat:
        rendered = [tokenizer.apply_chat_template(t, tokenize=False, add_generation_prompt=True) for t in answered]
    else:
        rendered = [t[-1]["content"] for t in answered]
    return rendered, [_last_user(t) for t in answered], refs


def _last_user(turns: list[dict]) -> str:
    return next((t["content"] for t in reversed(turns) if t["role"] == "user"), "")


# ----- packing -------------------------------------------------------------------------------------------------------

def _blocks(rows: dict[str, list], length: int) -> dict[str, list]:
    """Documents (each ending with EOS) concatenated and cut into blocks of `length` tokens; the last, shorter block
    is kept. Labels are the inputs: continued pre-training learns every token."""
    flat = np.fromiter((t for ids in rows["input_ids"] for t in ids), np.int64)
    blocks = [flat[i:i + length].tolist() for i in range(0, len(flat), length)]
    return {"input_ids": blocks, "labels": blocks, "row_id": list(range(len(blocks))), "prompt_ids": [[]] * len(blocks),
            "prompt": [""] * len(blocks), "target": [""] * len(blocks), "reference": [""] * len(blocks),
            "message": [""] * len(blocks)}


def _pack(rows: dict[str, list], length: int) -> dict[str, list]:
    """Examples in order, first fit into sequences of at most `length` tokens, position ids restarting per example."""
    packs: list[dict[str, list]] = []
    for ids, labels in zip(rows["input_ids"], rows["labels"]):
        if not packs or len(packs[-1]["input_ids"]) + len(ids) > length:
            packs.append({"input_ids": [], "labels": [], "position_ids": []})
        pack = packs[-1]
        pack["input_ids"] += ids
        pack["labels"] += labels
        pack["position_ids"] += list(range(len(ids)))
    return {k: [p[k] for p in packs] for k in ("input_ids", "labels", "position_ids")}


# ----- checks --------------------------------------------------------------------------------------------------------

def _check_positions(model_dir: str, max_length: int) -> None:
    from pathlib import Path

    config = json.loads(Path(model_dir, "config.json").read_text())
    positions = (config.get("max_position_embeddings")
                 or (config.get("text_config") or {}).get("max_position_embeddings"))
    if positions and max_length > positions:
        raise PreflightError(f"preprocess.max_length={max_length} is more than the model's {positions} positions")


def _check_prompt_lengths(prompt_ids: list[list[int]], max_length: int, split: str) -> None:
    long = [(i, len(p)) for i, p in enumerate(prompt_ids) if len(p) >= max_length]
    if long:
        i, n = long[0]
        raise PreflightError(f"preprocess.max_length={max_length}: the prompt of row {i} in split {split!r} has {n} "
                             f"tokens, leaving no room for an answer ({len(long)} such rows); raise max_length or "
                             "shorten the prompts")


def _assign_splits(tables: dict[str, pa.Table], data: DataConfig, cfg: PreprocessConfig) -> dict[str, pa.Table]:
    """train/validation/test tables: the named splits, the missing ones carved at random (seeded) from train."""
    train = tables[data.train_split]
    named = {"validation": data.validation_split, "test": data.test_split}
    parts = {role: tables[s] for role, s in named.items() if s is not None and s in tables}
    missing = [role for role in named if role not in parts]
    if missing:
        order = np.random.default_rng(cfg.split_seed).permutation(train.num_rows)
        start = 0
        for role in missing:
            k = max(1, int(round(getattr(cfg, f"{role}_fraction") * train.num_rows)))
            parts[role] = train.take(pa.array(np.sort(order[start:start + k])))
            start += k
        if start >= train.num_rows:
            raise ValueError(f"train split has {train.num_rows} rows, too few to carve {missing} from it")
        train = train.take(pa.array(np.sort(order[start:])))
    return {"train": train, **{r: parts[r] for r in ("validation", "test")}}
