"""Tiny things for tests: a 2-layer BERT classifier, a tiny Llama, and a learnable tokenized dataset.

Everything is built on the fly (tokenizers trained on a small word list, random weights, seeded), so tests
need no network and no cached downloads:

    model_dir = make_tiny_bert(tmp_path / "bert")                  # save_pretrained folder, safetensors
    ref = make_tiny_tokenized(tmp_path / "tok", model_dir)         # TokenizedRef, DatasetDict on disk
    llama_dir = make_tiny_llama(tmp_path / "llama")                # LlamaForCausalLM + byte-level BPE tokenizer

and pushed as Hub repos (one `create_repo` + one `upload_folder`; each returns the commit sha):

    push_tiny_bert(api, "alice/bert", tmp_path / "bert", num_labels=4)                    # make_tiny_bert's folder
    push_keyword_dataset(api, "alice/data", tmp_path / "data", {"train": 240, "test": 60})  # synthetic_rows
    push_demo_dataset(api, "alice/tickets", tmp_path / "tickets")                        # hubflow's demo dataset
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path

from hubflow.refs import ModelFacts, TokenizedRef

LABELS = ["sports", "weather", "finance"]
# Each class is keyed by its own words; filler words are shared, so the label is learnable but not trivial.
KEYWORDS = {
    "sports": ["goal", "match", "team", "coach", "score", "league", "striker", "stadium"],
    "weather": ["rain", "sunny", "storm", "cloud", "wind", "snow", "forecast", "thunder"],
    "finance": ["stock", "bank", "market", "price", "bond", "trader", "profit", "shares"],
}
FILLER = ("the a today people said about very new big we saw this report some more after before over "
          "city morning evening news again still every week").split()
MAX_POSITIONS = 128


def corpus() -> list[str]:
    """Text the tiny tokenizers are trained on: every word the synthetic data uses."""
    words = FILLER + [w for ws in KEYWORDS.values() for w in ws]
    return [" ".join(words)] * 20 + [f"{a} {b}" for a in words for b in words[:5]]


def _wrap(tok, **special: str):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MAX_POSITIONS, **special)


def train_wordpiece():
    """A BERT-style uncased WordPiece tokenizer: [CLS] text [SEP], pad id 0.

    The vocabulary is built from the corpus rather than by `WordPieceTrainer`, whose result varies from call to
    call (ties between equally frequent merges), which would make two fixtures built alike disagree on token ids.
    """
    import string

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted({w for text in corpus() for w in text.split()})
    chars = list(string.ascii_lowercase + string.digits + string.punctuation)
    tokens = specials + chars + ["##" + c for c in string.ascii_lowercase + string.digits] + words
    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(dict.fromkeys(tokens))}, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return _wrap(tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")


def train_bytelevel_bpe():
    """A Llama-style byte-level BPE tokenizer: <s> text, with a pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<unk>", "<s>", "</s>", "<pad>"]
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(corpus(), trainer)
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B:1", special_tokens=[("<s>", tok.token_to_id("<s>"))]
    )
    return _wrap(tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def make_tiny_bert(dir: str | Path, num_labels: int = 3, seed: int = 0) -> Path:
    """A randomly initialised 2-layer BertForSequenceClassification folder with its tokenizer (safetensors)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification

    dir = Path(dir)
    tokenizer = train_wordpiece()
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=MAX_POSITIONS,
        num_labels=num_labels,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    BertForSequenceClassification(config).save_pretrained(dir)
    tokenizer.save_pretrained(dir)
    return dir


# A Zephyr-style chat template small enough for the tiny tokenizer: each turn ends with EOS.
TINY_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tiny_llama(dir: str | Path, seed: int = 0, chat_template: str | None = None, hidden: int = 32,
                    layers: int = 2) -> Path:
    """A randomly initialised LlamaForCausalLM folder (2 layers, 32 wide unless told) with a byte-level BPE
    tokenizer (safetensors); with `chat_template`, the tokenizer carries it."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    dir = Path(dir)
    tokenizer = train_bytelevel_bpe()
    if chat_template:
        tokenizer.chat_template = chat_template
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=hidden + 5,
        num_hidden_layers=layers,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(dir)
    tokenizer.save_pretrained(dir)
    return dir


def chat_rows(n: int, seed: int) -> list[dict]:
    """Chat rows whose answer is the topic of the user's words, in a fixed reply format: `topic: <label>`."""
    rows = []
    for text, label in synthetic_rows(n, seed):
        rows.append({"messages": [{"role": "user", "content": f"topic of: {text}"},
                                  {"role": "assistant", "content": f"topic: {LABELS[label]}"}]})
    return rows


def synthetic_rows(n: int, seed: int) -> list[tuple[str, int]]:
    """(text, label) pairs: 1-3 keywords of the label among 2-25 filler words, so lengths vary widely."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        label = rng.randrange(len(LABELS))
        words = rng.choices(FILLER, k=rng.randint(2, 25)) + rng.sample(KEYWORDS[LABELS[label]], rng.randint(1, 3))
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def make_tiny_tokenized(
    dir: str | Path,
    model_dir: str | Path,
    sizes: dict[str, int] | None = None,
    seed: int = 0,
    max_length: int = 64,
) -> TokenizedRef:
    """The training/inference input contract: a DatasetDict saved at `dir`, tokenized by `model_dir`'s tokenizer."""
    from datasets import Dataset, DatasetDict, Features, List, Value
    from transformers import AutoTokenizer

    sizes = sizes or {"train": 240, "validation": 60, "test": 50}
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    features = Features(
        {
            "input_ids": List(Value("int32")),
            "attention_mask": List(Value("int8")),
            "labels": Value("int64"),
            "row_id": Value("int64"),
            "text": Value("string"),
        }
    )
    splits = {}
    for i, (split, n) in enumerate(sizes.items()):
        rows = synthetic_rows(n, seed=seed * 100 + i)
        enc = tokenizer([t for t, _ in rows], truncation=True, max_length=max_length)
        splits[split] = Dataset.from_dict(
            {
                "input_ids": enc["input_ids"],
                "attention_mask": enc["attention_mask"],
                "labels": [y for _, y in rows],
                "row_id": list(range(n)),
                "text": [t for t, _ in rows],
            },
            features=features,
        )
    DatasetDict(splits).save_to_disk(str(dir))
    key = json.dumps({"sizes": sizes, "seed": seed, "max_length": max_length, "vocab": len(tokenizer)}, sort_keys=True)
    return TokenizedRef(
        uri=str(Path(dir).resolve()),
        fingerprint=hashlib.sha256(key.encode()).hexdigest()[:16],
        splits=dict(sizes),
        facts=ModelFacts(task="text-classification", max_length=max_length, label_names=list(LABELS)),
    )


# ---- as Hub repos ---------------------------------------------------------------------------------------------------
def push_tiny_bert(api, repo_id: str, tmp_dir: str | Path, num_labels: int = 3) -> str:
    """`make_tiny_bert(tmp_dir, num_labels)` uploaded to a new model repo `repo_id` -> its commit sha."""
    api.create_repo(repo_id)
    return api.upload_folder(folder_path=str(make_tiny_bert(tmp_dir, num_labels=num_labels)), repo_id=repo_id).oid


def push_parquet_dataset(api, repo_id: str, tmp_dir: str | Path, tables: dict, exist_ok: bool = False) -> str:
    """{split: pyarrow Table} written as `tmp_dir/data/{split}-00000-of-00001.parquet` and uploaded to the dataset
    repo `repo_id` (created; `exist_ok` as in `create_repo`) -> its commit sha."""
    import pyarrow.parquet as pq

    folder = Path(tmp_dir)
    (folder / "data").mkdir(parents=True)
    for split, table in tables.items():
        pq.write_table(table, folder / "data" / f"{split}-00000-of-00001.parquet")
    api.create_repo(repo_id, repo_type="dataset", exist_ok=exist_ok)
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="dataset").oid


