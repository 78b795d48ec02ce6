"""The GPU check: on a CUDA machine, the `gpu` tests, then GPU figures as `name: value` lines (~5 min on one H100).

    make gpu-check                                        # = python3 -m bench.gpu_check
    python3 -m bench.gpu_check --python /opt/venv/bin/python --no-install   # an environment that is ready

Steps, each stopping the check with one line and exit status 1 when it fails:
1. preflight (standard library only, before anything is installed): `nvidia-smi -L` must list a GPU;
2. environment: a venv (.venv-gpu unless --python) with the CUDA build of torch (`pip install torch==2.13.0`:
   PyPI's default Linux x86_64 wheel is the CUDA one; the project's .venv holds the CPU build) and the project
   (`pip install -e '.[test,llm]'`); then torch must see the GPU;
3. `pytest -m gpu` (tests/test_gpu.py);
4. the figures (`--measure`, in that environment), reusing bench/'s set-ups, peers and clocks:

    train_bf16_samples_per_s  demo classifier (MiniLM + 4-way head), hubflow's train_model at bf16, training loop
    train_bf16_mfu            achieved / peak dense bf16 FLOP/s, achieved = 6 x N x tokens/s (N: parameters less the
                              embedding tables, which do no matmul; attention scores not counted: a lower bound)
    inference_vs_pipeline     hubflow's predict vs transformers.pipeline, both on the GPU in bf16 (higher: ours wins)
    inference_vs_bare         ... vs a bare inference_mode loop over pre-padded batches on the GPU
    lora_tokens_per_s         causal LM (bench/causal_lm.py's Llama recipe at a GPU width, ~160 M parameters),
                              train_model(method lora) at bf16, whole job, non-pad tokens
    generate_tokens_per_s     ... batch generation through predict: new tokens / whole call, greedy

Without a GPU (`--allow-cpu`, with `--measure --quick`) the same code runs on the CPU: a smoke test of this file.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-gpu"
TORCH = os.environ.get("GPU_CHECK_TORCH", "torch==2.13.0")  # the version the project's CPU venv pins
HINT = "run this on a GPU machine"
# Dense bf16 tensor-core peaks (NVIDIA data sheets, no sparsity), matched against torch.cuda.get_device_name();
# the first matching substring wins, so the specific names come first.
PEAK_BF16_TFLOPS = [("H100 PCIe", 756), ("H100 NVL", 835), ("H200", 989), ("H100", 989), ("GH200", 989),
                    ("B200", 2250), ("A100", 312), ("A10G", 125), ("A10", 125), ("L40S", 362), ("L40", 181),
                    ("L4", 121), ("A6000", 155)]


def fail(reason: str) -> None:
    print(f"gpu-check: {reason}", file=sys.stderr, flush=True)
    raise SystemExit(1)


def smi_gpus() -> tuple[list[str], str]:
    """(GPU lines of `nvidia-smi -L`, what nvidia-smi said when it lists none)."""
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return [], "nvidia-smi: not found"
    try:
        out = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as err:
        return [], f"nvidia-smi -L: {err}"
    gpus = [line.strip() for line in out.stdout.splitlines() if line.startswith("GPU ")]
    said = (out.stderr or out.stdout).strip().splitlines()
    return gpus, f"nvidia-smi -L: {said[0] if said else f'exit status {out.returncode}, no GPU listed'}"


def probe(python: str) -> tuple[str | None, str | None, bool, str]:
    """(torch version, its CUDA version, cuda available, GPU name) in `python`; (None, ...) without torch."""
    code = ("import torch; ok = torch.cuda.is_available(); "
            "print(torch.__version__, torch.version.cuda, ok, torch.cuda.get_device_name() if ok else '', sep='|')")
    out = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return None, None, False, ""
    version, cuda, ok, name = out.stdout.strip().splitlines()[-1].split("|")
    return version, (None if cuda == "None" else cuda), ok == "True", name


def pip(python: str, *args: str) -> None:
    print(f"gpu-check: pip install {' '.join(args)}", flush=True)
    if subprocess.run([python, "-m", "pip", "install", "-q", "--disable-pip-version-check", *args],
                      cwd=ROOT).returncode:
        fail(f"pip install {' '.join(args)} failed (see above)")


def prepare(python: str | None, install: bool) -> str:
    """The interpreter to measure with: given, or .venv-gpu made now; with `install`, CUDA torch and the project."""
    if python is None:
        python = str(VENV / "bin" / "python")
        if not Path(python).exists():
            subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
    if install:
        version, cuda, _, _ = probe(python)
        if cuda is None:  # missing, or a CPU build: only this is several GB, so it is skipped when already there
            if version is not None:  # pip would keep a CPU build of the same version
                subprocess.run([python, "-m", "pip", "uninstall", "-q", "-y", "torch"], check=True)
            pip(python, TORCH)
        pip(python, "-e", ".[test,llm]")
    return python


def check(python: str, smi_said: str) -> str:
    """The GPU torch sees, or one line saying why there is none."""
    version, cuda, ok, name = probe(python)
    if version is None:
        fail(f"no torch in {python} (drop --no-install to install the CUDA build)")
    if not ok:
        build = (f"CUDA {cuda} build" if cuda
                 else "a CPU build: install the CUDA one (pip install torch on Linux x86_64)")
        fail(f"no CUDA GPU visible (torch.cuda.is_available() is False with torch {version}, {build}; {smi_said}) "
             f"— {HINT}")
    return name


def bootstrap(args: argparse.Namespace) -> None:
    gpus, said = smi_gpus()
    if not gpus:
        fail(f"no CUDA GPU visible ({said}) — {HINT}")
    print(f"gpu-check: {'; '.join(gpus)}", flush=True)
    python = prepare(args.python, not args.no_install)
    name = check(python, said)
    started = time.perf_counter()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    tests = subprocess.run([python, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests/test_gpu.py"],
                           cwd=ROOT, env=env)
    measured = subprocess.run([python, "-m", "bench.gpu_check", "--measure", *(["--quick"] if args.quick else [])],
                              cwd=ROOT, env=env)
    print(f"gpu: {name}")
    print(f"gpu_tests: {'passed' if tests.returncode == 0 else 'FAILED'}")
    print(f"gpu_check_seconds: {time.perf_counter() - started:.0f}")  # the tests and the figures, not the install
    if tests.returncode or measured.returncode:
        raise SystemExit(1)


# ---- the figures (run inside the GPU environment) --------------------------------------------------------------------

def peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def measure(quick: bool, allow_cpu: bool) -> None:
    root = Path(tempfile.mkdtemp(prefix="hubflow-gpu-check-"))
    os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", HF_DATASETS_OFFLINE="1",
                      HF_DATASETS_CACHE=str(root / "hf_datasets"), TRANSFORMERS_VERBOSITY="error",
                      HF_HUB_DISABLE_PROGRESS_BARS="1")
    import warnings

    import datasets
    import torch
    import transformers

    from bench.common import Report

    # peft's LoRA set-up trips transformers 5's renaming of gradient checkpointing (as in bench/causal_lm.py)
    warnings.filterwarnings("ignore", message=".*gradient_checkpointing.* is deprecated", category=FutureWarning)

    if not torch.cuda.is_available() and not allow_cpu:
        fail(f"no CUDA GPU visible (torch.cuda.is_available() is False with torch {torch.__version__}) — {HINT}")
    datasets.disable_progress_bars()
    transformers.utils.logging.disable_progress_bar()
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"# gpu-check figures: {name}, torch {torch.__version__} (CUDA {torch.version.cuda}), "
          f"{'quick' if quick else 'full'} sizes", flush=True)
    report, values = Report(), {}
    try:
        train_and_infer(root, quick, name, report, values)
        causal_lm(root, quick, report, values)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print("\n# gpu-check (name: value)")
    for key, value in values.items():  # exactly `name: value`, one per line, for whoever parses this
        print(f"{key}: {value}")


def train_and_infer(root: Path, quick: bool, name: str, report, values: dict) -> None:
    from bench.common import classifier_dir, tokenized_splits

    rows = {"train": 512, "validation": 64, "test": 1024} if quick else {"train": 16384, "validation": 512,
                                                                          "test": 32768}
    tokenized = tokenized_splits(root, "gpu", rows, max_length=128)
    train(root, tokenized, name, report, values)
    clf_dir, clf_fp = classifier_dir(root)
    infer(root, clf_dir, clf_fp, tokenized, 1 if quick else 3, report, values)


def train(root: Path, tokenized, name: str, report, values: dict) -> None:
    """bf16 training of the demo classifier; samples/s over the loop's steps (after the first flush) and MFU."""
    from transformers import AutoModelForSequenceClassification

    from bench.common import base_model_dir, timed
    from hubflow.config import Precision, TrainConfig
    from hubflow.refs import PinnedRepo
    from hubflow.stages.train import train_model
    from hubflow.tokenize import load_tokenized

    batch = 64
    cfg = TrainConfig(epochs=1, batch_size=batch, eval_batch_size=256, precision=Precision.bf16, seed=42,
                      checkpoint_every_steps=1_000_000)
    pinned = PinnedRepo(repo_id="sentence-transformers/all-MiniLM-L6-v2", repo_type="model", revision="main",
                        sha="0" * 40)
    train_model(tokenized, base_model_dir(), pinned, cfg.model_copy(update={"max_steps": 4}), str(root / "warm"))
    marks: list[tuple[float, int]] = []  # (clock, step) at each loss flush: the loop's pace, without load and save

    def on_progress(fraction: float, message: str) -> None:
        if message.startswith("step "):
            marks.append((time.perf_counter(), int(message.split()[1].split("/")[0])))

    seconds = timed(lambda: train_model(tokenized, base_model_dir(), pinned, cfg, str(root / "train"), on_progress))
    n = tokenized.splits["train"]
    tokens = sum(len(ids) for ids in load_tokenized(tokenized)["train"]["input_ids"])
    if len(marks) >= 2:
        (t0, s0), (t1, s1) = marks[0], marks[-1]
        loop_rate = min((s1 - s0) * batch, n) / (t1 - t0)
    else:
        loop_rate = n / seconds
    model = AutoModelForSequenceClassification.from_pretrained(base_model_dir(), num_labels=4)
    embeddings = sum(p.numel() for m in model.modules() if type(m).__name__ == "Embedding" for p in m.parameters())
    matmul_params = sum(p.numel() for p in model.parameters()) - embeddings
    flops = 6 * matmul_params * loop_rate * tokens / n
    peak = peak_tflops(name)
    report.figure(f"\n# bf16 training: demo classifier, {n} rows x 1 epoch, batch {batch}, {tokens / n:.0f} non-pad "
                  f"tokens per row, {matmul_params / 1e6:.1f} M matmul parameters "
                  f"(+{embeddings / 1e6:.1f} M embedding)")
    report.figure(f"  whole job (load, loop, validation, save): {seconds:.1f} s = {n / seconds:,.0f} samples/s")
    report.figure(f"  training loop: {loop_rate:,.0f} samples/s = {loop_rate * tokens / n:,.0f} tokens/s; "
                  f"6 x N x tokens/s = {flops / 1e12:.1f} TFLOP/s" + (f" of {peak} peak" if peak else ""))
    values["train_bf16_samples_per_s"] = f"{loop_rate:.0f}"
    values["train_bf16_job_samples_per_s"] = f"{n / seconds:.0f}"
    values["train_bf16_tflops"] = f"{flops / 1e12:.2f}"
    values["train_bf16_mfu"] = f"{flops / (peak * 1e12):.4f}" if peak else f"unknown peak for {name!r}"


