"""`fedser-aggregator`: run the aggregator until SIGTERM or SIGINT, then shut down gracefully."""
from __future__ import annotations

import logging
import sys
from typing import Sequence

from aggregator_service.config import parse_config
from aggregator_service.memory import limit_malloc_arenas
from aggregator_service.security import SecurityConfigError
from aggregator_service.server import CheckpointMismatchError, start
from model.eventlog import log_event, setup_logging
from model.lifecycle import stop_on_signals

log = logging.getLogger("fedser.aggregator")


def main(argv: Sequence[str] | None = None) -> int:
    config = parse_config(argv)
    setup_logging(config.log_level)
    limit_malloc_arenas()  # before any worker thread allocates
    try:
        running = start(config)
    except (CheckpointMismatchError, SecurityConfigError, OSError) as exc:
        log_event(log, "startup_failed", logging.ERROR, detail=str(exc))
        print(f"fedser-aggregator: error: {exc}", file=sys.stderr)
        return 1
    stop = stop_on_signals(log)
    while not stop.wait(1.0):
        pass
    running.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