def push_keyword_dataset(api, repo_id: str, tmp_dir: str | Path, sizes: dict[str, int]) -> str:
    """`synthetic_rows(n, seed=i)` for the i-th (split, n) of `sizes`, as text + label-name columns -> commit sha."""
    import pyarrow as pa

    tables = {}
    for seed, (split, n) in enumerate(sizes.items()):
        rows = synthetic_rows(n, seed=seed)
        tables[split] = pa.table({"text": [t for t, _ in rows], "label": [LABELS[y] for _, y in rows]})
    return push_parquet_dataset(api, repo_id, tmp_dir, tables)


def push_demo_dataset(api, repo_id: str, tmp_dir: str | Path, exist_ok: bool = False) -> str:
    """hubflow's demo dataset (`write_demo_parquet`: support tickets, card included) uploaded to `repo_id` -> sha."""
    from hubflow.demo_data import write_demo_parquet

    write_demo_parquet(tmp_dir)
    api.create_repo(repo_id, repo_type="dataset", exist_ok=exist_ok)
    return api.upload_folder(folder_path=str(tmp_dir), repo_id=repo_id, repo_type="dataset").oid


def push_tiny_llama(api, repo_id: str, tmp_dir: str | Path, hidden: int = 64, pretrained: bool = True) -> str:
    """`make_tiny_llama` with the tiny chat template (taught the task first: `pretrain_tiny_llama`), uploaded to a
    new model repo `repo_id` -> its commit sha."""
    api.create_repo(repo_id)
    folder = make_tiny_llama(tmp_dir, chat_template=TINY_CHAT_TEMPLATE, hidden=hidden)
    if pretrained:
        pretrain_tiny_llama(folder)
    return api.upload_folder(folder_path=str(folder), repo_id=repo_id).oid


def push_chat_dataset(api, repo_id: str, tmp_dir: str | Path, sizes: dict[str, int]) -> str:
    """`chat_rows(n, seed=i)` for the i-th (split, n) of `sizes` as a `messages` column -> commit sha."""
    import pyarrow as pa

    tables = {split: pa.Table.from_pylist(chat_rows(n, seed=seed)) for seed, (split, n) in enumerate(sizes.items())}
    return push_parquet_dataset(api, repo_id, tmp_dir, tables)


def pretrain_tiny_llama(folder: str | Path, steps: int = 60, seed: int = 5) -> Path:
    """Teach `make_tiny_llama(..., chat_template=...)`'s random weights the chat task in place (a bare loop, every
    token in the loss), so it behaves like a pretrained base: its next-token choices are clear, not near-ties that
    any change of thread count or batch shape could flip."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(folder)
    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    texts = [tok.apply_chat_template(r["messages"], tokenize=False) for r in chat_rows(16 * steps // 4, seed)]
    torch.manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for step in range(steps):
        batch = texts[(step * 16) % len(texts):][:16]
        enc = tok(batch, add_special_tokens=False, padding=True, return_tensors="pt")
        labels = enc["input_ids"].masked_fill(enc["attention_mask"] == 0, -100)
        model(**enc, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.save_pretrained(folder)
    return folder
