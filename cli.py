"""Launcher for a checkout: ``python cli.py ...`` runs the ``trio-ws`` command.

The commands live in `trio_ws.faces.cli`, so an installed trio-ws adds no top-level
``cli`` module to site-packages.
"""

from trio_ws.faces.cli import main

if __name__ == "__main__":
    main()
