"""Causal LM: batch generation vs `pipeline("text-generation")` and vs a bare `generate` loop; LoRA fine-tuning vs TRL.

Every side gets the same randomly initialised Llama-style model (one save_pretrained folder, built once per run from
a config: hidden 384, 4 layers, 6 heads / 2 KV heads, MLP 1024, untied embeddings; a byte-level BPE tokenizer
trained on the fly on the rows' own text, ~3k tokens, so 8.6M parameters at full sizes; a Zephyr-style chat
template), the same chat rows and `torch.set_num_threads(2)`. The rows are support tickets
(bench.common.mixed_texts: a quarter are threads of 2-8 tickets, capped at 600 characters) as the user turn, and a
templated routing reply as the assistant turn.

generate_vs_pipeline / generate_vs_bare: the same prompts (chat template + generation header), greedy, the same
max_new_tokens. What each clock covers:

* ours      the whole `hubflow.stages.predict.predict(...)` call over a split made by the kind's
            `prepare_inference` (prompt ids, no labels: generation only): `load_from_disk`, model load with its
            sha256 check, length-sorted left-padded batches, `generate` with the KV cache, decoding, finish reasons,
            the parquet shard and the manifest, into a fresh out_uri each repetition.
* pipeline  `AutoModelForCausalLM.from_pretrained` + `AutoTokenizer` + `pipeline("text-generation", model,
            tokenizer, batch_size=...)` + the call over the chats (it renders the template and tokenizes each chat
            itself, left-pads each batch in input order and decodes the new tokens; `return_full_text=False`).
* bare      model load + a `generate` loop over left-padded batches built before the clock (the same prompt ids,
            sorted by length, the same batch size as ours) + `batch_decode` of the new tokens.

The new tokens of every row (up to and including EOS, pads excluded) are counted on every side: the work is equal
only when they match, and the bench says so.

sft_vs_trl: LoRA (r 16, alpha 32, dropout 0.05, all linear layers: hubflow's defaults, given to both), batch 16,
max_length 256, 1 epoch, AdamW lr 2e-4, no warm-up, linear decay, weight decay 0, grad-norm clip 1.0, fp32, no
activation checkpointing, no packing, loss on the assistant's answer (and its EOS) only. Both sides train on the
same token ids: the train / validation splits made by the kind's `prepare` (`input_ids`, `labels` with -100 on the
prompt), which TRL takes as a pre-tokenized dataset; the warm-up checks that TRL's own tokenization of the same rows
(as conversational prompt/completion data) gives exactly these ids and labels. Each clock is the whole job, model
folder in, trained weights out:

* ours  `hubflow.stages.train.train_model(..., method lora)`: load the splits, model + adapters, length-grouped
        batches padded per batch, one validation pass at the epoch end, one resumable checkpoint (adapter weights +
        optimizer state), then the adapter folder and the merged model folder.
* TRL   `load_from_disk` of the same splits, `SFTTrainer(model=dir, peft_config=LoraConfig(...), args=SFTConfig(
        ..., eval_strategy="epoch", save_strategy="no"))` (it loads the model, wraps it with peft, truncates and
        filters the splits), `train()` (random batches padded per batch), `save_model` (the adapter folder).

Tokens/s = non-pad tokens the training batches held (the train split's tokens x epochs) / wall seconds; TRL's own
`num_tokens` count is printed next to ours.
"""

from __future__ import annotations

import os
import random
import statistics
import warnings
from dataclasses import dataclass
from pathlib import Path

from bench.common import LABELS, Report, describe, interleave, mixed_texts, paired_ratio, timed

THREADS = 2
# Zephyr-style, as tests/tiny.py's TINY_CHAT_TEMPLATE: each turn ends with EOS (copied: bench does not import tests).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MODEL = dict(hidden_size=384, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=6,
             num_key_value_heads=2, max_position_embeddings=512)
