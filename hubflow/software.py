"""The versions of the libraries that made a run's outputs.

Batch inference records them in its manifest; a Space is pinned to them at deploy time, so the live app runs the
code that made the predictions it is smoke-tested against, whatever release is newest the day someone installs.
"""

from __future__ import annotations

import importlib.metadata

# What a Space's app may need (each kind's space_app/requirements.txt names its own), and gradio for sdk_version.
RECORDED = ("torch", "transformers", "peft", "accelerate", "sentence-transformers", "datasets", "huggingface_hub",
            "gradio")


def installed(names: tuple[str, ...] = RECORDED) -> dict[str, str]:
    """{package: version} of those installed here, without a local build tag (torch's `+cpu`)."""
    versions = {}
    for name in names:
        try:
            versions[name] = importlib.metadata.version(name).split("+")[0]
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


class UnpinnedRequirement(ValueError):
    """The Space needs a package whose version the run did not record."""


def pin(requirements: str, versions: dict[str, str]) -> str:
    """A requirements template (package names, comments) -> the same lines pinned to `versions` (`name==x.y.z`)."""
    out = []
    for line in requirements.splitlines():
        name = line.split("#")[0].strip()
        if not name:
            out.append(line)
            continue
        if name not in versions:
            raise UnpinnedRequirement(f"the Space needs {name!r} but the run recorded no version of it "
                                      f"(recorded: {', '.join(sorted(versions)) or 'none'})")
        out.append(f"{name}=={versions[name]}")
    return "\n".join(out) + "\n"
