"""The ``stacsr`` command line: a thin typer layer over the library (:mod:`stacsr.pipeline`, :mod:`stacsr.batch`,
:mod:`stacsr.train`, :mod:`stacsr.evaluate`). Imported by nobody; the console script is ``stacsr.cli:app``.

- :mod:`.common`: the typer app, consoles, shared options, progress, one-line errors, the engine;
- :mod:`.imagery`: ``search``, ``enhance``, ``batch``, ``sr``, ``demo``;
- :mod:`.training`: ``pairs``, ``train``, ``export``, ``evaluate``;
- :mod:`.catalogue`: ``catalog index``;
- :mod:`.tables`: every table the commands print, built to fit 80 columns.
"""

from stacsr.cli import catalogue, imagery, training  # noqa: F401  (registers the commands)
from stacsr.cli.common import app

__all__ = ["app"]
