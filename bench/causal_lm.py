"""Causal LM: batch generation vs `pipeline("text-generation")` and vs a bare `generate` loop; LoRA fine-tuning vs TRL.

Every side gets the same randomly initialised Llama-style model (one save_pretrained folder, built once per run from
a config: hidden 512, 4 layers, 8 heads / 4 KV heads, MLP 1376, a byte-level BPE tokenizer of ~4k tokens trained
on the fly on the rows' own text, and a Zephyr-style chat template), the same chat rows and
`torch.set_num_threads(2)`. The rows are support tickets (bench.common.mixed_texts: a quarter are threads of 2-8
tickets, capped at 600 characters) as the user turn, and a templated routing reply as the assistant turn.

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
from dataclasses import dataclass
from pathlib import Path

from bench.common import LABELS, Report, describe, interleave, mixed_texts, paired_ratio, timed

THREADS = 2
# Zephyr-style, as tests/tiny.py's TINY_CHAT_TEMPLATE: each turn ends with EOS (copied: bench does not import tests).
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}{{ eos_token }}{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
MODEL = dict(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
             num_key_value_heads=4, max_position_embeddings=512)
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


FULL = Sizes(gen_rows=256, new_tokens=32, gen_batch=32, pipeline_batch=32, train_rows=384, val_rows=64,
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
