"""Discussions and pull requests, as on the Hub: numbered per repo, events (comments, status and title changes,
commits), a PR's changes on its own ref `refs/pr/N`, merged by a writer as a new commit on the target branch.

Who may do what (the Hub's rules): anyone who can read a repo, signed in with a write token (a read token changes
nothing), may open a discussion or a PR (also with `create_commit(create_pr=True)`, on a repo they cannot write) and
comment; the author or a writer may rename, close or reopen; commits to `refs/pr/N` come from its author or a
writer; only a writer merges. A PR opened with `create_pull_request` starts as a `draft` (the Hub's rule for
programmatic PRs), one opened by a commit as `open`; a draft is marked `open` before it can be merged.

Routes, under /api/{models|datasets|spaces}/{ns}/{name}/discussions:
    GET  ?type=&status=&author=&p=    {"discussions": [...], "count", "start"}, newest first, 50 a page
    POST {title, description, pullRequest}                   -> the new discussion (the client reads `num`)
    GET  /{num}[?diff=1]                                     details: events, changes.base, mergeCommitId, diff
    POST /{num}/comment {comment}  /title {title}  /status {status, comment?}  /merge {comment?}
    POST /{num}/comment/{id}/edit {content}  /comment/{id}/hide
Merging is a three-way merge by path (base: the target's head when the PR was opened): a path both sides changed
differently is a conflict (409, listed in `filesWithConflicts`). Webhooks hear `discussion` and
`discussion.comment` events (localhub/webhooks.py); the merge commit is a commit like any other (webhooks, Spaces).
"""

from __future__ import annotations

import difflib
import hashlib
import html
import json
import secrets
import time

from starlette.responses import JSONResponse, Response

from .http import REPO_PREFIX, TYPE_OF_PLURAL, Ctx, HubError, Router, can_write, iso, repo_for_read
from .storage import FileEntry, Repo

SCHEMA = """
CREATE TABLE IF NOT EXISTS discussions (
  rid INTEGER NOT NULL, num INTEGER NOT NULL, title TEXT NOT NULL, author TEXT NOT NULL, is_pr INTEGER NOT NULL,
  status TEXT NOT NULL, created_at REAL NOT NULL, target TEXT, base TEXT, merge_commit TEXT, PRIMARY KEY(rid, num));
CREATE TABLE IF NOT EXISTS discussion_events (
  id TEXT PRIMARY KEY, rid INTEGER NOT NULL, num INTEGER NOT NULL, type TEXT NOT NULL, author TEXT NOT NULL,
  created_at REAL NOT NULL, data JSON NOT NULL);
CREATE INDEX IF NOT EXISTS discussion_events_by_num ON discussion_events(rid, num, created_at);
"""
PAGE = 50
STATUS_FILTER = {"open": ("open", "draft"), "closed": ("closed", "merged")}
T = "{t:models|datasets|spaces}"
MAX_DIFF_BYTES = 1 << 20


