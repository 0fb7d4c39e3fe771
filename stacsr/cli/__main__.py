"""``python -m stacsr.cli``: the command line."""

from stacsr.cli import app

app()
