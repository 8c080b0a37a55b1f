"""``python -m genplane``: the ``genplane`` command (how `serve --workers N` starts its children)."""

from genplane.cli.main import app

app()
