"""The doors: the only modules that touch the outside world's storage.

`store` is the only importer of fsspec (the artifact store: a local folder or s3://); `hub` is the only driver of
`HfApi` (pins, pulls, commits, tags, cards, Space runtime and secrets, webhooks). Both offer verbs, never clients.
"""
