"""The one door to the Hugging Face Hub: every `HfApi` call hubflow makes is a verb of this module.

Pins and pulls (token, revision -> sha, model files, dataset at a sha), writes (create a repo, commit exactly these
files, tag), reads of what a repo holds (files, LFS digests, cards), the Space runtime (hardware, variables, secrets,
restarts, logs) and webhooks. Callers get plain values back, never a client.

The endpoint is the client's own (`HF_ENDPOINT`, default huggingface.co): hubflow never names a Hub URL, so the same
code runs against the public Hub, a private hub, or localhub in tests and the offline demo. The token is read at
call time (`hf_token`), never taken as a parameter.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Any

from huggingface_hub import HfApi, constants, snapshot_download
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)

from ..errors import PreflightError
from ..refs import PinnedRepo
from ..secrets import secret

SECRET_BLOCK_ENV = "HUBFLOW_HF_TOKEN_BLOCK"  # name of a Prefect Secret block holding the token
WEIGHT_FILES = ("*.safetensors", "*.safetensors.index.json")
PICKLE_WEIGHT_FILES = ("pytorch_model*.bin", "pytorch_model.bin.index.json")
# Everything a model needs besides its weights: config, tokenizer, generation and label files. No *.py: hubflow never
# runs a repo's own modelling code (no trust_remote_code), so it does not download it either.
MODEL_SIDE_FILES = ("*.json", "*.txt", "*.model", "*.tiktoken", "*.jinja", "merges.txt", "README.md",
                    "LICENSE*", "NOTICE*", "*TERMS*")  # licence terms travel with a fine-tune of the model


def hf_token() -> str | None:
    """The Hub token at call time: `HF_TOKEN`, else the Prefect Secret block named by $HUBFLOW_HF_TOKEN_BLOCK.

    Never a parameter (it would land in the run's parameters, logs and the UI)."""
    return secret(("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"), SECRET_BLOCK_ENV)


def _api() -> HfApi:
    return HfApi(token=hf_token() or False)


def endpoint() -> str:
    return constants.ENDPOINT


def check_token() -> str | None:
    """Fail fast on a token the Hub rejects (a 401 after training would lose the run). Returns the user name."""
    token = hf_token()
    if not token:
        return None
    try:
        return _api().whoami()["name"]
    except HfHubHTTPError as e:
        raise PreflightError(f"the Hub token (HF_TOKEN) is not valid for {endpoint()}: {_status(e)}") from None


def pin(repo_id: str, repo_type: str, revision: str, field: str) -> PinnedRepo:
    """Resolve `repo@revision` to the commit sha it points at now; every later stage uses the sha."""
    try:
        info = _api().repo_info(repo_id, repo_type=repo_type, revision=revision)
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
    files = _api().list_repo_files(model.repo_id, revision=model.sha)
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
            return (f"data.source={data.repo_id!r}@{data.sha[:10]}: split {split!r} is empty or unreadable "
                    f"({e.__cause__ or e})")
        if rows == 0:
            return f"data.source={data.repo_id!r}@{data.sha[:10]}: split {split!r} is empty"
    return (f"data.source={data.repo_id!r}@{data.sha[:10]}: datasets could not build the splits "
            f"({error.__cause__ or error})")


def _status(e: HfHubHTTPError) -> str:
    code = e.response.status_code if e.response is not None else "?"
    return f"HTTP {code}"


def check_can_write(repo_ids: dict[str, str]) -> None:
    """Fail now, naming the field, if the token could not write one of the repos a release will write
    ({field: repo id}): no token, a read-only token, or a namespace that is neither the user nor an organization in
    which the user may write. On the Hub, fine-grained tokens are checked by their own scopes at write time."""
    token = hf_token()
    if not token:
        raise PreflightError("publish.enabled: publishing needs a Hub token; set HF_TOKEN or $HUBFLOW_HF_TOKEN_BLOCK")
    try:
        me = _api().whoami()
    except HfHubHTTPError as e:
        raise PreflightError(f"the Hub token (HF_TOKEN) is not valid for {endpoint()}: {_status(e)}") from None
    role = ((me.get("auth") or {}).get("accessToken") or {}).get("role")
    writable = {me["name"]} | {o["name"] for o in me.get("orgs") or []
                               if o.get("roleInOrg") in (None, "write", "admin", "contributor")}
    for field, repo_id in repo_ids.items():
        namespace = repo_id.split("/")[0]
        if role == "read":
            raise PreflightError(f"{field}={repo_id!r}: the token is read-only; publishing needs a write token")
        if namespace not in writable:
            raise PreflightError(f"{field}={repo_id!r}: the token's user {me['name']!r} cannot write the namespace "
                                 f"{namespace!r} (writable: {', '.join(sorted(writable))})")


# ---- what a repo holds ------------------------------------------------------------------------------------------
def head(repo_id: str, repo_type: str = "model") -> str | None:
    """The sha of the repo's main branch now; None when there is no such repo (or the token cannot see it)."""
    try:
        return _api().repo_info(repo_id, repo_type=repo_type).sha
    except RepositoryNotFoundError:
        return None


def is_private(repo_id: str, repo_type: str = "model") -> bool:
    """A property of the repo, not of a revision."""
    return bool(_api().repo_info(repo_id, repo_type=repo_type).private)


def list_files(repo_id: str, repo_type: str, revision: str) -> list[str]:
    return _api().list_repo_files(repo_id, repo_type=repo_type, revision=revision)


def lfs_digests(repo_id: str, repo_type: str, revision: str, paths: list[str] | None = None) -> dict[str, str | None]:
    """{path: sha256 of its LFS object, or None for a regular file}: of `paths`, or of every file at `revision`."""
    api = _api()
    if paths is None:
        entries = [f for f in api.list_repo_tree(repo_id, repo_type=repo_type, revision=revision, recursive=True)
                   if hasattr(f, "lfs")]
    else:
        entries = api.get_paths_info(repo_id, paths, repo_type=repo_type, revision=revision) if paths else []
    return {f.path: (f.lfs.sha256 if getattr(f, "lfs", None) else None) for f in entries}


def download(repo_id: str, filename: str, repo_type: str, revision: str) -> Path | None:
    """One file at `revision` into the HF cache; None when the repo has no such file."""
    try:
        return Path(_api().hf_hub_download(repo_id, filename, repo_type=repo_type, revision=revision))
    except EntryNotFoundError:
        return None


def card_data(repo_id: str, revision: str, repo_type: str = "model") -> dict[str, Any]:
    """The front matter of the repo's README at `revision` ({} when there is none)."""
    info = _api().repo_info(repo_id, repo_type=repo_type, revision=revision)
    card = getattr(info, "card_data", None) or getattr(info, "cardData", None)
    return card.to_dict() if hasattr(card, "to_dict") else dict(card or {})


# ---- writes -----------------------------------------------------------------------------------------------------
def ensure_repo(repo_id: str, repo_type: str, private: bool, space_sdk: str | None = None) -> str:
    """Create the repo unless it exists; -> its URL."""
    return str(_api().create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, space_sdk=space_sdk))


