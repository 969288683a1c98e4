"""Every command on a tiny random model of each family loramix supports (tests/architectures.py):
train-skill (full precision and 4-bit), fit-cat, merge (every method and --into-base), eval and
inspect, each outcome "ok" or the first line of its error. Prints a Markdown table.

    python bench/architectures.py [--families llama,gpt2] [--out bench/results/architectures.md]

Exit status 1 if a command failed that tests/architectures.py does not expect to be refused.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.architectures import COMMANDS, FAMILIES, expected, probe


def table(results: dict[str, dict[str, str]]) -> str:
    lines = ["| family | " + " | ".join(COMMANDS) + " |", "|---|" + "---|" * len(COMMANDS)]
    for family, outcomes in results.items():
        lines.append(f"| {family} | " + " | ".join(outcomes.get(c, "-").replace("|", "/") for c in COMMANDS) + " |")
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--families", default=",".join(FAMILIES))
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    results = {}
    for family in args.families.split(","):
        with tempfile.TemporaryDirectory(prefix=f"arch-{family}-") as tmp:
            results[family] = probe(family, Path(tmp))
        print(f"{family}: {json.dumps(results[family])}", file=sys.stderr, flush=True)
    text = table(results)
    print(text)
    if args.out:
        args.out.write_text(text)
    return 0 if all(expected(f, c, v) for f, r in results.items() for c, v in r.items()) else 1


if __name__ == "__main__":
    sys.exit(main())
