"""A chat demo for one causal LM at one commit: hubflow's Space template for `task: causal-lm`.

Runs as a Hugging Face Space (gradio SDK) or on a laptop (`hubflow space preview`). It is self-contained: a Space has
only its own files and requirements.txt, so nothing here imports hubflow. Everything comes from the environment
(Space variables, and one optional Space secret):

    MODEL_ID             a Hub model repo id (merged weights, or an adapter), or a local save_pretrained folder
    MODEL_REVISION       the commit sha to serve (pinned: the demo never drifts to a newer push)
    BASE_MODEL_ID        for an adapter repo: the base model the adapter goes on ...
    BASE_MODEL_REVISION  ... at the commit it was trained on
    MAX_NEW_TOKENS       new tokens per answer at most (default 128)
    CHAT                 "1": render the conversation with the tokenizer's chat template; "0": complete the raw text
    EXAMPLES             JSON list of example messages (optional)
    HF_TOKEN             a Space *secret*, set only when the model repo is private

It answers as hubflow's batch generation does for one prompt: greedy decoding, the model's own end-of-turn and EOS
tokens, special tokens left out of the text. The answer streams token by token.

    MODEL_ID=ns/model MODEL_REVISION=<sha> python app.py     # serves on $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT
"""

import json
import os
import sys
from threading import Thread

import gradio as gr
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TextIteratorStreamer

MODEL_ID = os.environ["MODEL_ID"]
MODEL_REVISION = os.environ.get("MODEL_REVISION") or None
BASE_MODEL_ID = os.environ.get("BASE_MODEL_ID") or None
BASE_MODEL_REVISION = os.environ.get("BASE_MODEL_REVISION") or None
MAX_NEW_TOKENS = int(os.environ.get("MAX_NEW_TOKENS") or 128)
CHAT = os.environ.get("CHAT", "1") == "1"
EXAMPLES = json.loads(os.environ.get("EXAMPLES") or "[]")


def load_model():
    """Tokenizer and model at the pinned revisions; a failure ends the app with one readable line (the Space log)."""
    local = os.path.isdir(MODEL_ID)
    token = os.environ.get("HF_TOKEN") or None
    hub = {} if local else {"revision": MODEL_REVISION, "token": token}
    try:
        tokenizer = AutoTokenizer.from_pretrained(MODEL_ID, **hub)
        if BASE_MODEL_ID:
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained(BASE_MODEL_ID, revision=BASE_MODEL_REVISION, token=token,
                                                        dtype=torch.float32, use_safetensors=True)
            model = PeftModel.from_pretrained(base, MODEL_ID, **hub).merge_and_unload()
        else:
            model = AutoModelForCausalLM.from_pretrained(MODEL_ID, dtype=torch.float32, use_safetensors=True, **hub)
    except Exception as err:  # noqa: BLE001 - whatever went wrong, the Space's error message must say it
        where = MODEL_ID if local else f"{MODEL_ID}@{MODEL_REVISION or 'main'}"
        sys.exit(f"hubflow demo: cannot load model {where}: {type(err).__name__}: {err}")
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer, model.eval()


TOKENIZER, MODEL = load_model()
EOS = MODEL.generation_config.eos_token_id
EOS = list(EOS) if isinstance(EOS, (list, tuple)) else ([EOS] if EOS is not None else [])
if TOKENIZER.eos_token_id is not None and TOKENIZER.eos_token_id not in EOS:
    EOS.append(TOKENIZER.eos_token_id)


def prompt_ids(message: str, history: list[dict]) -> torch.Tensor:
    if not CHAT:
        return TOKENIZER(message, return_tensors="pt")["input_ids"]
    turns = [{"role": t["role"], "content": t["content"]} for t in history if isinstance(t.get("content"), str)]
    text = TOKENIZER.apply_chat_template(turns + [{"role": "user", "content": message}], tokenize=False,
                                         add_generation_prompt=True)
    return TOKENIZER(text, add_special_tokens=False, return_tensors="pt")["input_ids"]


def answer(message: str, history: list[dict]):
    """Stream the greedy answer to the conversation so far."""
    ids = prompt_ids(message or "", history or [])
    streamer = TextIteratorStreamer(TOKENIZER, skip_prompt=True, skip_special_tokens=True)
    kwargs = dict(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=MAX_NEW_TOKENS, do_sample=False,
                  temperature=None, top_p=None, top_k=None, eos_token_id=EOS or None,
                  pad_token_id=TOKENIZER.pad_token_id, streamer=streamer)
    thread = Thread(target=lambda: torch.inference_mode()(MODEL.generate)(**kwargs), daemon=True)
    thread.start()
    text = ""
    for piece in streamer:
        text += piece
        yield text
    thread.join()


def build_demo() -> gr.ChatInterface:
    revision = f" at `{MODEL_REVISION[:10]}`" if MODEL_REVISION and not os.path.isdir(MODEL_ID) else ""
    return gr.ChatInterface(answer, title=f"Chat with {MODEL_ID}", description=f"`{MODEL_ID}`{revision}, greedy, "
                            f"up to {MAX_NEW_TOKENS} new tokens.", examples=EXAMPLES or None, api_name="chat")


if __name__ == "__main__":
    # Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (set by the Space runtime or the preview).
    build_demo().queue().launch()