VOCAB = 4096
MAX_CHARS = 600  # user turns are cut (at a word) to this: prompts stay under ~200 tokens
REPLIES = {
    "account": ["I have passed this to our account team: they can reset your login and check the profile settings. "
                "Expect an email from them within one working day.",
                "Thanks for flagging it. The account team will verify your identity and update the details on your "
                "profile; please keep an eye on your inbox."],
    "billing": ["I have passed this to our billing team: they will look at the charge on your statement and refund "
                "anything taken in error within five working days.",
                "Sorry about the payment trouble. The billing team will check the invoice and your plan and reply "
                "by email with the corrected amount."],
    "shipping": ["I have passed this to our shipping team: they will contact the courier about your parcel and send "
                 "you an updated delivery date.",
                 "Sorry your order is late. The shipping team will trace the package and arrange a replacement if it "
                 "cannot be found by Friday."],
    "technical": ["I have passed this to our technical team: they will look into the error you are seeing and walk "
                  "you through the fix. A firmware update often helps.",
                  "Thanks for the details. The technical team will try to reproduce the problem on the same device "
                  "and get back to you with the steps to solve it."],
}


@dataclass(frozen=True)
class Sizes:
    gen_rows: int  # prompts to complete
    new_tokens: int  # max_new_tokens (greedy)
    gen_batch: int  # ours and bare
    pipeline_batch: int  # the pipeline's best on this machine (see docs/benchmarks.md)
    train_rows: int
    val_rows: int
    train_batch: int
    max_length: int


FULL = Sizes(gen_rows=256, new_tokens=32, gen_batch=32, pipeline_batch=32, train_rows=256, val_rows=32,
             train_batch=16, max_length=256)
QUICK = Sizes(gen_rows=48, new_tokens=16, gen_batch=16, pipeline_batch=16, train_rows=64, val_rows=16,
              train_batch=16, max_length=256)


def chat_rows(n: int, seed: int) -> list[dict]:
    """n chats: a support ticket (or thread) from the user, the routing reply from the assistant."""
    texts, labels = mixed_texts(n, seed)
    rng = random.Random(seed)
    rows = []
    for text, label in zip(texts, labels):
        if len(text) > MAX_CHARS:
            text = text[:MAX_CHARS].rsplit(" ", 1)[0]
        name = LABELS[label]
        rows.append({"messages": [{"role": "user", "content": text},
                                  {"role": "assistant", "content": f"team: {name}. {rng.choice(REPLIES[name])}"}]})
    return rows


