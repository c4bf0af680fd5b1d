"""The entry point of `python server.py` and `authz serve`: parse the flags first, then load gRPC and run."""

from __future__ import annotations

import logging
from typing import Sequence

from .config import parse_config
from .logs import configure


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Parse, then run until SIGTERM; --help and flag errors exit before gRPC or the servicers are loaded."""
    config = parse_config(argv, prog)
    configure(config.log_level, config.log_format)
    if config.demo:
        logging.getLogger("authz.server").warning(
            "--demo: serving the example bundle %s; its users' access keys are published: never use it for real "
            "traffic, mount your own bundle instead", config.bundle)
    from .app import run   # after parsing: the import is what loads gRPC
    return run(config)