class Discussions:
    """The discussions store (two tables on the hub's SQLite connection) and its routes."""

    def __init__(self, hub):
        self.hub, self.storage = hub, hub.storage
        with self.storage.lock:
            self.storage.db.executescript(SCHEMA)
        base = f"/api/{T}/{{ns}}/{{name}}/discussions"
        self.router = Router()
        self.router.add("GET,POST", base)(self._collection)
        self.router.add("GET", f"{base}/{{num}}")(self._details)
        self.router.add("POST", f"{base}/{{num}}/{{action:comment|title|status|merge}}")(self._change)
        self.router.add("POST", f"{base}/{{num}}/comment/{{eid}}/{{action:edit|hide}}")(self._comment_change)

    # ---- store ---------------------------------------------------------------------------------------------------
    def get(self, repo: Repo, num: int | str) -> dict:
        try:
            rows = self.storage._rows("SELECT * FROM discussions WHERE rid=? AND num=?", (repo.rid, int(num)))
        except ValueError:
            rows = []
        if not rows:
            raise HubError(404, None, f"Discussion #{num} not found in {repo.id}")
        return dict(rows[0])

    def open(self, repo: Repo, author: str, title: str, description: str, is_pr: bool, target: str = "main",
             status: str | None = None) -> dict:
        """A new discussion (or PR: `refs/pr/N` starts at the target branch's head) with its first comment."""
        title = (title or "").strip()[:200] or "Untitled"
        with self.storage.lock:  # one transaction: a PR never exists without its ref and first comment
            base = self.storage.resolve(repo, target)[0] if is_pr else None
            num = self.storage._rows("SELECT COALESCE(MAX(num), 0) + 1 FROM discussions WHERE rid=?", (repo.rid,))[0][0]
            status = status or ("draft" if is_pr else "open")
            db = self.storage.db
            db.execute("BEGIN IMMEDIATE")
            try:
                db.execute("INSERT INTO discussions(rid, num, title, author, is_pr, status, created_at, target, base) "
                           "VALUES (?,?,?,?,?,?,?,?,?)", (repo.rid, num, title, author, int(is_pr), status,
                                                          time.time(), target if is_pr else None, base))
                if is_pr:
                    db.execute("INSERT OR REPLACE INTO refs(rid, kind, name, oid) VALUES (?, 'pr', ?, ?)",
                               (repo.rid, str(num), base))
                self.add_event(repo, num, "comment", author, _comment_data(description or "", author))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
        return self.get(repo, num)

    def drop(self, repo: Repo, num: int) -> None:
        """Undo `open` (a create_pr commit that then failed leaves no empty PR behind)."""
        with self.storage.lock:
            for table in ("discussions", "discussion_events"):
                self.storage.db.execute(f"DELETE FROM {table} WHERE rid=? AND num=?", (repo.rid, num))
            self.storage.db.execute("DELETE FROM refs WHERE rid=? AND kind='pr' AND name=?", (repo.rid, str(num)))

    def forget(self, repo: Repo) -> None:
        with self.storage.lock:
            for table in ("discussions", "discussion_events"):
                self.storage.db.execute(f"DELETE FROM {table} WHERE rid=?", (repo.rid,))

    def add_event(self, repo: Repo, num: int, type_: str, author: str, data: dict) -> dict:
        event = {"id": secrets.token_hex(12), "type": type_, "author": author, "created_at": time.time(), "data": data}
        with self.storage.lock:
            self.storage.db.execute(
                "INSERT INTO discussion_events(id, rid, num, type, author, created_at, data) VALUES (?,?,?,?,?,?,?)",
                (event["id"], repo.rid, num, type_, author, event["created_at"], json.dumps(data)))
        return self._event_json(event)

    def events(self, repo: Repo, num: int) -> list[dict]:
        rows = self.storage._rows("SELECT * FROM discussion_events WHERE rid=? AND num=? ORDER BY created_at, rowid",
                                  (repo.rid, num))
        return [{**dict(r), "data": json.loads(r["data"])} for r in rows]

    def _set(self, repo: Repo, num: int, **fields) -> None:
        with self.storage.lock:
            for key, value in fields.items():
                self.storage.db.execute(f"UPDATE discussions SET {key}=? WHERE rid=? AND num=?", (value, repo.rid, num))

    # ---- JSON, as the Hub shapes it --------------------------------------------------------------------------------
    def _user(self, name: str) -> dict:
        return {"name": name, "fullname": self.hub.teams.fullname(name), "type": "user", "avatarUrl": "",
                "isPro": False, "isHf": False, "isMod": False}

    def _event_json(self, e: dict) -> dict:
        data = e["data"]
        if e["type"] == "comment":
            latest = {**data["history"][0], "author": self._user(data["history"][0]["author"])}
            data = {"edited": len(data["history"]) > 1, "hidden": data["hidden"], "latest": latest,
                    "numEdits": len(data["history"]) - 1, "editors": sorted({h["author"] for h in data["history"]}),
                    "reactions": [], "isReport": False, "history": data["history"]}
        return {"id": e["id"], "type": e["type"], "createdAt": iso(e["created_at"]), "author": self._user(e["author"]),
                "data": data}

    def summary(self, repo: Repo, d: dict) -> dict:
        comments = self.storage._rows("SELECT COUNT(*) FROM discussion_events WHERE rid=? AND num=? AND type='comment'",
                                      (repo.rid, d["num"]))[0][0]
        return {"num": d["num"], "title": d["title"], "status": d["status"], "createdAt": iso(d["created_at"]),
                "isPullRequest": bool(d["is_pr"]), "author": self._user(d["author"]), "pinned": False,
                "repo": {"name": repo.id, "type": repo.type}, "numComments": comments, "topReactions": []}

    def url(self, repo: Repo, num: int, base_url: str) -> str:
        return f"{base_url}/{REPO_PREFIX[repo.type]}{repo.id}/discussions/{num}"

    def webhook_json(self, repo: Repo, d: dict, base_url: str) -> dict:
        """The `discussion` object of a webhook payload."""
        out = {"id": _oid(repo, d["num"]), "num": d["num"], "title": d["title"], "status": d["status"],
               "isPullRequest": bool(d["is_pr"]), "author": {"id": d["author"]}, "pinned": False,
               "url": {"web": self.url(repo, d["num"], base_url),
                       "api": f"{base_url}/api/{repo.type}s/{repo.id}/discussions/{d['num']}"}}
        if d["is_pr"]:
            out["changes"] = {"base": f"refs/heads/{d['target']}", "mergeCommitId": d["merge_commit"]}
        return out

    # ---- merge -----------------------------------------------------------------------------------------------------
    def _three_way(self, repo: Repo, d: dict) -> tuple[str, list[FileEntry], list[str], list[str]]:
        """(target head, files to add, paths to delete, conflicting paths) for merging PR `d` into its target."""
        head = self.storage.resolve(repo, d["target"])[0]
        ours, base = self.storage.tree(head), self.storage.tree(d["base"])
        theirs = self.storage.tree(self.storage.resolve(repo, f"refs/pr/{d['num']}")[0])
        adds, deletes, conflicts = [], [], []
        for path in sorted(set(base) | set(theirs)):
            b, t, o = _blob(base.get(path)), _blob(theirs.get(path)), _blob(ours.get(path))
            if b == t or o == t:
                continue  # the PR did not change it, or the target already has the PR's version
            if o != b:
                conflicts.append(path)
            elif theirs.get(path) is None:
                deletes.append(path)
            else:
                adds.append(theirs[path])
        return head, adds, deletes, conflicts

    async def merge(self, ctx: Ctx, repo: Repo, d: dict, comment: str | None) -> dict:
        if not d["is_pr"] or d["status"] != "open":
            why = "a draft: mark it open first" if d["status"] == "draft" else f"{d['status']}"
            raise HubError(400, None, f"#{d['num']} cannot be merged: it is {why}" if d["is_pr"] else
                           f"#{d['num']} is a discussion, not a pull request")
        head, adds, deletes, conflicts = self._three_way(repo, d)
        if conflicts:
            raise HubError(409, None, f"Merge conflict in {', '.join(conflicts[:10])}",
                           {"filesWithConflicts": conflicts})
        user = ctx.user.name  # type: ignore[union-attr]
        oid, created = self.storage.commit(
            repo, d["target"], d["title"], f"Merged pull request #{d['num']} (by {d['author']}) as {user}", user,
            adds, deletes, parent_commit=head)
        self._set(repo, d["num"], status="merged", merge_commit=oid)
        if comment:
            self.add_event(repo, d["num"], "comment", user, _comment_data(comment, user))
        event = self.add_event(repo, d["num"], "status-change", user, {"status": "merged"})
        if created:
            await self.hub.on_commit(repo, d["target"], oid)
        await self.notify(repo, d["num"], "update")
        return event

    def diff(self, repo: Repo, d: dict) -> str:
        """A git-style diff of the PR against its base: text files line by line, LFS and large files by name."""
        old = self.storage.tree(d["base"])
        new = self.storage.tree(self.storage.resolve(repo, f"refs/pr/{d['num']}")[0])
        out = []
        for path in sorted(set(old) | set(new)):
            a, b = old.get(path), new.get(path)
            if _blob(a) == _blob(b):
                continue
            out.append(f"diff --git a/{path} b/{path}\n")
            texts = [self._text(e) for e in (a, b)]
            if any(t is None for t, e in zip(texts, (a, b)) if e is not None):
                out.append(f"Binary files {'a/' + path if a else '/dev/null'} and {'b/' + path if b else '/dev/null'} "
                           "differ\n")
                continue
            out.extend(difflib.unified_diff(texts[0] or [], texts[1] or [], f"a/{path}" if a else "/dev/null",
                                            f"b/{path}" if b else "/dev/null"))
        return "".join(out)

    def _text(self, e: FileEntry | None) -> list[str] | None:
        if e is None or e.lfs or e.size > MAX_DIFF_BYTES:
            return None
        try:
            return self.storage.blob_path(e.sha256).read_text().splitlines(keepends=True)
        except UnicodeDecodeError:
            return None

    async def notify(self, repo: Repo, num: int, action: str, comment: dict | None = None) -> None:
        """Tell the extensions (webhooks: the `discussion` domain) about a discussion event."""
        d = self.get(repo, num)
        base_url = self.hub.base_url
        hook_comment = None
        if comment is not None:
            hook_comment = {"id": comment["id"], "author": {"id": comment["author"]["name"]},
                            "hidden": comment["data"]["hidden"], "content": comment["data"]["latest"]["raw"],
                            "url": {"web": f"{self.url(repo, num, base_url)}#{comment['id']}"}}
        await self.hub.on_discussion(repo, action, "discussion.comment" if comment else "discussion",
                                     self.webhook_json(repo, d, base_url), hook_comment)

    # ---- routes ------------------------------------------------------------------------------------------------------
    def _repo(self, ctx: Ctx) -> Repo:
        return repo_for_read(ctx, TYPE_OF_PLURAL[ctx.params["t"]], f"{ctx.params['ns']}/{ctx.params['name']}")

    def _signed_in(self, ctx: Ctx) -> str:
        if ctx.user is None:
            raise HubError(401, None, "You must be authenticated to take part in discussions")
        if ctx.user.role != "write":
            raise HubError(403, None, "Your token is read-only: discussions need a write token")
        return ctx.user.name

    async def _collection(self, ctx: Ctx) -> Response:
        repo = self._repo(ctx)
        if ctx.request.method == "POST":
            author = self._signed_in(ctx)
            body = await ctx.json()
            _check_title(body.get("title"))  # a PR opened by a commit takes the commit's title, however short
            d = self.open(repo, author, body["title"], body.get("description") or "", bool(body.get("pullRequest")))
            await self.notify(repo, d["num"], "create")
            return JSONResponse({**self.summary(repo, d), "url": self.url(repo, d["num"], ctx.base_url)})
        q = ctx.request.query_params
        kind, status, author = q.get("type") or "all", q.get("status") or "all", q.get("author")
        rows = [dict(r) for r in self.storage._rows("SELECT * FROM discussions WHERE rid=? ORDER BY num DESC",
                                                    (repo.rid,))]
        rows = [d for d in rows if (kind == "all" or bool(d["is_pr"]) == (kind == "pull_request"))
                and (status == "all" or d["status"] in STATUS_FILTER.get(status, (status,)))
                and (not author or d["author"].lower() == author.lower())]
        try:
            start = max(0, int(q.get("p") or 0)) * PAGE
        except ValueError:
            raise HubError(400, None, "p (the page index) must be an integer") from None
        return JSONResponse({"discussions": [self.summary(repo, d) for d in rows[start:start + PAGE]],
                             "count": len(rows), "start": start,
                             "numClosedDiscussions": sum(d["status"] in ("closed", "merged") for d in rows)})

    async def _details(self, ctx: Ctx) -> Response:
        repo = self._repo(ctx)
        d = self.get(repo, ctx.params["num"])
        out = {**self.summary(repo, d), "events": [self._event_json(e) for e in self.events(repo, d["num"])],
               "isReport": False}
        if d["is_pr"]:
            out["changes"] = {"base": f"refs/heads/{d['target']}"}
            if d["merge_commit"]:
                out["changes"]["mergeCommitId"] = d["merge_commit"]
            out["filesWithConflicts"] = self._three_way(repo, d)[3] if d["status"] in ("open", "draft") else []
            if ctx.request.query_params.get("diff") in ("1", "true"):
                out["diff"] = self.diff(repo, d)
        return JSONResponse(out)

    async def _change(self, ctx: Ctx) -> Response:
        repo, action = self._repo(ctx), ctx.params["action"]
        user = self._signed_in(ctx)
        d = self.get(repo, ctx.params["num"])
        body = await ctx.json() if await ctx.request.body() else {}
        moderator = user.lower() == d["author"].lower() or can_write(ctx, repo)
        if action == "comment":
            text = body.get("comment")
            if not isinstance(text, str) or not text.strip():
                raise HubError(400, None, "A comment needs some text")
            event = self.add_event(repo, d["num"], "comment", user, _comment_data(text, user))
            await self.notify(repo, d["num"], "create", event)
            return JSONResponse({"newMessage": event})
        if action == "merge":
            if not can_write(ctx, repo):
                raise HubError(403, None, f"Only writers of {repo.id} can merge pull requests")
            return JSONResponse({"newStatus": await self.merge(ctx, repo, d, body.get("comment"))})
        if not moderator:
            raise HubError(403, None, f"Only the author of #{d['num']} or a writer of {repo.id} can change it")
        if action == "title":
            title = _check_title(body.get("title"))
            event = self.add_event(repo, d["num"], "title-change", user, {"from": d["title"], "to": title})
            self._set(repo, d["num"], title=title)
            await self.notify(repo, d["num"], "update")
            return JSONResponse({"newTitle": event})
        status = body.get("status")
        if status not in ("open", "closed"):
            raise HubError(400, None, "status is 'open' or 'closed'")
        if d["status"] == "merged":
            raise HubError(400, None, f"#{d['num']} is merged: its status cannot change")
        if body.get("comment"):
            self.add_event(repo, d["num"], "comment", user, _comment_data(body["comment"], user))
        event = self.add_event(repo, d["num"], "status-change", user, {"status": status})
        self._set(repo, d["num"], status=status)
        await self.notify(repo, d["num"], "update")
        return JSONResponse({"newStatus": event})

    async def _comment_change(self, ctx: Ctx) -> Response:
        repo, action = self._repo(ctx), ctx.params["action"]
        user = self._signed_in(ctx)
        d = self.get(repo, ctx.params["num"])
        event = next((e for e in self.events(repo, d["num"]) if e["id"] == ctx.params["eid"].lower()
                      and e["type"] == "comment"), None)
        if event is None:
            raise HubError(404, None, f"Comment {ctx.params['eid']} not found in #{d['num']}")
        data = event["data"]
        if action == "edit":
            if user.lower() != event["author"].lower():
                raise HubError(403, None, "Only its author can edit a comment")
            content = (await ctx.json()).get("content")
            if not isinstance(content, str) or not content.strip():
                raise HubError(400, None, "content (the new text) is required")
            data["history"].insert(0, _version(content, user))
        else:
            if user.lower() != event["author"].lower() and not can_write(ctx, repo):
                raise HubError(403, None, "Only its author or a writer can hide a comment")
            data["hidden"] = True
            data["history"] = [_version("", user)]  # the Hub drops a hidden comment's text for good
        with self.storage.lock:
            self.storage.db.execute("UPDATE discussion_events SET data=? WHERE id=?", (json.dumps(data), event["id"]))
        updated = self._event_json({**event, "data": data})
        await self.notify(repo, d["num"], "update", updated)
        return JSONResponse({"updatedComment": updated})


def _check_title(title) -> str:
    title = title.strip() if isinstance(title, str) else ""
    if not 3 <= len(title) <= 200:
        raise HubError(400, None, "A title must be between 3 and 200 characters long")
    return title


def _version(raw: str, author: str) -> dict:
    body = html.escape(raw).replace("\n", "<br>\n")
    return {"raw": raw, "html": f"<p>{body}</p>\n" if raw else "", "updatedAt": iso(time.time()), "author": author}


def _comment_data(raw: str, author: str) -> dict:
    return {"hidden": False, "history": [_version(raw, author)]}


def _blob(e: FileEntry | None) -> tuple | None:
    return None if e is None else (e.sha256, e.lfs)


def _oid(repo: Repo, num: int) -> str:
    return hashlib.sha1(f"{repo.type}/{repo.id}#{num}".encode()).hexdigest()[:24]
