"""localhub as a team's hub, through the real `HfApi`: orgs, pull requests and discussions, gated repos, and the
Hub-accurate answers of issue 13's list (copies, .gitignore, ids, paths, moves, squash, Space README, card checks).

Run: `.venv/bin/pytest tests/test_localhub_team.py -q` (~15 s). One localhub subprocess for the module, started with
an org from `LocalHub(orgs=...)` (the `--org` flag through $LOCALHUB_ORGS); huggingface_hub's own suite runs against
localhub with `python -m localhub.conformance` (figures in docs/localhub.md).
"""

from __future__ import annotations

import httpx
import pytest
from huggingface_hub import CommitOperationAdd, CommitOperationCopy, HfApi, WebhookPayload
from huggingface_hub.errors import GatedRepoError, HfHubHTTPError, RepositoryNotFoundError

from localhub import LocalHub
from localhub.admin import admin_call, admin_token
from localhub.teams import parse_orgs
from tests.test_localhub_webhooks import Receiver

USERS = {"alice": ("hf_alice_team_tok", "write"), "bob": ("hf_bob_team_tok", "write"),
         "carol": ("hf_carol_team_tok", "write"), "dave": ("hf_dave_team_tok", "write"),
         "rita": ("hf_rita_team_tok", "read"), "_ops": ("hf_ops_team_tok", "write")}
ORGS = {"acme": {"alice": "admin", "bob": "write", "carol": "read"}}


@pytest.fixture(scope="module")
def hub(tmp_path_factory) -> LocalHub:
    # allow_private_webhooks: its discussion webhooks go to a receiver on loopback (refused by default).
    h = LocalHub(tmp_path_factory.mktemp("team") / "hub", users=USERS, orgs=ORGS, allow_private_webhooks=True).start()
    yield h
    h.stop()


def api(hub: LocalHub, user: str | None = "alice") -> HfApi:
    return HfApi(endpoint=hub.url, token=hub.token(user) if user else False)


def ask_access(hub: LocalHub, repo: str, user: str) -> dict:
    """What the Hub's "request access" form does (huggingface_hub has no call for it)."""
    r = httpx.post(f"{hub.url}/api/models/{repo}/ask-access", headers={"authorization": f"Bearer {hub.token(user)}"})
    r.raise_for_status()
    return r.json()


def status(call) -> int:
    with pytest.raises(HfHubHTTPError) as err:
        call()
    return err.value.response.status_code


# ---- organizations ------------------------------------------------------------------------------------------------

def test_org_members_share_a_namespace_and_others_are_refused(hub: LocalHub):
    alice, bob, carol, dave = (api(hub, u) for u in ("alice", "bob", "carol", "dave"))
    repo = alice.create_repo("acme/shared-model", private=True).repo_id
    bob.upload_file(path_or_fileobj=b"weights", path_in_repo="w.bin", repo_id=repo)  # a writer of the org pushes
    assert alice.list_repo_commits(repo)[0].authors == ["bob"]
    assert bob.create_repo("acme/bobs-model").repo_id == "acme/bobs-model"

    assert carol.model_info(repo).private is True  # a read member sees the private repo...
    assert status(lambda: carol.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id=repo)) == 403  # ...only
    with pytest.raises(RepositoryNotFoundError):  # a non-member does not even see it
        dave.model_info(repo)
    assert status(lambda: dave.create_repo("acme/daves-model")) == 403
    assert status(lambda: dave.upload_file(path_or_fileobj=b"x", path_in_repo="x", repo_id="acme/bobs-model")) == 403

    me = bob.whoami()
    assert [(o["name"], o["roleInOrg"]) for o in me["orgs"]] == [("acme", "write")]
    assert dave.whoami()["orgs"] == []
    members = {m.username: m for m in alice.list_organization_members("acme")}
    assert set(members) == {"alice", "bob", "carol"}


