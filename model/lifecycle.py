"""Process lifecycle shared by the aggregator and the client: stop on SIGTERM or SIGINT."""
from __future__ import annotations

import logging
import signal
import threading

from model.eventlog import log_event


def stop_on_signals(logger: logging.Logger) -> threading.Event:
    """An event set (and logged) when SIGTERM or SIGINT arrives; call from the main thread."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log_event(logger, "shutdown_requested", signal=signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