def train_tokenizer(texts: list[str]):
    """A Llama-style byte-level BPE tokenizer (<s> <unk> </s> <pad>) trained on `texts`, with the chat template."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=["<unk>", "<s>", "</s>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer)
    wrapped = PreTrainedTokenizerFast(tokenizer_object=tok, model_max_length=MODEL["max_position_embeddings"],
                                      unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    wrapped.chat_template = CHAT_TEMPLATE
    return wrapped


def make_model(out: Path, rows: list[dict], seed: int = 0) -> Path:
    """A randomly initialised LlamaForCausalLM (MODEL) with a tokenizer trained on the rows' text, saved to `out`."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = train_tokenizer([m["content"] for r in rows for m in r["messages"]])
    config = LlamaConfig(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=False, **MODEL)
    torch.manual_seed(seed)
    LlamaForCausalLM(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


# ---- set-up (untimed) ------------------------------------------------------------------------------------------------

@dataclass
class Setup:
    model_dir: str
    fingerprint: str
    gen: object  # TokenizedRef of the prompts (prepare_inference)
    gen_small: object  # the first two batches' prompts, for the warm-ups
    chats: list[list[dict]]  # the same prompts as chat turns, for the pipeline
    sft: object  # TokenizedRef of train / validation / test (prepare)
    sft_raw: list[dict]  # the train rows as conversational prompt/completion, for TRL's own tokenization


def setup(root: Path, sizes: Sizes) -> Setup:
    from datasets import Dataset, DatasetDict

    from hubflow.config import DataConfig, PreprocessConfig
    from hubflow.kinds import kind_for
    from hubflow.kinds.causal_lm.data import prepare_inference
    from hubflow.kinds.causal_lm.settings import CausalLMFacts, DataShape
    from hubflow.stages.facts import weights_fingerprint
    from hubflow.stages.pull import write_raw_splits

    base = root / "lm"
    train = chat_rows(sizes.train_rows + sizes.val_rows + 8, seed=0)
    test = chat_rows(sizes.gen_rows, seed=7)  # other tickets than the training rows
    model_dir = str(make_model(base / "model", train + test))
    kind, data_cfg = kind_for("causal-lm"), DataConfig(source="bench")
    facts = CausalLMFacts(max_length=sizes.max_length, shape=DataShape.chat, chat=True)
    test_ds = Dataset.from_list(test)
    gen = prepare_inference(test_ds, data_cfg, model_dir, facts, str(base / "gen"), "test")
    gen_small = prepare_inference(test_ds, data_cfg, model_dir, facts, str(base / "gen"), "test",
                                  max_samples=2 * sizes.gen_batch)
    n_train = sizes.train_rows
    splits = DatasetDict(train=Dataset.from_list(train[:n_train]),
                         validation=Dataset.from_list(train[n_train:n_train + sizes.val_rows]),
                         test=Dataset.from_list(train[n_train + sizes.val_rows:]))
    raw = write_raw_splits(splits, data_cfg, kind, str(base / "raw"), "bench", None)
    sft = kind.prepare(raw, model_dir, PreprocessConfig(max_length=sizes.max_length), data_cfg, str(base / "sft"))
    sft_raw = [{"prompt": r["messages"][:-1], "completion": r["messages"][-1:]} for r in train[:n_train]]
    return Setup(model_dir=model_dir, fingerprint=weights_fingerprint(model_dir), gen=gen, gen_small=gen_small,
                 chats=[r["messages"][:-1] for r in test], sft=sft, sft_raw=sft_raw)


def new_tokens(tokens: list[int], eos_ids: list[int], pad_id: int) -> int:
    """New tokens of one generated row: up to and including the first EOS, else every non-pad token (ours' count)."""
    end = next((k for k, t in enumerate(tokens) if t in eos_ids), None)
    return end + 1 if end is not None else sum(t != pad_id for t in tokens)


# ---- generation ------------------------------------------------------------------------------------------------------

def run_generation(root: Path, s: Setup, sizes: Sizes, wanted: set[str], reps: int, report: Report) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline
    from transformers import GenerationConfig as HFGenerationConfig

    from hubflow.kinds.causal_lm.settings import CausalLMInference, Generation
    from hubflow.stages.predict import predict, read_predictions
    from hubflow.tokenize import load_tokenized

    n, new = s.gen.splits["test"], sizes.new_tokens
    prompt_ids = list(load_tokenized(s.gen)["test"]["prompt_ids"])
    tok = AutoTokenizer.from_pretrained(s.model_dir)
    eos = HFGenerationConfig.from_pretrained(s.model_dir).eos_token_id  # what ends a row: these and the tokenizer's EOS
    eos_ids = sorted({*(eos if isinstance(eos, list) else [eos] if eos is not None else []), tok.eos_token_id})
    pad_id = tok.pad_token_id
    longest = max(len(p) for p in prompt_ids) + new
    # The token budget is set so that it never narrows a batch: ours and bare run the same batches.
    cfg = CausalLMInference(batch_size=sizes.gen_batch, max_tokens_per_batch=max(8192, sizes.gen_batch * longest),
                    generation=Generation(max_new_tokens=new))
    warm_cfg = cfg.model_copy(update={"generation": Generation(max_new_tokens=4)})
    greedy = dict(do_sample=False, temperature=None, top_p=None, top_k=None)
    last: dict[str, list] = {}  # side -> [new tokens per row, completion per row] (input order), last timed run

    def ours(rep, warm=False) -> float:
        out = str(root / "lm" / "pred" / f"ours-{rep}")  # fresh: a finished shard would be skipped
        ref = s.gen_small if warm else s.gen
        holder = {}
        settings = warm_cfg if warm else cfg
        seconds = timed(lambda: holder.setdefault("p", predict(s.model_dir, s.fingerprint, ref, "test", settings, out)))
        if not warm:
            table = read_predictions(holder["p"])
            last["ours"] = [table.column("new_tokens").to_pylist(), table.column("completion").to_pylist()]
        return seconds

    # bare: the same prompt ids, longest first (ours' stable sort), left-padded per batch, built before the clock
    order = sorted(range(n), key=lambda i: -len(prompt_ids[i]))
    batches = []
    for i in range(0, n, sizes.gen_batch):
        rows = [prompt_ids[j] for j in order[i:i + sizes.gen_batch]]
        width = max(len(r) for r in rows)
        batches.append((torch.tensor([[pad_id] * (width - len(r)) + r for r in rows]),
                        torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows])))

    def bare(rep, warm=False) -> float:
        holder: dict = {}

        def go():
            model = AutoModelForCausalLM.from_pretrained(s.model_dir, dtype=torch.float32).eval()
            tokenizer = AutoTokenizer.from_pretrained(s.model_dir)
            outs = []
            with torch.inference_mode():
                for ids, mask in batches[:2] if warm else batches:
                    out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4 if warm else new,
                                         pad_token_id=pad_id, eos_token_id=eos_ids, use_cache=True, **greedy)
                    outs.append(out[:, ids.shape[1]:])
            holder["texts"] = [t for o in outs for t in tokenizer.batch_decode(o, skip_special_tokens=True)]
            holder["outs"] = outs

        seconds = timed(go)
        if not warm:
            rows = [r for o in holder["outs"] for r in o.tolist()]
            counts, texts = [0] * n, [""] * n
            for k, j in enumerate(order):
                counts[j], texts[j] = new_tokens(rows[k], eos_ids, pad_id), holder["texts"][k]
            last["bare"] = [counts, texts]
        return seconds

    def peer_pipeline(rep, warm=False) -> float:
        generated: list = []
        holder: dict = {}

        def go():
            model = AutoModelForCausalLM.from_pretrained(s.model_dir, dtype=torch.float32)
            tokenizer = AutoTokenizer.from_pretrained(s.model_dir)
            original = model.generate

            def counting(*args, **kwargs):  # keeps each batch's new tokens, to count them after the clock
                out = original(*args, **kwargs)
                seq = out.sequences if hasattr(out, "sequences") else out
                generated.append(seq[:, kwargs["input_ids"].shape[1]:])
                return out

            model.generate = counting
            pipe = pipeline("text-generation", model=model, tokenizer=tokenizer, batch_size=sizes.pipeline_batch,
                            device="cpu")
            chats = s.chats[:2 * sizes.gen_batch] if warm else s.chats
            holder["out"] = pipe(chats, max_new_tokens=4 if warm else new, return_full_text=False, **greedy)

        before = os.environ.get("TOKENIZERS_PARALLELISM")
        try:
            seconds = timed(go)
        finally:  # a pipeline call sets TOKENIZERS_PARALLELISM=false for the whole process (see bench/inference.py)
            if before is None:
                os.environ.pop("TOKENIZERS_PARALLELISM", None)
            else:
                os.environ["TOKENIZERS_PARALLELISM"] = before
        if not warm:
            rows = [r for g in generated for r in g.tolist()]
            last["pipeline"] = [[new_tokens(r, eos_ids, pad_id) for r in rows],
                                [o[0]["generated_text"] for o in holder["out"]]]
        return seconds

    contenders = {"ours": ours}
    if "generate_vs_pipeline" in wanted:
        contenders["pipeline"] = peer_pipeline
    if "generate_vs_bare" in wanted:
        contenders["bare"] = bare
    for fn in contenders.values():  # imports, allocator, first-call paths: two batches, 4 new tokens
        fn("warmup", warm=True)
    times = interleave(contenders, reps)

    total_new = n * new
    report.figure(f"\n# generation: {n} chat prompts (prompt tokens median "
                  f"{statistics.median(len(p) for p in prompt_ids):.0f}, max {max(len(p) for p in prompt_ids)}), "
                  f"greedy, max_new_tokens {new}, batch {sizes.gen_batch} (pipeline {sizes.pipeline_batch}), "
                  f"{reps} repetitions, {THREADS} threads")
    lengths = [len(p) for p in prompt_ids]

    def positions(ls: list[int], b: int) -> int:  # prompt token positions the prefill computes, pads included
        return sum(len(ls[i:i + b]) * max(ls[i:i + b]) for i in range(0, len(ls), b))

    piped = positions(lengths, sizes.pipeline_batch)
    grouped = positions(sorted(lengths, reverse=True), sizes.gen_batch)
    report.figure(f"  (context) padded prompt positions: {piped:,} in input order (the pipeline's batches) vs "
                  f"{grouped:,} length-sorted (ours, bare): {piped / grouped:.2f}x; real prompt tokens "
                  f"{sum(lengths):,}")
    for name, label in (("ours", "ours     hubflow.stages.predict.predict (incl. load, shard write):"),
                        ("pipeline", "pipeline transformers.pipeline (incl. load, template, tokenize):"),
                        ("bare", "bare     model.generate loop, pre-padded (incl. load):")):
        if name in times:
            report.figure(f"  {label:<66}{describe(times[name], sum(last[name][0]), 'new tokens')}")
    # The work check: every side generated the same number of new tokens for every row.
    ours_counts, ours_texts = last["ours"]
    for name in ("pipeline", "bare"):
        if name in last:
            counts, texts = last[name]
            same_rows = sum(a == b for a, b in zip(counts, ours_counts))
            same_text = sum(a == b for a, b in zip(texts, ours_texts))
            verdict = "equal work" if counts == ours_counts else "WORK DIFFERS: the ratio is not like for like"
            report.figure(f"  (check) {name}: {sum(counts):,} new tokens vs ours {sum(ours_counts):,} (of at most "
                          f"{total_new:,}); same count on {same_rows}/{n} rows, same text on {same_text}/{n}: "
                          f"{verdict}")
    if "pipeline" in times:
        report.ratios["generate_vs_pipeline"] = paired_ratio(times["pipeline"], times["ours"])
    if "bare" in times:
        report.ratios["generate_vs_bare"] = paired_ratio(times["bare"], times["ours"])