def test_admin_api_and_org_admins_manage_members(hub: LocalHub):
    admin = admin_token(hub.data_dir)
    admin_call("PUT", hub.url, "/_localhub/orgs/labs", admin, {"fullname": "The Labs", "members": {"dave": "admin"}})
    dave, bob = api(hub, "dave"), api(hub, "bob")
    assert dave.create_repo("labs/model").repo_id == "labs/model"
    assert [(o["name"], o["fullname"]) for o in dave.whoami()["orgs"]] == [("labs", "The Labs")]

    # An org admin adds a member with their own token; a mere member (or an outsider) cannot.
    member_url = f"{hub.url}/_localhub/orgs/labs/members/bob"
    assert httpx.put(member_url, json={"role": "write"}, headers={"authorization": f"Bearer {hub.token('bob')}"},
                     ).status_code == 403
    assert httpx.put(member_url, json={"role": "write"}, headers={"authorization": f"Bearer {hub.token('dave')}"},
                     ).status_code == 200
    bob.upload_file(path_or_fileobj=b"ok", path_in_repo="ok.txt", repo_id="labs/model")
    # A read token caps the role: rita, made an admin, still cannot push.
    admin_call("PUT", hub.url, "/_localhub/orgs/labs/members/rita", admin, {"role": "admin"})
    assert status(lambda: api(hub, "rita").create_repo("labs/ritas")) == 403
    with pytest.raises(httpx.HTTPStatusError, match="409"):  # an org cannot take a user's name
        admin_call("PUT", hub.url, "/_localhub/orgs/alice", admin, {})
    assert parse_orgs(["t:a=read,b=admin"]) == {"t": {"a": "read", "b": "admin"}}
    with pytest.raises(ValueError):
        parse_orgs(["t:a=owner"])


# ---- pull requests and discussions --------------------------------------------------------------------------------

def test_reader_opens_a_pr_a_writer_merges_it_as_a_new_commit_on_main(hub: LocalHub):
    alice, dave = api(hub, "alice"), api(hub, "dave")
    repo = alice.create_repo("alice/reviewed").repo_id
    alice.upload_file(path_or_fileobj=b"v1", path_in_repo="model.txt", repo_id=repo)
    base = alice.model_info(repo).sha
    receiver = Receiver()
    try:
        alice.create_webhook(url=receiver.url, watched=[{"type": "model", "name": repo}], domains=["discussion"])
        info = dave.create_commit(repo, [CommitOperationAdd("model.txt", b"v2"), CommitOperationAdd("w.pkl", b"lfs")],
                                  commit_message="Better model", create_pr=True)  # dave cannot write to alice/*
        assert info.pr_num == 1 and info.pr_revision == "refs/pr/1" and info.pr_url.endswith("/discussions/1")
        assert alice.model_info(repo).sha == base  # main untouched...
        assert alice.model_info(repo, revision="refs/pr/1").sha == info.oid  # ...the PR's ref resolves
        prs = alice.list_repo_refs(repo, include_pull_requests=True).pull_requests
        assert [(r.ref, r.target_commit) for r in prs] == [("refs/pr/1", info.oid)]
        assert status(lambda: dave.merge_pull_request(repo, 1)) == 403  # readers open, writers merge

        pr = alice.get_discussion_details(repo, 1)
        assert (pr.is_pull_request, pr.status, pr.author, pr.target_branch) == (True, "open", "dave", "refs/heads/main")
        assert "+v2" in pr.diff and [e.type for e in pr.events] == ["comment", "commit"]
        alice.comment_discussion(repo, 1, "Looks good")
        alice.merge_pull_request(repo, 1)

        merged = alice.get_discussion_details(repo, 1)
        head = alice.list_repo_commits(repo)
        assert merged.status == "merged" and merged.merge_commit_oid == head[0].commit_id
        assert head[1].commit_id == base and head[0].authors == ["alice"]  # a new commit on top of main
        assert alice.hf_hub_download(repo, "model.txt", revision=head[0].commit_id) and set(
            alice.list_repo_files(repo)) == {".gitattributes", "model.txt", "w.pkl"}
        events = [WebhookPayload.model_validate(d["json"]) for d in receiver.wait_for(3)]  # delivered in parallel
        assert sorted((e.event.action, e.event.scope, e.discussion.status) for e in events) == [
            ("create", "discussion", "open"), ("create", "discussion.comment", "open"),
            ("update", "discussion", "merged")]
        merge = next(e for e in events if e.event.action == "update")
        assert merge.discussion.changes.mergeCommitId == head[0].commit_id and merge.repo.name == repo
    finally:
        receiver.close()


