"""fedser benchmarks (issue 6): `python -m benchmarks` / `make bench`.

Each figure is measured next to a physical reference taken in the same run
(see docs/PERFORMANCE.md). Results go to benchmarks/results/<name>.json and
benchmarks/results/latest.md. Nothing here is imported by production code,
and no unit test asserts on a time.
"""
