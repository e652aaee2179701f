"""A stand-in for a flashing tool in tests: logs its arguments, then does what its mode says.

Modes: ok, fail (exit 3 with an error message), hang (sleeps), flood (prints a lot, then ok),
not_ready (exit 75: no new device yet). `--mode-file` overrides `--mode` while it exists, so a
test can change the behaviour of a running line.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--log", type=Path)
    parser.add_argument("--mode", default="ok")
    parser.add_argument("--mode-file", type=Path)
    parser.add_argument("rest", nargs="*")
    args = parser.parse_args()
    mode = args.mode
    if args.mode_file is not None and args.mode_file.exists():
        mode = args.mode_file.read_text().strip() or mode
    if args.log is not None:
        with args.log.open("a") as log:
            log.write(json.dumps({"argv": args.rest, "mode": mode, "at": time.time()}) + "\n")
    print(f"tool: {' '.join(args.rest)} mode={mode}", flush=True)
    if mode == "ok":
        print("Download verified successfully", flush=True)
        return 0
    if mode == "fail":
        print("Error: No STM32 target found!", file=sys.stderr, flush=True)
        return 3
    if mode == "not_ready":
        print("no new device in the jig", flush=True)
        return 75
    if mode == "hang":
        time.sleep(3600)
        return 0
    if mode == "flood":
        for i in range(20000):
            print(f"progress line {i:05d} " + "#" * 60)
        return 0
    print(f"unknown mode {mode}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
