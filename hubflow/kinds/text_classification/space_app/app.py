"""A text-classification demo for one model at one commit: hubflow's Space template.

Runs as a Hugging Face Space (gradio SDK) or on a laptop (`hubflow space preview`). It is self-contained: a Space has
only its own files and requirements.txt, so nothing here imports hubflow. Everything comes from the environment
(Space variables, and one optional Space secret):

    MODEL_ID        a Hub model repo id, or a local save_pretrained folder (preview of a run)
    MODEL_REVISION  the commit sha to serve (pinned: the demo never drifts to a newer push)
    MAX_LENGTH      tokens per text; longer texts are truncated, as in batch inference (default 128)
    EXAMPLES        JSON list of example texts (optional)
    HF_TOKEN        a Space *secret*, set only when the model repo is private

It computes what hubflow's batch inference computes (tasks/infer.py): the model's own tokenizer, truncation to
MAX_LENGTH, fp32 logits, softmax. So the label shown here is the label in the batch predictions.

    MODEL_ID=ns/model MODEL_REVISION=<sha> python app.py     # serves on $GRADIO_SERVER_NAME:$GRADIO_SERVER_PORT
"""

import json
import os
import sys

import gradio as gr
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

MODEL_ID = os.environ["MODEL_ID"]
MODEL_REVISION = os.environ.get("MODEL_REVISION") or None
MAX_LENGTH = int(os.environ.get("MAX_LENGTH") or 128)
EXAMPLES = json.loads(os.environ.get("EXAMPLES") or "[]")


def load_model():
    """Tokenizer and model at the pinned revision; a failure ends the app with one readable line (the Space log)."""
    local = os.path.isdir(MODEL_ID)
    hub_kwargs = {} if local else {"revision": MODEL_REVISION, "token": os.environ.get("HF_TOKEN") or None}
    try:
        tokenizer = AutoTokenizer.from_pretrained(MODEL_ID, **hub_kwargs)
        model = AutoModelForSequenceClassification.from_pretrained(
            MODEL_ID, dtype=torch.float32, use_safetensors=True, **hub_kwargs
        )
    except Exception as err:  # noqa: BLE001 - whatever went wrong, the Space's error message must say it
        where = MODEL_ID if local else f"{MODEL_ID}@{MODEL_REVISION or 'main'}"
        sys.exit(f"hubflow demo: cannot load model {where}: {type(err).__name__}: {err}")
    return tokenizer, model.eval()


TOKENIZER, MODEL = load_model()
LABELS = [MODEL.config.id2label[i] for i in range(MODEL.config.num_labels)]


MAX_BATCH = 32  # concurrent callers' texts that gradio hands to one classify call
CHUNK_TOKENS = 2048  # padded tokens per forward pass: length-sorted chunks keep padding (wasted work) small


@torch.inference_mode()
def classify(texts: list[str]) -> list[list[dict[str, float]]]:
    """Texts waiting together (gradio's batch: one per caller, up to MAX_BATCH) -> ([{label: probability}, ...],):
    every label's probability per text, in the callers' order (gr.Label shows the top one as the prediction).

    Each text is truncated to MAX_LENGTH as in batch inference; the batch runs longest first in chunks padded to
    their own longest text, so a text's scores are its own whatever it shares a batch with (to float rounding)."""
    ids = TOKENIZER([t or "" for t in texts], truncation=True, max_length=MAX_LENGTH)["input_ids"]
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    answers: list = [None] * len(ids)
    start = 0
    while start < len(order):
        width = len(ids[order[start]])
        chunk = order[start:start + max(1, CHUNK_TOKENS // width)]
        enc = TOKENIZER.pad({"input_ids": [ids[i] for i in chunk]}, return_tensors="pt")
        probs = MODEL(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).logits.float().softmax(-1)
        for i, row in zip(chunk, probs.tolist()):
            answers[i] = {name: float(p) for name, p in zip(LABELS, row)}
        start += len(chunk)
    return [answers]


def build_demo() -> gr.Blocks:
    revision = f" at `{MODEL_REVISION[:10]}`" if MODEL_REVISION and not os.path.isdir(MODEL_ID) else ""
    with gr.Blocks(title=f"{MODEL_ID} demo") as demo:
        gr.Markdown(f"## Text classification with `{MODEL_ID}`{revision}\nLabels: {', '.join(LABELS)}")
        with gr.Row():
            with gr.Column():
                text = gr.Textbox(label="Text", lines=3, placeholder="Type a sentence")
                button = gr.Button("Classify", variant="primary")
            label = gr.Label(label="Prediction", num_top_classes=len(LABELS))
        # One endpoint for both triggers: the UI and gradio_client call the same `/predict`. batch=True: callers
        # waiting in the queue run as one forward pass (a caller still sends and gets one text).
        gr.on([button.click, text.submit], classify, inputs=text, outputs=label, api_name="predict",
              batch=True, max_batch_size=MAX_BATCH)
        if EXAMPLES:
            gr.Examples([[e] for e in EXAMPLES], inputs=text)
    return demo


if __name__ == "__main__":
    # Host and port come from GRADIO_SERVER_NAME / GRADIO_SERVER_PORT (set by the Space runtime or the preview).
    build_demo().queue().launch()
