"""`python -m benchmarks`: see benchmarks/cli.py and docs/PERFORMANCE.md."""
import sys

from benchmarks.cli import main

if __name__ == "__main__":  # feature worker processes import this module again (as __mp_main__)
    sys.exit(main())
