"""`python -m benchmarks`: see benchmarks/cli.py and docs/PERFORMANCE.md."""
import sys

from benchmarks.cli import main

sys.exit(main())
