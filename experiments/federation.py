"""A whole federation in one process: the production aggregator on 127.0.0.1, each client a thread.

`fedser simulate` and the benchmark's encoding section run their federations
here. Clients run the production client loop (edge_client.session) against the
production aggregator over gRPC; only where they run differs from a deployment.

Runs repeat exactly: the client threads train and push one at a time, in client
order (:class:`Turns`), so a run's scores depend only on its inputs, not on how
the threads were scheduled or how many runs share the machine.
"""
from __future__ import annotations

import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import torch

from aggregator_service.config import AggregatorConfig
from aggregator_service.rounds import RoundConfig
from aggregator_service.server import start
from edge_client.backoff import BackoffPolicy
from edge_client.dataset import LocalData
from edge_client.session import FederatedSession, SessionConfig
from edge_client.transport import AggregatorClient, PulledModel, Stopped
from model.encodings import Encoding
from model.network import build_model, get_architecture
from model.serialization import load_arrays_into


@dataclass(frozen=True)
class ClientSpec:
    """One client thread: its id, its session seed (batch order and dropout) and its data."""

    client_id: str
    seed: int
    data: LocalData


class Turns:
    """Client threads train one at a time, in client order, each round.

    edge_client.training seeds dropout by forking torch's global generator, which
    is one per process: two client threads training at once would draw each
    other's dropout masks and a run could not be repeated. Turns also fix the
    order of the pushes, hence of the aggregator's float sums. The first turn
    waits until every client has built its model (that draws from the generator too).
    """

    def __init__(self, clients: int, stop: threading.Event) -> None:
        self._cond = threading.Condition()
        self._clients = clients
        self._stop = stop
        self._ready = 0
        self._turn = 0

    def ready(self) -> None:
        with self._cond:
            self._ready += 1
            self._cond.notify_all()

    def acquire(self, index: int) -> None:
        with self._cond:
            while not (self._ready == self._clients and self._turn == index):
                if self._stop.is_set():
                    raise Stopped()
                self._cond.wait(0.5)

    def release(self) -> None:
        with self._cond:
            self._turn = (self._turn + 1) % self._clients
            self._cond.notify_all()


class TurnTakingSession(FederatedSession):
    """The production client loop, training and pushing only in its turn (see :class:`Turns`)."""

    def __init__(self, index: int, turns: Turns, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._index = index
        self._turns = turns
        self._first = True

    def _contribute(self, model: torch.nn.Module, pulled: PulledModel) -> None:
        if self._first:  # the model is built: the session builds it before its first contribution
            self._first = False
            self._turns.ready()
        self._turns.acquire(self._index)
        try:
            super()._contribute(model, pulled)
        finally:
            self._turns.release()


def run_in_process(
    rounds: RoundConfig, architecture: str, seed: int, clients: Sequence[ClientSpec],
    score: Callable[[int, torch.nn.Module], None], encoding: Encoding = Encoding.FLOAT32,
) -> None:
    """Run ``rounds.max_rounds`` rounds; ``score(version, model)`` sees every global version, 0 first.

    ``seed`` is the aggregator's (the initial model); ``encoding`` is how every
    client sends its updates. Raises RuntimeError if a client failed.
    """
    arch = get_architecture(architecture)
    k = len(clients)
    with tempfile.TemporaryDirectory(prefix="fedser-federation-") as tmp:
        running = start(AggregatorConfig(
            host="127.0.0.1", port=0, metrics_port=0, checkpoint_dir=Path(tmp), insecure=True,
            architecture=arch.id, seed=seed, max_workers=max(16, 4 * k), rounds=rounds,
        ))
        stop = threading.Event()
        turns = Turns(k, stop)
        target = f"127.0.0.1:{running.port}"
        threads = []
        errors: list[BaseException] = []
        # Built before any client thread trains: building draws from torch's generator.
        model = build_model(arch.id)

        def client(i: int, spec: ClientSpec) -> None:
            transport = AggregatorClient(target, stop, BackoffPolicy(max_s=1.0))
            try:
                session = TurnTakingSession(
                    i, turns, SessionConfig(spec.client_id, rounds.max_rounds, torch.device("cpu"), spec.seed,
                                            arch.id, encoding),
                    spec.data, arch.classes, transport, stop)
                session.run()
            except BaseException as exc:  # surfaced after the run
                errors.append(exc)
                stop.set()
            finally:
                transport.close()

        for i, spec in enumerate(clients):
            t = threading.Thread(target=client, args=(i, spec), name=f"client-{i}", daemon=True)
            t.start()
            threads.append(t)
        evaluator = AggregatorClient(target, stop, BackoffPolicy(max_s=1.0))
        try:
            for version in range(rounds.max_rounds + 1):
                pulled = evaluator.pull("evaluator", min_version=version, wait_s=30)
                while pulled.arrays is None and not stop.is_set():
                    pulled = evaluator.pull("evaluator", min_version=version, wait_s=30)
                if stop.is_set():
                    break
                load_arrays_into(model, pulled.arrays)
                score(version, model)
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=60)
            evaluator.close()
            running.stop(grace_s=1)
        if errors:
            raise RuntimeError(f"a client failed: {errors[0]!r}")
