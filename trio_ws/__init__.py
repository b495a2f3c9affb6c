"""trio-ws: a Trio server that fans out live agent-run state to dashboards."""

__version__ = "0.1.0"
