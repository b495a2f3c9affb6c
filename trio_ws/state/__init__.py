"""A project's live state: the hub (numbering, history, snapshot, commit,
fan-out), its subscribers, the project (producers, poll loop, control routing),
the manager of all projects, the poll lease. No sockets, no frames (rule 2)."""
