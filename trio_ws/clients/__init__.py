"""Programs that speak only the protocol to any trio-ws node (rule 3): the shared
client code, `run`/`publish` (producers) and `watch`."""
