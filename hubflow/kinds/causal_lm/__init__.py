"""Causal language modelling: fine-tune a decoder (full, LoRA or QLoRA) on chat, prompt/completion or raw text.

Data: see data.py (rendered with the chat template, loss on the answer and its EOS, raw text packed into blocks).
Metrics: loss and perplexity of the test references (lower is better; the best checkpoint has the lowest validation
loss), and for rows with an answer, exact match and chrF of greedy generations. Predictions: one generated completion
per prompt with its new-token count and finish reason. Space: a gradio ChatInterface that streams (space_app/).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...config import DataConfig, InferenceConfig, PublishConfig, SpaceConfig, TrainConfig
from ...refs import CheckpointRef, ModelFacts
from .. import Direction, KindDefaults
from . import data, metrics, settings
from .settings import DataShape, Generation, PublishFormat, TrainMethod


class CausalLM(KindDefaults):
    task = settings.TASK
    facts = settings.CausalLMFacts  # (before the next line rebinds `settings` in the class body)
    settings = settings.CausalLMConfig
    pipeline_tag = "text-generation"
    title = "Chat"
    metrics = {"perplexity": Direction.lower, "loss": Direction.lower, "exact_match": Direction.higher,
               "chrf": Direction.higher}
    default_metric = "perplexity"
    batch_invariant = False  # sampling streams and left padding depend on how prompts are batched
    space_app = Path(__file__).parent / "space_app"
    serve_handler = Path(__file__).parent / "serve.py"  # hubflow serve, the endpoint Space's handler.py
    modules = ("hubflow.kinds.causal_lm",)
    train_columns = ["input_ids", "labels", "position_ids"]

    # ---- data
    def raw_columns(self, data_cfg: DataConfig, available: list[str]) -> dict[str, str]:
        data_cfg = self.own(data_cfg)
        return data.roles(data_cfg, available)

    def check_raw(self, splits: dict, data_cfg: DataConfig, columns: dict[str, str]) -> None:
        data_cfg = self.own(data_cfg)
        data.check_raw(splits, data_cfg, columns)

    def prepare(self, raw, model_dir, cfg, data_cfg, out_uri):
        data_cfg = self.own(data_cfg)
        cfg = self.own(cfg)
        return data.prepare(raw, model_dir, cfg, data_cfg, out_uri)

    def prepare_inference(self, ds, data_cfg: DataConfig, model_dir: str, facts: ModelFacts, out_root: str):
        data_cfg = self.own(data_cfg)
        return data.prepare_inference(ds, data_cfg, model_dir, facts, out_root, data_cfg.test_split,
                                      data_cfg.max_test_samples)

    # ---- training
    def load_for_training(self, model_dir: str, facts: ModelFacts, cfg: TrainConfig, allow_pickle: bool = False):
        cfg = self.own(cfg)
        from .model import load_for_training

        return load_for_training(model_dir, facts, cfg, allow_pickle)

    def collator(self, tokenizer, on_gpu: bool):
        from .model import Collator

        return Collator(tokenizer.pad_token_id, 8 if on_gpu else None)

    def validate(self, model, eval_dl, accelerator, facts: ModelFacts) -> dict[str, float]:
        from .model import validate

        return validate(model, eval_dl, accelerator)

    def rank(self, m: dict[str, float]) -> tuple:
        return (-m["eval_loss"],)  # the lowest validation loss per token

    def save_model(self, model, tokenizer, out: Path, base_model) -> dict[str, Path]:
        from .model import pin_adapter_base, save_model

        folders = save_model(model, tokenizer, out)
        if "adapter" in folders:
            pin_adapter_base(folders["adapter"], base_model.repo_id, base_model.sha)
        return folders

    def folder_facts(self, name: str, facts: ModelFacts, base_model) -> ModelFacts:
        return facts.model_copy(update={"adapter_base": base_model}) if name == "adapter" else facts

    def trainable_parameters(self, params: int, arch: dict[str, int], cfg: TrainConfig) -> tuple[float, float]:
        """LoRA trains r x (in + out) per adapted linear layer: attention q, k, v, o (h x h) and the MLP's gate, up
        and down (h x inter), its default (all linear layers); a QLoRA base stores 0.5 byte + scales per weight."""
        cfg = self.own(cfg)
        if cfg.method is TrainMethod.full:
            return float(params), 4.0
        h, layers, inter = arch["hidden"], arch["layers"], arch["intermediate"]
        trainable = layers * cfg.lora.r * (4 * 2 * h + 3 * (h + inter))
        return float(trainable), 0.6 if cfg.method is TrainMethod.qlora else 4.0

    # ---- inference and evaluation
    def output_settings(self, cfg: InferenceConfig) -> dict[str, Any]:
        cfg = self.own(cfg)
        return cfg.generation.model_dump(mode="json")  # every generation setting changes the completions

    def load_predictor(self, folder, device, dtype):
        from .model import Generator

        return Generator.load(folder, device, dtype)

    def predict_shard(self, predictor, part, cfg: InferenceConfig, shard_index: int):
        """Rows of one shard -> completions (when the rows have prompts) and reference NLLs (when they have labels)."""
        cfg = self.own(cfg)
        import pyarrow as pa

        n = part.num_rows
        columns = {"row_id": part.column("row_id").cast(pa.int64())}
        for name in ("message", "prompt", "reference"):
            columns[name] = part.column(name) if name in part.column_names else pa.array([""] * n)
        prompt_ids = part.column("prompt_ids").to_pylist()
        generate = any(prompt_ids)
        results = predictor.generate(prompt_ids, cfg.generation, cfg.batch_size, cfg.max_tokens_per_batch,
                                     seed=cfg.generation.seed + shard_index) if generate else [("", 0, None)] * n
        columns["completion"] = pa.array([c for c, _, _ in results], pa.string())
        columns["new_tokens"] = pa.array([k for _, k, _ in results], pa.int64())
        columns["finish_reason"] = pa.array([f for _, _, f in results], pa.string())
        if "labels" in part.column_names:
            scores = predictor.nll(part.column("input_ids").to_pylist(), part.column("labels").to_pylist(),
                                   cfg.batch_size)
            columns["nll"] = pa.array([s for s, _ in scores], pa.float64())
            columns["tokens"] = pa.array([k for _, k in scores], pa.int64())
        return pa.table(columns)

    def score(self, table, facts: ModelFacts) -> dict[str, Any]:
        return metrics.score(table)

    def headline(self, report: dict[str, Any]) -> dict[str, float]:
        return metrics.headline(report)

    def render(self, report, history):
        return metrics.render_markdown(report), metrics.render_figures(report, history)

    def summarize(self, table) -> str:
        finished = table.column("finish_reason").to_pylist()
        counts = {k: finished.count(k) for k in sorted({f for f in finished if f})}
        new = table.column("new_tokens").to_pylist()
        return "\n".join(["| finish reason | rows |", "|---|---:|", *[f"| {k} | {v} |" for k, v in counts.items()],
                          "", f"mean new tokens: {sum(new) / max(len(new), 1):.1f}"])

    def own_rows(self, table) -> dict[str, Any]:
        """Per-row outcomes of this run's model on its test rows (scored rows only), for the gate's paired test."""
        import numpy as np

        rows = [r for r in table.to_pylist() if r.get("tokens")]
        return {"nll": np.array([r["nll"] for r in rows]), "tokens": np.array([r["tokens"] for r in rows]),
                "completion": [r["completion"] for r in rows], "reference": [r["reference"] for r in rows]}

    def champion_rows(self, model_dir: str, table, facts: ModelFacts, cfg: InferenceConfig, metric: str) -> dict:
        """Another model (the champion) on the same rows: the NLL of each answer after its prompt (both tokenized by
        that model's tokenizer) and, for exact match or chrF, its greedy answers with the run's generation limit."""
        cfg = self.own(cfg)
        import numpy as np

        from ...devices import device_and_dtype
        from .model import Generator

        gen = Generator.load(model_dir, *device_and_dtype())
        rows = [r for r in table.to_pylist() if r.get("tokens")]
        prompts = gen.tokenizer([r["prompt"] for r in rows], add_special_tokens=not facts.chat)["input_ids"]
        targets = gen.tokenizer([r["target"] for r in rows], add_special_tokens=False)["input_ids"]
        ids = [p + t for p, t in zip(prompts, targets)]
        labels = [[data.IGNORE] * len(p) + t for p, t in zip(prompts, targets)]
        scores = gen.nll(ids, labels, cfg.batch_size)
        out = {"nll": np.array([s for s, _ in scores]), "tokens": np.array([k for _, k in scores]),
               "reference": [r["reference"] for r in rows], "completion": None}
        if metric in ("exact_match", "chrf"):
            greedy = Generation(max_new_tokens=cfg.generation.max_new_tokens, stop=cfg.generation.stop)
            out["completion"] = [c for c, _, _ in gen.generate(prompts, greedy, cfg.batch_size,
                                                               cfg.max_tokens_per_batch)]
        return out

    def metric(self, rows: dict[str, Any], name: str, idx) -> float:
        """`name` over the rows at `idx` (a bootstrap resample, or all of them)."""
        import math

        if name in ("loss", "perplexity"):
            loss = rows["nll"][idx].sum() / max(rows["tokens"][idx].sum(), 1)
            return float(loss if name == "loss" else math.exp(min(loss, 50.0)))
        if rows["completion"] is None:  # the champion's answers were not generated (the gate compares perplexity)
            return float("nan")
        hyps = [rows["completion"][i].strip() for i in idx]
        refs = [rows["reference"][i].strip() for i in idx]
        if name == "exact_match":
            return sum(h == r for h, r in zip(hyps, refs)) / max(len(hyps), 1)
        from sacrebleu.metrics import CHRF

        return CHRF().corpus_score(hyps, [refs]).score / 100

    # ---- publishing and the Space
    def published_folder(self, checkpoint: CheckpointRef, publish: PublishConfig) -> tuple[str, str, str]:
        """The model, or with publish.format=adapter the adapter alone (it reloads with peft on the pinned base)."""
        from ...errors import PreflightError

        if publish.format is not PublishFormat.adapter:
            return super().published_folder(checkpoint, publish)
        if checkpoint.adapter_uri is None or checkpoint.adapter_fingerprint is None:
            raise PreflightError("publish.format='adapter': this run trained no adapter (train.method=full)")
        return checkpoint.adapter_uri, checkpoint.adapter_fingerprint, "adapter_model.safetensors"

    def card_metadata(self, facts: ModelFacts) -> dict[str, str]:
        if facts.adapter_base is None:
            return super().card_metadata(facts)
        return {"library_name": "peft", "base_model_relation": "adapter", "weights": "adapter"}

    def card_hyperparameters(self, config) -> dict[str, Any]:
        hyper = config.train.model_dump(mode="json", exclude={"task"} | ({"lora"} if config.train.method is
                                                                          TrainMethod.full else set()))
        # A chat template is code, not a setting: it ships in tokenizer_config.json.
        hyper.update({f"preprocess.{k}": v for k, v in config.preprocess.model_dump(mode="json").items()
                      if k not in ("task", "chat_template")})
        return hyper

    def card_summary(self, facts: ModelFacts, m: dict[str, float], rows: int) -> str:
        shown = [f"perplexity **{m['perplexity']:.3f}**"]
        if "exact_match" in m:
            shown += [f"exact match **{m['exact_match']:.4f}**", f"chrF **{m['chrf']:.4f}**"]
        what = {DataShape.chat: "chat", DataShape.prompt_completion: "prompt/completion",
                DataShape.text: "raw text"}.get(facts.shape, "text")
        return f"A causal language model fine-tuned on {what} data. Test {', '.join(shown)} on {rows} rows."

    def card_eval_results(self, m: dict[str, float]) -> list[dict[str, Any]]:
        out = [dict(metric_type="perplexity", metric_name="Perplexity", metric_value=m["perplexity"])]
        if "exact_match" in m:
            out += [dict(metric_type="exact_match", metric_name="Exact match", metric_value=m["exact_match"]),
                    dict(metric_type="chrf", metric_name="chrF", metric_value=m["chrf"])]
        return out

    def card_usage(self, repo_id: str, revision: str, facts: ModelFacts) -> str:
        if facts.adapter_base is not None:
            base = facts.adapter_base
            return "\n".join([
                "from peft import PeftModel", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                f'base = AutoModelForCausalLM.from_pretrained("{base.repo_id}", revision="{base.sha}")',
                f'model = PeftModel.from_pretrained(base, "{repo_id}", revision="{revision}")',
                f'tokenizer = AutoTokenizer.from_pretrained("{repo_id}", revision="{revision}")'])
        call = 'chat([{"role": "user", "content": "Your message"}], max_new_tokens=64)' if facts.chat else \
            'chat("Your prompt", max_new_tokens=64)'
        return "\n".join(["from transformers import pipeline", "",
                          f'chat = pipeline("text-generation", model="{repo_id}", revision="{revision}")', call])

    def prediction_files_table(self, table, facts: ModelFacts):
        keep = ("row_id", "message", "reference", "completion", "new_tokens", "finish_reason")
        return table.select([c for c in keep if c in table.column_names])

    def prediction_columns(self, facts: ModelFacts) -> list[tuple[str, str]]:
        return [("row_id", "row index in the test split (the prompt id)"), ("message", "the user's last message"),
                ("reference", "the answer in the data"), ("completion", "the generated answer (greedy)"),
                ("new_tokens", "tokens generated"), ("finish_reason", "eos, stop (a stop string) or length")]

    def space_variables(self, facts: ModelFacts, space: SpaceConfig) -> dict[str, str]:
        space = self.own(space)
        variables = {"MAX_NEW_TOKENS": str(space.max_new_tokens), "CHAT": "1" if facts.chat else "0"}
        if facts.adapter_base is not None:
            variables.update(BASE_MODEL_ID=facts.adapter_base.repo_id, BASE_MODEL_REVISION=facts.adapter_base.sha)
        return variables

    def reference_answers(self, rows: list[dict], model_dir: str, facts: ModelFacts,
                          space: SpaceConfig) -> list[tuple[str, str]]:
        space = self.own(space)
        messages = [r["message"] for r in rows if r.get("message")]
        return list(zip(messages, self.answer_texts(model_dir, messages, facts, space)))

    def answer_texts(self, model_dir: str, texts: list[str], facts: ModelFacts, space: SpaceConfig) -> list[str]:
        """What the chat app answers: each message alone (no padding), greedy, the Space's max_new_tokens."""
        space = self.own(space)
        from ...devices import device_and_dtype
        from .model import Generator

        gen = Generator.load(model_dir, *device_and_dtype())
        prompts = [gen.tokenizer.apply_chat_template([{"role": "user", "content": t}], tokenize=False,
                                                     add_generation_prompt=True) if facts.chat else t for t in texts]
        ids = gen.tokenizer(prompts, add_special_tokens=not facts.chat)["input_ids"]
        greedy = Generation(max_new_tokens=space.max_new_tokens)
        return [gen.generate([p], greedy, 1, 1 << 62)[0][0] for p in ids]

    def space_readme(self, facts: ModelFacts, variables: dict[str, str]) -> dict[str, str]:
        return {"max_new_tokens": variables["MAX_NEW_TOKENS"],
                "base_model": facts.adapter_base.repo_id if facts.adapter_base else ""}

    def ask_space(self, client, text: str) -> str:
        # A ChatInterface keeps the conversation per client session: each smoke question starts a new one, so the
        # app sees the message alone, as the reference answer did.
        client.reset_session()
        return client.predict(text, api_name="/chat")

    def answers_match(self, got: str, want: str | None, facts: ModelFacts) -> bool:
        return got.strip() == want.strip() if want is not None else isinstance(got, str) and bool(got.strip())


KIND = CausalLM()
