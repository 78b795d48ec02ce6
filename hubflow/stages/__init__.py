"""The stages as plain verbs, no Prefect: pull, train (+ resume, launch), predict, evaluate, gate, publish, card,
space. Each reads and writes through the doors and asks the run's task kind for what depends on the task."""