def infer(root: Path, clf_dir: str, clf_fp: str, tokenized, reps: int, report, values: dict) -> None:
    """hubflow's predict vs pipeline and a bare loop, all three on the same device in the same dtype."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from bench.common import describe, interleave, paired_ratio, timed
    from bench.inference import bare_batches, padded_tokens
    from hubflow.config import InferenceConfig
    from hubflow.devices import device_and_dtype
    from hubflow.stages.predict import predict
    from hubflow.tokenize import load_tokenized

    batch, max_length = 256, 128
    device, dtype = device_and_dtype()  # what predict picks: bf16 on a GPU
    test = load_tokenized(tokenized)["test"]
    texts, ids = list(test["text"]), list(test["input_ids"])
    cfg = InferenceConfig(batch_size=batch, max_tokens_per_batch=batch * max_length, shard_size=len(texts))
    batches = bare_batches(ids, AutoTokenizer.from_pretrained(clf_dir).pad_token_id, batch)

    def ours(rep) -> float:
        return timed(lambda: predict(clf_dir, clf_fp, tokenized, "test", cfg, str(root / "pred" / f"ours-{rep}")))

    def peer_pipeline(rep) -> float:
        def go():
            pipe = pipeline("text-classification", model=clf_dir, tokenizer=clf_dir, batch_size=batch, device=device,
                            dtype=dtype)
            return pipe(texts, truncation=True, max_length=max_length)
        return timed(go)

    def bare(rep) -> float:
        @torch.inference_mode()
        def go():
            model = AutoModelForSequenceClassification.from_pretrained(clf_dir, dtype=dtype).to(device).eval()
            probs = [model(input_ids=i.to(device), attention_mask=m.to(device)).logits.float().softmax(-1)
                     for i, m in batches]
            return torch.cat(probs).cpu().numpy()
        return timed(go)

    contenders = {"ours": ours, "pipeline": peer_pipeline, "bare": bare}
    for fn in contenders.values():  # CUDA context, kernels, allocator: one full pass each
        fn("warmup")
    times = interleave(contenders, reps)
    n = len(texts)
    in_order, by_length = padded_tokens([len(i) for i in ids], batch)
    report.figure(f"\n# inference on {device} ({str(dtype).split('.')[-1]}): {n} texts, batch {batch}, max_length "
                  f"{max_length}, {reps} repetitions (each side: model load + every batch)")
    report.figure(f"  (context) padded tokens: {in_order:,} in input order (the pipeline's) vs {by_length:,} sorted")
    for name in contenders:
        report.figure(f"  {name:<9}{describe(times[name], n, 'texts')}")
    values["inference_texts_per_s"] = f"{n / sorted(times['ours'])[len(times['ours']) // 2]:.0f}"
    values["inference_vs_pipeline"] = f"{paired_ratio(times['pipeline'], times['ours']):.2f}"
    values["inference_vs_bare"] = f"{paired_ratio(times['bare'], times['ours']):.2f}"


# bench/causal_lm.py's Llama at a width a GPU can fill (~160 M parameters; its default is 8.6 M, sized for 2 cores)
GPU_LM = dict(hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16,
              num_key_value_heads=4, max_position_embeddings=512)


def causal_lm(root: Path, quick: bool, report, values: dict) -> None:
    """LoRA fine-tuning tokens/s and batch-generation tokens/s, each the whole hubflow call."""
    from unittest import mock

    from bench import causal_lm as lm
    from bench.common import timed
    from hubflow.config import Precision
    from hubflow.kinds.causal_lm.settings import CausalLMInference, CausalLMTrain, Generation
    from hubflow.refs import PinnedRepo
    from hubflow.stages.predict import predict, read_predictions
    from hubflow.stages.train import train_model
    from hubflow.tokenize import load_tokenized

    sizes = (lm.QUICK if quick else lm.Sizes(gen_rows=1024, new_tokens=64, gen_batch=128, pipeline_batch=128,
                                              train_rows=4096, val_rows=64, train_batch=32, max_length=256))
    with mock.patch.dict(lm.MODEL, {} if quick else GPU_LM):
        s = lm.setup(root, sizes)
    pinned = PinnedRepo(repo_id="bench/llama", repo_type="model", revision="main", sha="0" * 40)
    cfg = CausalLMTrain(method="lora", epochs=1, batch_size=sizes.train_batch, eval_batch_size=64, learning_rate=2e-4,
                      warmup_ratio=0.0, weight_decay=0.0, precision=Precision.bf16, checkpoint_every_steps=1_000_000)
    train_model(s.sft, s.model_dir, pinned, cfg.model_copy(update={"max_steps": 2}), str(root / "lm-warm"))
    seconds = timed(lambda: train_model(s.sft, s.model_dir, pinned, cfg, str(root / "lm-train")))
    tokens = sum(len(x) for x in load_tokenized(s.sft)["train"]["input_ids"])
    longest = max(len(p) for p in load_tokenized(s.gen)["test"]["prompt_ids"]) + sizes.new_tokens
    gen = CausalLMInference(batch_size=sizes.gen_batch, max_tokens_per_batch=max(8192, sizes.gen_batch * longest),
                    shard_size=sizes.gen_rows, generation=Generation(max_new_tokens=sizes.new_tokens))
    predict(s.model_dir, s.fingerprint, s.gen_small, "test", gen, str(root / "lm-pred-warm"))
    holder: dict = {}
    gen_seconds = timed(lambda: holder.setdefault("p", predict(s.model_dir, s.fingerprint, s.gen, "test", gen,
                                                               str(root / "lm-pred"))))
    new = sum(read_predictions(holder["p"]).column("new_tokens").to_pylist())
    report.figure(f"\n# causal LM ({'8.6 M' if quick else '~160 M'} parameter Llama, random weights): LoRA r 16 on "
                  f"every linear layer, bf16, {s.sft.splits['train']} chat rows ({tokens:,} tokens) x 1 epoch, batch "
                  f"{sizes.train_batch}: whole job {seconds:.1f} s = {tokens / seconds:,.0f} tokens/s")
    report.figure(f"  generation: {s.gen.splits['test']} prompts, greedy, max_new_tokens {sizes.new_tokens}, batch "
                  f"{sizes.gen_batch}: {new:,} new tokens in {gen_seconds:.1f} s = {new / gen_seconds:,.0f} tokens/s "
                  "(whole predict call: load, generate, decode, shard write)")
    values["lora_tokens_per_s"] = f"{tokens / seconds:.0f}"
    values["generate_tokens_per_s"] = f"{new / gen_seconds:.0f}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python3 -m bench.gpu_check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--python", help="measure with this interpreter instead of a .venv-gpu made here")
    parser.add_argument("--no-install", action="store_true", help="install nothing: the interpreter is ready")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run of the figures")
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)  # step 4, inside the environment
    parser.add_argument("--allow-cpu", action="store_true", help=argparse.SUPPRESS)  # the smoke test of this file
    args = parser.parse_args(argv)
    if args.measure:
        measure(args.quick, args.allow_cpu)
    else:
        bootstrap(args)


if __name__ == "__main__":
    main()
