"""Repo cards: `/api/validate-yaml` (the Hub's check of a README's front matter) and the README of a new Space.

validate-yaml answers `{"errors": [...], "warnings": [...]}`, 400 when there are errors (huggingface_hub then raises
"Invalid metadata in README.md"), or, when the client asks for `Accept: text/plain` (`RepoCard.validate`), the same
as text lines `- Error: ...`. What is checked is a subset of the Hub's schema, the part a client can get wrong: the
front matter is a mapping, `license` is one of the Hub's license ids, `model-index` is a list of
`{name, results: [...]}`, and the list fields hold strings. No front matter at all is a warning, as on the Hub.
"""

from __future__ import annotations

import yaml
from starlette.responses import JSONResponse, PlainTextResponse, Response

from .http import Ctx

LICENSES = (
    "apache-2.0 mit openrail bigscience-openrail-m creativeml-openrail-m bigscience-bloom-rail-1.0 bigcode-openrail-m "
    "afl-3.0 artistic-2.0 bsl-1.0 bsd bsd-2-clause bsd-3-clause bsd-3-clause-clear c-uda cc cc0-1.0 cc-by-2.0 "
    "cc-by-2.5 cc-by-3.0 cc-by-4.0 cc-by-sa-3.0 cc-by-sa-4.0 cc-by-nc-2.0 cc-by-nc-3.0 cc-by-nc-4.0 cc-by-nd-4.0 "
    "cc-by-nc-nd-3.0 cc-by-nc-nd-4.0 cc-by-nc-sa-2.0 cc-by-nc-sa-3.0 cc-by-nc-sa-4.0 cdla-sharing-1.0 "
    "cdla-permissive-1.0 cdla-permissive-2.0 wtfpl ecl-2.0 epl-1.0 epl-2.0 etalab-2.0 eupl-1.1 eupl-1.2 agpl-3.0 gfdl "
    "gpl gpl-2.0 gpl-3.0 lgpl lgpl-2.1 lgpl-3.0 isc h-research intel-research lppl-1.3c ms-pl apple-ascl apple-amlr "
    "mpl-2.0 odc-by odbl openrail++ osl-3.0 postgresql ofl-1.1 ncsa unlicense zlib pddl lgpl-lr deepfloyd-if-license "
    "fair-noncommercial-research-license llama2 llama3 llama3.1 llama3.2 llama3.3 llama4 gemma unknown other"
).split()
STRING_LISTS = ("tags", "datasets", "metrics", "language", "base_model")
NO_METADATA = ("Empty or missing yaml metadata in repo card "
               "(https://huggingface.co/docs/hub/model-cards#model-card-metadata)")


def front_matter(content: str) -> str | None:
    """The YAML between the leading `---` lines, or None when the card has none."""
    text = content.lstrip("\ufeff \t\r\n").replace("\r\n", "\n")  # leading blank lines are allowed
    if not text.startswith("---\n"):
        return None
    end = text.find("\n---", 4)
    return None if end < 0 else text[4:end]


def check_metadata(content: str) -> tuple[list[str], list[str]]:
    """(errors, warnings) for a card's text."""
    raw = front_matter(content)
    if raw is None or not raw.strip():
        return [], [NO_METADATA]
    try:
        data = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        return [f"Invalid YAML in README.md front matter: {e}"], []
    if not isinstance(data, dict):
        return ['"value" must be of type object'], []
    errors = []
    licenses = data.get("license")
    for lic in licenses if isinstance(licenses, list) else [] if licenses is None else [licenses]:
        if lic not in LICENSES:
            errors.append(f'"license" must be one of [{", ".join(LICENSES)}]')
            break
    index = data.get("model-index")
    if index is not None:
        if not isinstance(index, list):
            errors.append('"model-index" must be an array')
        elif not all(isinstance(m, dict) and isinstance(m.get("name"), str) and isinstance(m.get("results"), list)
                     for m in index):
            errors.append('"model-index" items must be objects with a "name" and a "results" array')
    for key in STRING_LISTS:
        value = data.get(key)
        if value is not None and not isinstance(value, str) and not (
                isinstance(value, list) and all(isinstance(v, str) for v in value)):
            errors.append(f'"{key}" must be a string or an array of strings')
    return errors, []


async def validate_yaml(ctx: Ctx) -> Response:
    body = await ctx.json()
    errors, warnings = check_metadata(str(body.get("content") or ""))
    status = 400 if errors else 200
    if "text/plain" in ctx.request.headers.get("accept", ""):
        lines = [f"- Error: {e}" for e in errors] + [f"- Warning: {w}" for w in warnings]
        return PlainTextResponse("\n".join(lines), status_code=status)
    return JSONResponse({"errors": [{"message": e} for e in errors], "warnings": [{"message": w} for w in warnings]},
                        status_code=status)


def space_readme(name: str, sdk: str) -> bytes:
    """The README the Hub puts in a new Space: its title and sdk in the front matter, which the Space runs by."""
    return (f"---\ntitle: {name}\nemoji: 🚀\ncolorFrom: blue\ncolorTo: indigo\nsdk: {sdk}\npinned: false\n---\n\n"
            "Check out the configuration reference at https://huggingface.co/docs/hub/spaces-config-reference\n"
            ).encode()