# ---- LoRA fine-tuning ------------------------------------------------------------------------------------------------

LR, SEED, EVAL_BATCH = 2e-4, 42, 64


def run_sft(root: Path, s: Setup, sizes: Sizes, reps: int, report: Report) -> None:
    import datasets
    import numpy as np
    from peft import LoraConfig as PeftLora
    from transformers import AutoTokenizer, PrinterCallback
    from trl import SFTConfig, SFTTrainer

    from hubflow.kinds.causal_lm.settings import CausalLMTrain, Lora
    from hubflow.refs import PinnedRepo
    from hubflow.stages.train import LengthGroupedSampler, train_model
    from hubflow.tokenize import load_tokenized

    lora = Lora()  # hubflow's defaults, given to TRL below as they are
    pinned = PinnedRepo(repo_id="bench/llama", repo_type="model", revision="main", sha="0" * 40)
    train_ids = list(load_tokenized(s.sft)["train"]["input_ids"])
    n, tokens = len(train_ids), sum(len(x) for x in train_ids)  # 1 epoch: every row once, no padding counted
    trl_tokens: list[int] = []
    checks: list[str] = []  # printed after the section's header

    def ours(rep, max_steps=None) -> float:
        cfg = CausalLMTrain(method="lora", lora=lora, epochs=1, max_steps=max_steps, batch_size=sizes.train_batch,
                          eval_batch_size=EVAL_BATCH, learning_rate=LR, weight_decay=0.0, warmup_ratio=0.0,
                          seed=SEED, checkpoint_every_steps=1_000_000)
        out = str(root / "lm" / "train" / f"ours-{rep}")  # fresh: an existing resume checkpoint would be picked up
        return timed(lambda: train_model(s.sft, s.model_dir, pinned, cfg, out))

    def trl(rep, max_steps=None, raw=False) -> float:
        out = root / "lm" / "train" / f"trl-{rep}"
        holder: dict = {}

        def go():
            if raw:  # TRL's own tokenization of the rows (the warm-up), to check it makes our ids
                train, val = datasets.Dataset.from_list(s.sft_raw), None
            else:
                dsd = load_tokenized(s.sft)
                train, val = dsd["train"], dsd["validation"]
            args = SFTConfig(
                output_dir=str(out), num_train_epochs=1, max_steps=max_steps or -1,
                per_device_train_batch_size=sizes.train_batch, per_device_eval_batch_size=EVAL_BATCH,
                learning_rate=LR, lr_scheduler_type="linear", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                seed=SEED, bf16=False, fp16=False, gradient_checkpointing=False,  # TRL defaults both to True
                max_length=sizes.max_length, packing=False, completion_only_loss=True,
                eval_strategy="no" if val is None else "epoch", save_strategy="no", report_to="none",
                disable_tqdm=True,
            )
            peft_cfg = PeftLora(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, task_type="CAUSAL_LM",
                                target_modules=lora.target_modules or "all-linear")
            trainer = SFTTrainer(model=s.model_dir, args=args, train_dataset=train, eval_dataset=val,
                                 processing_class=AutoTokenizer.from_pretrained(s.model_dir), peft_config=peft_cfg)
            trainer.remove_callback(PrinterCallback)  # keeps the bench output to its own lines
            trainer.train()
            trainer.save_model(str(out / "model"))
            holder["trainer"] = trainer

        seconds = timed(go)
        trainer = holder["trainer"]
        if raw:
            ours_rows = load_tokenized(s.sft)["train"]
            made = trainer.train_dataset
            same = (list(made["input_ids"]) == list(ours_rows["input_ids"])
                    and list(made["labels"]) == list(ours_rows["labels"]))
            verdict = "the same input_ids and labels as ours" if same else "DIFFERENT ids or labels from ours"
            checks.append(f"  (check) TRL's own tokenization of the {len(made)} rows as conversational "
                          f"prompt/completion data (the warm-up): {verdict}")
        elif not max_steps:
            trl_tokens.append(int(getattr(trainer, "_total_train_tokens", -1)))
        return seconds

    # TRL maps (truncates, filters) the splits; with caching its later repetitions would reuse the first one's files.
    caching = datasets.is_caching_enabled()
    datasets.disable_caching()
    with warnings.catch_warnings():  # TRL's own config trips transformers 5's renaming of gradient checkpointing
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.* is deprecated", category=FutureWarning)
        try:
            ours("warmup", max_steps=2)  # imports, allocator, first backward
            trl("warmup", max_steps=2, raw=True)
            times = interleave({"ours": ours, "trl": trl}, reps)
        finally:
            if caching:
                datasets.enable_caching()

    lengths = np.array([len(x) for x in train_ids])
    sampler = list(LengthGroupedSampler(lengths, sizes.train_batch, SEED))
    b = sizes.train_batch

    def padded(order) -> int:
        return sum(len(order[i:i + b]) * lengths[order[i:i + b]].max() for i in range(0, len(order), b))

    shuffled = np.random.default_rng(SEED).permutation(n).tolist()
    report.figure(f"\n# LoRA fine-tuning: {n} chat rows ({tokens:,} tokens, median {int(np.median(lengths))}, max "
                  f"{lengths.max()}) x 1 epoch, batch {b}, max_length {sizes.max_length}, LoRA r {lora.r} alpha "
                  f"{lora.alpha} dropout {lora.dropout} all linear, lr {LR}, {s.sft.splits['validation']} validation "
                  f"rows, {reps} repetitions, {THREADS} threads")
    ours_padded, random_padded = padded(sampler), padded(shuffled)
    report.figure(f"  (context) padded token positions: ours {ours_padded:,} (length-grouped) vs ~{random_padded:,} "
                  f"for random batches (TRL's sampler): {random_padded / ours_padded:.2f}x")
    report.figure(f"  ours hubflow.stages.train.train_model, method lora (whole job):  "
                  f"{describe(times['ours'], tokens, 'tokens')}")
    report.figure(f"  TRL  trl.SFTTrainer + peft LoRA (whole job):                     "
                  f"{describe(times['trl'], tokens, 'tokens')}")
    for line in checks:
        report.figure(line)
    report.figure(f"  (check) non-pad tokens per epoch: ours {tokens:,} (the split's), TRL's own count "
                  f"{', '.join(f'{t:,}' for t in trl_tokens)}")
    report.ratios["sft_vs_trl"] = paired_ratio(times["trl"], times["ours"])


