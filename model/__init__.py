"""Shared fedser model package: network, features, corpus readers and tensor serialization.

The aggregator and the edge clients both import this one definition, so the
architecture id, the label set and the feature preset always agree.
"""
