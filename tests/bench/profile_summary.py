"""Summarise a py-spy ``--format raw`` recording: where a server spends its CPU time.

python tests/bench/profile_summary.py PROFILE.txt [--top 20]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from pathlib import Path

_LOCATION = re.compile(r"^(?P<name>.*) \((?P<file>[^()]*?)(?::\d+)?\)$")


def frame_key(frame: str) -> str:
    """``function (file)`` without the line number, so a function's samples add up."""
    match = _LOCATION.match(frame.strip())
    if not match:
        return frame.strip()
    return f"{match['name']} ({match['file']})"


def summarise(path: Path, top: int = 20) -> str:
    self_time: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    files: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [frame_key(f) for f in stack.split(";")]
        total += count
        self_time[frames[-1]] += count
        for key in set(frames):
            inclusive[key] += count
        leaf_file = frames[-1].rpartition("(")[2].rstrip(")")
        files[leaf_file.split("/")[0] if "/" in leaf_file else leaf_file] += count
    if not total:
        return f"{path}: no samples"
    lines = [f"{path.name}: {total} samples (CPU-active only)", "", "self time:"]
    lines += [f"  {100 * n / total:5.1f}%  {key}" for key, n in self_time.most_common(top)]
    lines += ["", "inclusive time:"]
    lines += [f"  {100 * n / total:5.1f}%  {key}" for key, n in inclusive.most_common(top)]
    lines += ["", "self time by package of the leaf frame:"]
    lines += [f"  {100 * n / total:5.1f}%  {key}" for key, n in files.most_common(12)]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=20)
    args = parser.parse_args()
    print(summarise(args.profile, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
