"""The pure core: the wire vocabulary, the line pipeline and trackers, redaction
and access rules, defaults. Text in, events out; no I/O, no trio, nothing of trio-ws
outside core (LAYERS.md rule 1)."""