def commit_exactly(repo_id: str, repo_type: str, files: dict[str, bytes | Path], message: str,
                   description: str | None = None, parent: str | None = None, prefix: str = "") -> str:
    """One commit after which the repo holds exactly `files` (plus .gitattributes) under `prefix`; -> the head sha.

    LFS objects are uploaded before the commit, so a commit cut short leaves the repo at its previous head. With
    `parent`, the Hub refuses (412) when someone else moved the branch since it was read, rather than mixing. When
    every file is unchanged the client makes no commit and the head comes back."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api = _api()
    keep = set(files) | {".gitattributes"}
    current = api.list_repo_files(repo_id, repo_type=repo_type, revision=parent)
    stale = sorted(f for f in current if f not in keep and f.startswith(prefix))
    ops = [CommitOperationAdd(path, data if isinstance(data, bytes) else str(data)) for path, data in files.items()]
    ops += [CommitOperationDelete(path) for path in stale]
    return api.create_commit(repo_id, ops, repo_type=repo_type, commit_message=message,
                             commit_description=description, parent_commit=parent).oid


def open_pull_request(repo_id: str, repo_type: str, files: dict[str, bytes | Path], title: str,
                      description: str | None = None, prefix: str = "") -> tuple[int, str, str]:
    """A pull request against main after which the repo would hold exactly `files` (under `prefix`), unless an open
    one with this title exists (a rerun): -> (number, URL, head sha)."""
    from huggingface_hub import CommitOperationAdd, CommitOperationDelete

    api = _api()
    for d in api.get_repo_discussions(repo_id, repo_type=repo_type, discussion_type="pull_request",
                                      discussion_status="open"):
        if d.title == title:
            head = api.repo_info(repo_id, repo_type=repo_type, revision=f"refs/pr/{d.num}").sha
            return d.num, d.url, head
    keep = set(files) | {".gitattributes"}
    stale = sorted(f for f in api.list_repo_files(repo_id, repo_type=repo_type)
                   if f not in keep and f.startswith(prefix))
    ops = [CommitOperationAdd(path, data if isinstance(data, bytes) else str(data)) for path, data in files.items()]
    ops += [CommitOperationDelete(path) for path in stale]
    info = api.create_commit(repo_id, ops, repo_type=repo_type, commit_message=title, commit_description=description,
                             create_pr=True)
    return int(info.pr_num), str(info.pr_url), info.oid


def tags(repo_id: str, repo_type: str) -> dict[str, str]:
    """{tag: commit sha}."""
    return {t.name: t.target_commit for t in _api().list_repo_refs(repo_id, repo_type=repo_type).tags}


def tag(repo_id: str, repo_type: str, name: str, revision: str, message: str | None = None, move: bool = False) -> None:
    """Put tag `name` on `revision`; an existing tag elsewhere is moved when `move`, else left as it is."""
    api = _api()
    current = tags(repo_id, repo_type).get(name)
    if current == revision or (current is not None and not move):
        return
    if current is not None:
        api.delete_tag(repo_id, tag=name, repo_type=repo_type)
    api.create_tag(repo_id, tag=name, revision=revision, repo_type=repo_type, tag_message=message, exist_ok=True)


# ---- Spaces -----------------------------------------------------------------------------------------------------
def space_runtime(space_id: str) -> dict[str, Any]:
    """{stage, sha, error, hardware, sleep_time} of the Space as the Hub reports it now."""
    runtime = _api().get_space_runtime(space_id)
    return {"stage": runtime.stage, "sha": runtime.raw.get("sha"), "error": runtime.raw.get("errorMessage"),
            "hardware": runtime.requested_hardware, "sleep_time": runtime.sleep_time}


def space_host(space_id: str) -> str | None:
    return _api().space_info(space_id).host


def set_space_hardware(space_id: str, hardware: str | None, sleep_time: int | None) -> None:
    """Request hardware and sleep time, each only when it differs (a hardware change restarts the Space)."""
    api, runtime = _api(), space_runtime(space_id)
    if hardware and hardware != runtime["hardware"]:
        api.request_space_hardware(space_id, hardware, sleep_time=sleep_time)
    elif sleep_time and sleep_time != runtime["sleep_time"]:
        api.set_space_sleep_time(space_id, sleep_time)


def set_space_variables(space_id: str, variables: dict[str, str]) -> None:
    # Only the changed ones: every variable write restarts the Space.
    api = _api()
    current = {k: v.value for k, v in api.get_space_variables(space_id).items()}
    for key, value in variables.items():
        if current.get(key) != value:
            api.add_space_variable(space_id, key, value)


def set_space_secret(space_id: str, key: str, value: str, description: str) -> None:
    """Through the secrets API only: a secret is never written into a file or a variable."""
    _api().add_space_secret(space_id, key, value, description=description)


def space_token_minted(space_id: str, namespace: str) -> bool:
    """Does the hub give this Space a read-only token of its own for `namespace`'s repos (localhub does)?"""
    raw = _api().get_space_runtime(space_id).raw or {}
    minted = ((raw.get("localhub") or {}).get("spaceToken") or {}).get("namespace") or ""
    return minted.lower() == namespace.lower()


