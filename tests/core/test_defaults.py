"""trio_ws.core.defaults: each default stated once, and every face uses it."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

from trio_ws.core import defaults
from trio_ws.faces.cli import main
from trio_ws.net.config import ServerConfig


def test_every_default_has_a_docstring() -> None:
    tree = ast.parse(Path(defaults.__file__).read_text())
    body = tree.body
    names = []
    for statement, following in zip(body, [*body[1:], None], strict=True):
        if isinstance(statement, ast.AnnAssign) and isinstance(statement.target, ast.Name):
            names.append(statement.target.id)
            assert isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
            assert isinstance(following.value.value, str), statement.target.id
    assert "HISTORY" in names and len(names) >= 10


def option_defaults(name: str) -> dict[str, object]:
    """Each option of command ``name`` and the default click shows for it."""
    return {param.name: param.default for param in main.commands[name].params if param.name}


def test_serve_options_and_server_config_share_the_defaults() -> None:
    """What `serve --help` shows is what a library user of ServerConfig gets."""
    shown = option_defaults("serve")
    fields = {field.name: field.default for field in dataclasses.fields(ServerConfig)}
    shared = ["host", "port", "poll_interval", "history", "history_bytes", "producer_grace"]
    for name in shared:
        assert shown[name] == fields[name], name
    assert (fields["host"], fields["port"]) == (defaults.HOST, defaults.PORT)
    assert fields["history_bytes"] == defaults.HISTORY_BYTES


def test_client_commands_default_to_the_default_server() -> None:
    for name in ("run", "publish"):  # --server is repeatable there: one node by default
        assert option_defaults(name)["servers"] == (defaults.SERVER_URL,), name
    assert option_defaults("watch")["server"] == defaults.SERVER_URL
    assert option_defaults("watch")["backlog"] == defaults.CLIENT_BACKLOG
    assert option_defaults("demo")["port"] == defaults.PORT
