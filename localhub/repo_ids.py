"""The one rule for new repo ids (create, move, duplicate): huggingface_hub's own validator.

The Hub refuses `a..b`, `a--b`, `x-`, `x.` and `*.git` at creation; huggingface_hub checks the same rules client-side
(`validate_repo_id`, which mirrors the Hub's `Names.ts`). Reusing it here, rather than a copy of its regex, keeps
localhub exactly in step with the client it serves: an id the client would refuse to name is never created, so
every repo stays reachable through `HfApi`. huggingface_hub is in localhub's environment anyway (its conformance run
and the clients it serves); the import is light (the package loads its submodules lazily).
"""

from __future__ import annotations

from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .storage import HubError


def check_new_repo_id(repo_id: str) -> str:
    """`namespace/name` as huggingface_hub's validator takes it; otherwise a 400 whose message names the rule."""
    if repo_id.count("/") != 1:
        raise HubError(400, None, f"Invalid repo id {repo_id[:200]!r}: it must be 'namespace/repo_name'")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise HubError(400, None, f"Invalid repo id: {err}") from None
    return repo_id
