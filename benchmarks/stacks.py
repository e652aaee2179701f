"""Summarise a py-spy `--format raw` profile: where the host's time goes, by function.

    python benchmarks/stacks.py PROFILE [--top 25] [--idle]

Prints the share of samples per function, inclusive (on the stack) and self (on top).
Idle samples (the event loop waiting in select/epoll) are left out unless --idle.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter
from pathlib import Path

IDLE = ("select (selectors.py", "poll (selectors.py")
_LOC = re.compile(r"\s*\(([^)]*)\)$")


def short(frame: str) -> str:
    """`func (path/to/file.py:123)` -> `func (file.py)`."""
    match = _LOC.search(frame)
    if not match:
        return frame
    where = match.group(1).rsplit(":", 1)[0]
    parts = where.split("/")
    where = "/".join(parts[-2:]) if len(parts) > 1 else where
    return f"{frame[: match.start()]} ({where})"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--idle", action="store_true")
    args = parser.parse_args()
    inclusive: Counter[str] = Counter()
    own: Counter[str] = Counter()
    total = idle = 0
    for line in args.profile.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        frames = stack.split(";")
        if not args.idle and any(f.startswith(IDLE) for f in frames[-3:]):
            idle += count
            continue
        total += count
        for name in {short(f) for f in frames}:
            inclusive[name] += count
        own[short(frames[-1])] += count
    print(f"busy samples {total}, idle samples {idle} ({idle / max(1, total + idle):.0%} idle)")
    print(f"{'incl':>6} {'self':>6}  function")
    for name, count in inclusive.most_common(args.top):
        print(f"{count / total:6.1%} {own[name] / total:6.1%}  {name}")
    print("--- top self")
    for name, count in own.most_common(args.top):
        print(f"{count / total:6.1%}  {name}")


if __name__ == "__main__":
    main()