# ---- entry -----------------------------------------------------------------------------------------------------------

def run(root: Path, wanted: set[str], quick: bool, reps: int, report: Report) -> None:
    import torch

    sizes = QUICK if quick else FULL
    before = torch.get_num_threads()
    torch.set_num_threads(THREADS)
    try:
        s = setup(root, sizes)
        if wanted & {"generate_vs_pipeline", "generate_vs_bare"}:
            run_generation(root, s, sizes, wanted, reps, report)
        if "sft_vs_trl" in wanted:
            run_sft(root, s, sizes, reps, report)
    finally:
        torch.set_num_threads(before)


def sweep(pipeline_batches: list[int], ours_batches: list[int], reps: int) -> None:
    """`python -m bench.causal_lm --pipeline-batch 8 16 32 64 --ours-batch 16 32 64`: the full-size generation
    comparison with the pipeline at each batch size (ours at FULL's), then ours and bare at each batch size: how the
    batch sizes of FULL were chosen (docs/benchmarks.md)."""
    import shutil
    import tempfile
    from dataclasses import replace

    import torch

    root = Path(tempfile.mkdtemp(prefix="hubflow-bench-sweep-"))
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                      HF_DATASETS_CACHE=str(root / "hf_datasets"), TRANSFORMERS_VERBOSITY="error",
                      HF_HUB_DISABLE_PROGRESS_BARS="1")
    import datasets

    datasets.disable_progress_bars()
    torch.set_num_threads(THREADS)
    try:
        s = setup(root, FULL)
        runs = [(f"pipeline batch {b}", replace(FULL, pipeline_batch=b), "generate_vs_pipeline")
                for b in pipeline_batches]
        runs += [(f"ours and bare batch {b}", replace(FULL, gen_batch=b), "generate_vs_bare") for b in ours_batches]
        for i, (what, sizes, ratio) in enumerate(runs):
            report = Report()
            run_generation(root / f"sweep-{i}", s, sizes, {ratio}, reps, report)
            print(f"{what}: {ratio} {report.ratios[ratio]:.2f}", flush=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.causal_lm", description=sweep.__doc__)
    parser.add_argument("--pipeline-batch", type=int, nargs="*", default=[], metavar="N")
    parser.add_argument("--ours-batch", type=int, nargs="*", default=[], metavar="N")
    parser.add_argument("--reps", type=int, default=1)
    args = parser.parse_args()
    sweep(args.pipeline_batch, args.ours_batch, args.reps)
