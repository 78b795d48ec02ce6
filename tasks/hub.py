"""The one door to the Hugging Face Hub: token, revision pinning, preflight checks, model and dataset pulls.

The endpoint is the client's own (`HF_ENDPOINT`, default huggingface.co): hubflow never names a Hub URL, so the same
code runs against the public Hub, a private hub, or localhub in tests and the offline demo.
"""

from __future__ import annotations

import os
from functools import lru_cache

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError, HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError,
)

from .refs import PinnedRepo

SECRET_BLOCK_ENV = "HUBFLOW_HF_TOKEN_BLOCK"  # name of a Prefect Secret block holding the token
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")
PICKLE_WEIGHT_FILES = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
# Everything a model needs besides its weights: config, tokenizer, generation and label files. No *.py: hubflow never
# runs a repo's own modelling code (no trust_remote_code), so it does not download it either.
MODEL_SIDE_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "merges.txt", "README.md")


class PreflightError(ValueError):
    """Bad input found before any expensive stage; the message names the field, repo or column."""


def hf_token() -> str | None:
    """The Hub token at call time: `HF_TOKEN`, else the Prefect Secret block named by $HUBFLOW_HF_TOKEN_BLOCK.

    Never a parameter (it would land in the run's parameters, logs and the UI)."""
    token = os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")
    if token:
        return token
    block = os.environ.get(SECRET_BLOCK_ENV)
    if block:
        from prefect.blocks.system import Secret

        return Secret.load(block).get()
    return None


def api() -> HfApi:
    return HfApi(token=hf_token() or False)


def endpoint() -> str:
    return constants.ENDPOINT


def check_token() -> str | None:
    """Fail fast on a token the Hub rejects (a 401 after training would lose the run). Returns the user name."""
    token = hf_token()
    if not token:
        return None
    try:
        return api().whoami()["name"]
    except HfHubHTTPError as e:
        raise PreflightError(f"the Hub token (HF_TOKEN) is not valid for {endpoint()}: {_status(e)}") from None


def pin(repo_id: str, repo_type: str, revision: str, field: str) -> PinnedRepo:
    """Resolve `repo@revision` to the commit sha it points at now; every later stage uses the sha."""
    try:
        info = api().repo_info(repo_id, repo_type=repo_type, revision=revision)
    except RevisionNotFoundError:
        raise PreflightError(f"{field}.revision={revision!r} does not exist in {repo_type} repo {repo_id!r}") from None
    except GatedRepoError:
        raise PreflightError(f"{field}.repo_id={repo_id!r} is gated: accept its terms on the Hub first") from None
    except RepositoryNotFoundError:
        raise PreflightError(
            f"{field}.repo_id={repo_id!r}: no such {repo_type} repo on {endpoint()} "
            "(or it is private and the token cannot read it)"
        ) from None
    return PinnedRepo(repo_id=repo_id, repo_type=repo_type, revision=revision, sha=info.sha)


def check_model_files(model: PinnedRepo, allow_pickle: bool) -> None:
    """The model must have config.json and safetensors weights (pickle only when explicitly allowed)."""
    files = api().list_repo_files(model.repo_id, revision=model.sha)
    if "config.json" not in files:
        raise PreflightError(f"model.repo_id={model.repo_id!r}@{model.sha[:10]} has no config.json")
    if any(f.endswith(".safetensors") for f in files):
        return
    if allow_pickle and any(f.startswith("pytorch_model") and f.endswith(".bin") for f in files):
        return
    hint = "; set model.allow_pickle_weights=true to accept pytorch_model.bin" if not allow_pickle else ""
    raise PreflightError(
        f"model.repo_id={model.repo_id!r}@{model.sha[:10]} has no safetensors weights "
        f"(weights found: {[f for f in files if f.endswith(('.bin', '.h5', '.msgpack', '.onnx', '.pt'))]}){hint}"
    )


@lru_cache(maxsize=16)
def model_dir(model: PinnedRepo, allow_pickle: bool = False) -> str:
    """Local folder of the model at its pinned sha. A warm cache answers with zero HTTP requests."""
    patterns = list(WEIGHT_FILES + MODEL_SIDE_FILES) + (list(PICKLE_WEIGHT_FILES) if allow_pickle else [])
    return snapshot_download(model.repo_id, revision=model.sha, allow_patterns=patterns, token=hf_token() or False)


def load_dataset_at(data: PinnedRepo, config_name: str | None):
    """The Hub dataset at its pinned sha, as a DatasetDict."""
    import datasets

    # At a pinned sha datasets resolves files from the tree; the parquet-export probe would leave the machine.
    datasets.config.USE_PARQUET_EXPORT = False
    token = hf_token() or False
    try:
        return datasets.load_dataset(data.repo_id, config_name, revision=data.sha, token=token)
    except datasets.exceptions.DatasetGenerationError as e:
        raise PreflightError(_unreadable_split(data, config_name, token, e)) from e


def _unreadable_split(data: PinnedRepo, config_name: str | None, token, error: Exception) -> str:
    """Name the split that broke `load_dataset` (it builds every split at once and only says that one failed)."""
    import datasets

    builder = datasets.load_dataset_builder(data.repo_id, config_name, revision=data.sha, token=token)
    for split, files in (builder.config.data_files or {}).items():
        try:
            rows = datasets.load_dataset(builder.name, data_files={split: files}, split=split).num_rows
        except Exception as e:  # noqa: BLE001 - any reader error here is the answer we are looking for
            return f"data.source={data.repo_id!r}@{data.sha[:10]}: split {split!r} is empty or unreadable ({e.__cause__ or e})"
        if rows == 0:
            return f"data.source={data.repo_id!r}@{data.sha[:10]}: split {split!r} is empty"
    return f"data.source={data.repo_id!r}@{data.sha[:10]}: datasets could not build the splits ({error.__cause__ or error})"


def _status(e: HfHubHTTPError) -> str:
    code = e.response.status_code if e.response is not None else "?"
    return f"HTTP {code}"