def space_secret_names(space_id: str) -> set[str]:
    return set(_api().get_space_secrets(space_id))


def delete_space_secret(space_id: str, key: str) -> None:
    _api().delete_space_secret(space_id, key)


def restart_space(space_id: str) -> None:
    _api().restart_space(space_id)


def space_logs(space_id: str, build: bool, lines: int) -> list[str]:
    """The last `lines` lines of the Space's build or run log; one explanatory line when the Hub has none."""
    try:
        return "".join(_api().fetch_space_logs(space_id, build=build)).splitlines()[-lines:]
    except HfHubHTTPError as err:
        return [f"(logs unavailable: {err})"]


# ---- webhooks ---------------------------------------------------------------------------------------------------
def register_webhook(url: str, watched: list[tuple[str, str]], secret_value: str | None) -> dict[str, Any]:
    """Create the webhook for `url` watching (type, name) items, or add them to the one already there (idempotent:
    keeps what it watched, refreshes the secret, re-enables it)."""
    from huggingface_hub import WebhookWatchedItem

    api = _api()
    existing = next((h for h in api.list_webhooks() if h.url == url), None)
    if existing is None:
        hook = api.create_webhook(url=url, watched=[WebhookWatchedItem(type=t, name=n) for t, n in watched],
                                  domains=["repo"], secret=secret_value)
    else:
        items = [(w.type, w.name) for w in existing.watched]
        items += [i for i in watched if i not in items]
        hook = api.update_webhook(existing.id, url=url, watched=[WebhookWatchedItem(type=t, name=n) for t, n in items],
                                  domains=["repo"], secret=secret_value)
        if hook.disabled:
            hook = api.enable_webhook(hook.id)
    return {"id": hook.id, "url": hook.url, "watched": [f"{w.type}:{w.name}" for w in hook.watched],
            "created": existing is None}
