"""``python -m trio_ws``: the ``trio-ws`` command without its console script."""

from trio_ws.faces.cli import main

if __name__ == "__main__":
    main(prog_name="trio-ws")