def test_discussions_list_comment_close_and_permissions(hub: LocalHub):
    alice, dave = api(hub, "alice"), api(hub, "dave")
    repo = alice.create_repo("alice/talk", repo_type="dataset").repo_id
    draft = alice.create_pull_request(repo, "Draft PR", repo_type="dataset")
    talk = dave.create_discussion(repo, "A question", description="Why?", repo_type="dataset")
    assert (draft.num, draft.status, talk.num, talk.status) == (1, "draft", 2, "open")
    assert [d.num for d in alice.get_repo_discussions(repo, repo_type="dataset")] == [2, 1]
    assert [d.num for d in alice.get_repo_discussions(repo, discussion_type="pull_request", repo_type="dataset")] == [1]

    comment = alice.comment_discussion(repo, 2, "Because.", repo_type="dataset")
    assert comment.content == "Because." and comment.author == "alice"
    assert status(lambda: api(hub, "carol").change_discussion_status(repo, 2, "closed", repo_type="dataset")) == 403
    dave.change_discussion_status(repo, 2, "closed", repo_type="dataset")  # its author may close it
    assert [d.num for d in alice.get_repo_discussions(repo, discussion_status="closed", repo_type="dataset")] == [2]
    assert status(lambda: alice.merge_pull_request(repo, 1, repo_type="dataset")) == 400  # a draft is not mergeable

    # Both sides changed the same file since the PR opened: a conflict, listed, and no merge.
    alice.upload_file(path_or_fileobj=b"base", path_in_repo="d.csv", repo_id=repo, repo_type="dataset")
    dave.upload_file(path_or_fileobj=b"theirs", path_in_repo="d.csv", repo_id=repo, repo_type="dataset", create_pr=True)
    alice.upload_file(path_or_fileobj=b"ours", path_in_repo="d.csv", repo_id=repo, repo_type="dataset")
    assert alice.get_discussion_details(repo, 3, repo_type="dataset").conflicting_files == ["d.csv"]
    assert status(lambda: alice.merge_pull_request(repo, 3, repo_type="dataset")) == 409
    assert status(lambda: api(hub, None).create_discussion(repo, "anonymous", repo_type="dataset")) == 401
    assert status(lambda: api(hub, "rita").create_discussion(repo, "read token", repo_type="dataset")) == 403


# ---- gated repos --------------------------------------------------------------------------------------------------

def test_gated_repo_refuses_until_access_is_accepted(hub: LocalHub):
    alice, dave = api(hub, "alice"), api(hub, "dave")
    repo = alice.create_repo("alice/gated").repo_id
    alice.upload_file(path_or_fileobj=b"secret sauce", path_in_repo="w.txt", repo_id=repo)
    alice.update_repo_settings(repo, gated="manual")
    assert dave.model_info(repo).gated == "manual"  # the card and file list stay visible
    with pytest.raises(GatedRepoError):
        dave.hf_hub_download(repo, "w.txt")
    with pytest.raises(GatedRepoError):
        dave.auth_check(repo)
    with pytest.raises(GatedRepoError):
        api(hub, None).hf_hub_download(repo, "w.txt")

    assert ask_access(hub, repo, "dave") == {"status": "pending"}
    with pytest.raises(GatedRepoError):  # pending is not accepted
        dave.hf_hub_download(repo, "w.txt")
    assert [r.username for r in alice.list_pending_access_requests(repo)] == ["dave"]
    assert status(lambda: dave.accept_access_request(repo, "dave")) == 403  # only writers decide
    alice.accept_access_request(repo, "dave")
    assert open(dave.hf_hub_download(repo, "w.txt"), "rb").read() == b"secret sauce"
    alice.reject_access_request(repo, "dave", rejection_reason="changed my mind")
    assert [r.username for r in alice.list_rejected_access_requests(repo)] == ["dave"]
    with pytest.raises(GatedRepoError):
        dave.auth_check(repo)

    alice.update_repo_settings(repo, gated="auto")  # auto: a request is accepted at once
    assert ask_access(hub, repo, "bob") == {"status": "accepted"}
    api(hub, "bob").auth_check(repo)


