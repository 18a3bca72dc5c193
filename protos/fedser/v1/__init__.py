"""fedser protocol v1: code generated from aggregator.proto (`make protos`), and chunks.py, the hand-written chunk codec."""
