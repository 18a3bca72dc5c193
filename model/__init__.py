"""Shared fedser model package: network, features, corpus readers and tensor serialization.

The aggregator and the edge clients both import this one definition, so the
architecture id, the label set and the feature preset always agree.
"""

from model.mkl_dispatch import enable_mkl_fast_paths as _enable_mkl_fast_paths

# Here, not in the entry points: every fedser process imports this package before anything
# that imports torch, and MKL's CPU vendor check is bound when torch loads (model/mkl_dispatch.py).
_enable_mkl_fast_paths()