# ---- issue 13's list 4 and 5 --------------------------------------------------------------------------------------

def test_ids_paths_copies_and_gitignore(hub: LocalHub):
    alice = api(hub, "alice")
    repo = alice.create_repo("alice/CaSe-Model").repo_id
    assert not alice.repo_exists("no-namespace") and alice.repo_exists("ALICE/case-model")  # ids ignore case
    alice.create_commit("alice/case-model", [CommitOperationAdd("big.bin", b"lfs bytes"),
                                             CommitOperationAdd(".gitignore", b"logs/\n")], commit_message="add")
    alice.create_commit(repo, [CommitOperationCopy("big.bin", "copy.bin")], commit_message="copy")  # no size sent
    files = {f.path: f for f in alice.get_paths_info(repo, ["big.bin", "copy.bin"], expand=True)}
    assert files["copy.bin"].lfs.sha256 == files["big.bin"].lfs.sha256
    assert (files["copy.bin"].last_commit.title, files["big.bin"].last_commit.title) == ("copy", "add")

    alice.upload_file(path_or_fileobj=b"noise", path_in_repo="logs/run.txt", repo_id=repo)  # the repo's .gitignore
    assert "logs/run.txt" not in alice.list_repo_files(repo)
    assert status(lambda: alice.upload_file(path_or_fileobj=b"x", path_in_repo="..\\x", repo_id=repo)) == 422
    assert api(hub, "_ops").create_repo("_ops/tools").repo_id == "_ops/tools"  # the Hub's names may start with "_"


def test_move_squash_space_readme_and_card_checks(hub: LocalHub):
    alice = api(hub, "alice")
    repo = alice.create_repo("alice/old-name").repo_id
    alice.upload_file(path_or_fileobj=b"one", path_in_repo="f.txt", repo_id=repo)
    alice.upload_file(path_or_fileobj=b"two", path_in_repo="f.txt", repo_id=repo)
    alice.move_repo(repo, "acme/new-name")  # a transfer to an org alice administers
    assert alice.model_info(repo).id == "acme/new-name"  # the old id redirects
    assert open(alice.hf_hub_download(repo, "f.txt"), "rb").read() == b"two"
    with pytest.raises(HfHubHTTPError, match="already exists"):
        alice.move_repo("acme/shared-model", "acme/new-name")

    alice.super_squash_history("acme/new-name")
    commits = alice.list_repo_commits("acme/new-name")
    assert [c.title for c in commits] == ["Super-squash branch 'main' using huggingface_hub"]
    assert alice.list_repo_files("acme/new-name") == [".gitattributes", "f.txt"]
    assert "acme/new-name" in {r.id for r in alice.list_user_repos("acme")}

    space = alice.create_repo("alice/a-space", repo_type="space", space_sdk="static").repo_id
    readme = open(alice.hf_hub_download(space, "README.md", repo_type="space")).read()
    assert "sdk: static" in readme and readme.startswith("---\n")
    alice.move_repo(space, "alice/b-space", repo_type="space")  # the Space's app follows it to its new id
    assert alice.space_info(space).id == "alice/b-space" and alice.get_space_runtime("alice/b-space").stage

    with pytest.raises(ValueError, match="Invalid metadata in README.md"):
        alice.upload_file(path_or_fileobj=b"---\nlicense: not-a-license\n---\n# card\n", path_in_repo="README.md",
                          repo_id="acme/new-name")
