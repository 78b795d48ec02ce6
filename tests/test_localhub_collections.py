"""Collections on localhub through the real HfApi: create, list, get, update, delete, and their items.

Run: `.venv/bin/pytest tests/test_localhub_collections.py -q` (the `localhub` fixture in conftest.py serves
HF_ENDPOINT).
"""

from __future__ import annotations

import uuid

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from localhub import LocalHub


@pytest.fixture
def bob(localhub: LocalHub) -> HfApi:
    return HfApi(endpoint=localhub.url, token=localhub.token("bob"))


def status(err: pytest.ExceptionInfo) -> int:
    return err.value.response.status_code


def test_collection_lifecycle_and_items(hf_api: HfApi, bob: HfApi, new_repo_id):
    model, dataset, space = new_repo_id(), new_repo_id(), new_repo_id()
    hf_api.create_repo(model)
    hf_api.create_repo(dataset, repo_type="dataset")
    hf_api.create_repo(space, repo_type="space", space_sdk="static")
    title = f"Support models {uuid.uuid4().hex[:6]}"

    c = hf_api.create_collection(title, description="What routes tickets")
    assert c.slug.startswith(f"alice/{title.lower().replace(' ', '-')}-") and c.items == [] and not c.private
    assert c.url.endswith(f"/collections/{c.slug}")
    with pytest.raises(HfHubHTTPError) as again:
        hf_api.create_collection(title)
    assert status(again) == 409
    assert hf_api.create_collection(title, exists_ok=True).slug == c.slug

    hf_api.add_collection_item(c.slug, model, "model", note="the classifier")
    hf_api.add_collection_item(c.slug, dataset, "dataset")
    c = hf_api.add_collection_item(c.slug, space, "space")
    assert [(i.item_id, i.item_type, i.position) for i in c.items] == [(model, "model", 0), (dataset, "dataset", 1),
                                                                      (space, "space", 2)]
    assert c.items[0].note == "the classifier" and c.items[1].note is None
    with pytest.raises(HfHubHTTPError) as dup:
        hf_api.add_collection_item(c.slug, model, "model")
    assert status(dup) == 409
    hf_api.add_collection_item(c.slug, model, "model", exists_ok=True)
    with pytest.raises(HfHubHTTPError) as missing:  # the model is not a dataset
        hf_api.add_collection_item(c.slug, model, "dataset")
    assert status(missing) == 404

    # Move the model last, with a new note; then delete the dataset: positions close up.
    hf_api.update_collection_item(c.slug, c.items[0].item_object_id, note="v2", position=2)
    c = hf_api.get_collection(c.slug)
    assert [i.item_id for i in c.items] == [dataset, space, model] and c.items[2].note == "v2"
    hf_api.delete_collection_item(c.slug, c.items[0].item_object_id)
    hf_api.delete_collection_item(c.slug, c.items[0].item_object_id, missing_ok=True)
    c = hf_api.get_collection(c.slug)
    assert [(i.item_id, i.position) for i in c.items] == [(space, 0), (model, 1)]

    # A renamed collection gets a new slug with the same id; the old slug still answers.
    renamed = hf_api.update_collection_metadata(c.slug, title=f"{title} v2", theme="pink", description="new")
    assert renamed.slug != c.slug and renamed.slug.split("-")[-1] == c.slug.split("-")[-1]
    assert renamed.theme == "pink" and renamed.description == "new"
    assert hf_api.get_collection(c.slug).slug == renamed.slug

    # A moved repo stays in the collection under its new id; a deleted one drops out.
    moved = new_repo_id()
    hf_api.move_repo(model, moved)
    hf_api.delete_repo(space, repo_type="space")
    assert [i.item_id for i in hf_api.get_collection(renamed.slug).items] == [moved]

    # Only alice (the namespace) changes it; bob reads it while it is public.
    assert bob.get_collection(renamed.slug).title == renamed.title
    with pytest.raises(HfHubHTTPError) as forbidden:
        bob.update_collection_metadata(renamed.slug, title="mine now")
    assert status(forbidden) == 403
    with pytest.raises(HfHubHTTPError):
        bob.delete_collection(renamed.slug)

    hf_api.delete_collection(renamed.slug)
    with pytest.raises(HfHubHTTPError) as gone:
        hf_api.delete_collection(renamed.slug)
    assert status(gone) == 404
    hf_api.delete_collection(renamed.slug, missing_ok=True)


def test_private_collections_and_listing(hf_api: HfApi, bob: HfApi, localhub: LocalHub, new_repo_id):
    model = new_repo_id()
    hf_api.create_repo(model)
    nested = hf_api.create_collection(f"nested {uuid.uuid4().hex[:6]}")
    secret = hf_api.create_collection(f"secret {uuid.uuid4().hex[:6]}", private=True)
    hf_api.add_collection_item(secret.slug, model, "model")
    hf_api.add_collection_item(secret.slug, nested.slug, "collection")

    items = hf_api.get_collection(secret.slug).items
    assert [(i.item_id, i.item_type) for i in items] == [(model, "model"), (nested.slug, "collection")]
    with pytest.raises(HfHubHTTPError) as hidden:
        bob.get_collection(secret.slug)
    assert status(hidden) == 404
    anonymous = HfApi(endpoint=localhub.url, token=False)
    assert secret.slug in {c.slug for c in hf_api.list_collections(owner="alice")}
    assert secret.slug not in {c.slug for c in bob.list_collections(owner="alice")}
    assert secret.slug not in {c.slug for c in anonymous.list_collections(owner="alice")}
    assert {c.slug for c in hf_api.list_collections(item=f"models/{model}")} == {secret.slug}
    assert list(bob.list_collections(item=f"models/{model}")) == []

    # A private repo in a public collection is shown to those who can read the repo only.
    hf_api.update_collection_metadata(secret.slug, private=False)
    hf_api.update_repo_settings(model, private=True)
    assert [i.item_type for i in bob.get_collection(secret.slug).items] == ["collection"]
    assert len(hf_api.get_collection(secret.slug).items) == 2
    assert len(list(hf_api.list_collections(owner="alice", limit=1))) == 1

    with pytest.raises(HfHubHTTPError) as refused:  # bob cannot create in alice's namespace
        bob.create_collection("not yours", namespace="alice")
    assert status(refused) == 403
    for c in (secret, nested):
        hf_api.delete_collection(c.slug)
