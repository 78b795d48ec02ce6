"""`.gitignore` rules, for preupload's `shouldIgnore` (the Hub skips files its repo's .gitignore excludes).

The subset of git's rules a repo's .gitignore uses: `#` comments, `!` negation (last match wins), a trailing `/` for
folders only, a `/` at the start or in the middle anchors the pattern at the repo root (else it matches a name at
any depth), `*` and `?` stay within one path segment, `**` spans segments. A file inside an ignored folder is
ignored, and, as in git, a negation cannot bring it back.
"""

from __future__ import annotations

import re
from typing import Callable


def _regex(pattern: str) -> re.Pattern:
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 2:]:
            end = pattern.index("]", i + 2)
            body = pattern[i + 1:end]
            out.append("[" + ("^" + body[1:] if body.startswith("!") else body).replace("\\", "\\\\") + "]")
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out))


def matcher(text: str) -> Callable[[str], bool]:
    """A .gitignore's text -> `ignored(path)` for '/'-separated repo paths."""
    rules = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        line = line[1:] if negate else line.removeprefix("\\")
        folder_only = line.endswith("/")
        line = line.rstrip("/")
        anchored = "/" in line
        if line:
            rules.append((_regex(line.lstrip("/")), negate, folder_only, anchored))

    def ignored(path: str) -> bool:
        parts = path.strip("/").split("/")
        for depth in range(1, len(parts) + 1):
            sub, is_folder, hit = "/".join(parts[:depth]), depth < len(parts), False
            for rx, negate, folder_only, anchored in rules:
                if (is_folder or not folder_only) and rx.fullmatch(sub if anchored else parts[depth - 1]):
                    hit = not negate
            if hit:
                return True  # the file itself, or a folder above it: nothing inside an ignored folder comes back
        return False

    return ignored
