"""The operator's side: the `hubflow` command, the demos and their servers, Hub webhooks, work pools, the Space
preview, store gc, the multi-node pods' command. These drive Prefect and start servers by design; the library
(config, refs, doors, stages, kinds), the tasks and the flows never import them (pyproject's import contracts)."""
