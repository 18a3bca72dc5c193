"""fedser aggregator: round logic, FedAvg, checkpoints and metrics behind a gRPC service."""

__version__ = "0.1.0"
