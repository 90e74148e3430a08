#!/usr/bin/env python3
"""Where a process's threads go to sleep: reads `perf script -F comm,ip,sym` output of a
`perf record -e sched:sched_switch -g` capture on stdin and prints, per thread name, the share of
context switches and the most common user-space call chains that led to them (innermost first).

  perf record -e sched:sched_switch -g -p PID -o s.data -- sleep 2
  perf script -i s.data -F comm,ip,sym | scripts/offcpu_summary.py [--frames N] [--top N]
"""
import argparse
import collections
import sys


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=5, help="user frames per chain")
    ap.add_argument("--top", type=int, default=8, help="chains per thread name")
    args = ap.parse_args()
    per_comm = collections.Counter()
    chains = collections.defaultdict(collections.Counter)
    total = 0
    for block in sys.stdin.read().split("\n\n"):
        lines = [l.strip() for l in block.strip().splitlines() if l.strip()]
        if not lines:
            continue
        comm = lines[0].split()[0]
        frames = []
        for l in lines[1:]:
            parts = l.split(None, 1)
            sym = parts[1] if len(parts) > 1 else "?"
            sym = sym.split("+0x")[0]
            frames.append(sym)
        # Kernel frames come first; keep what user code was doing.
        user = [f for f in frames if not f.startswith(("__schedule", "schedule", "futex", "do_", "__x64", "entry_",
                                                        "x64_sys", "__sys", "sys_", "ep_", "do_syscall"))]
        user = [f for f in user if "[unknown]" not in f]
        per_comm[comm] += 1
        chains[comm][" < ".join(f[:60] for f in user[: args.frames])] += 1
        total += 1
    print(f"{total} context switches")
    for comm, n in per_comm.most_common():
        print(f"{comm}: {n} ({100.0 * n / max(total, 1):.1f}%)")
        for chain, k in chains[comm].most_common(args.top):
            print(f"  {100.0 * k / n:5.1f}%  {chain}")


if __name__ == "__main__":
    main()
