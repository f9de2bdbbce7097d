"""Logging set-up of the command lines and stages; the library only calls ``logging.getLogger(__name__)``."""
from __future__ import annotations

import logging

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def setup_logging(level: int = logging.INFO) -> None:
    """Send log records of ``level`` and above to stderr, with time, level and logger name."""
    logging.basicConfig(level=level, format=FORMAT)
