"""`fedser`: project-level commands (demo run, synthetic corpus)."""
from __future__ import annotations

import sys
from typing import Sequence

USAGE = """usage: fedser COMMAND [options]

commands:
  demo      run a whole federation on 127.0.0.1 with the built-in corpus
  corpus    write the synthetic RAVDESS-format corpus to a folder
  simulate  the seed's experiment grid (K, B, E, partitions) through the real aggregator

`fedser COMMAND --help` for options."""


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "demo":
        from experiments.demo import main as demo_main

        return demo_main(rest)
    if command == "simulate":
        from experiments.simulate import main as simulate_main

        return simulate_main(rest)
    if command == "corpus":
        from experiments.synthetic_corpus import main as corpus_main

        return corpus_main(rest)
    print(f"fedser: unknown command {command!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
