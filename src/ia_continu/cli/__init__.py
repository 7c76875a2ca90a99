"""The ``ia-continu`` command line: ``app`` (cli/app.py) with its commands, one module per
command group. Importing a group module registers its commands on ``app``, in this order
(the order of ``--help``)."""

# isort: off
from ia_continu.cli import serve, db, registry, data, up, monitor, simulate, ops  # noqa: F401
from ia_continu.cli.app import app

# isort: on

__all__ = ["app"]
