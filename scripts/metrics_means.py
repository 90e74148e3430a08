#!/usr/bin/env python3
"""Scrapes sageserve's /metrics (the URL given, else Prometheus text on stdin) and prints, per
histogram the server keeps, its count and mean (in microseconds for *_seconds), summed over label
sets: a quick stage breakdown of a bench run (scripts/device-stage-breakdown.sh)."""
import collections
import sys
import urllib.request

sums = collections.defaultdict(float)
counts = collections.defaultdict(float)
text = urllib.request.urlopen(sys.argv[1]).read().decode() if len(sys.argv) > 1 else sys.stdin.read()
for line in text.splitlines():
    if line.startswith("#") or not line.strip():
        continue
    name_labels, _, value = line.rpartition(" ")
    name = name_labels.split("{", 1)[0]
    if name.endswith("_sum"):
        sums[name[:-4]] += float(value)
    elif name.endswith("_count"):
        counts[name[:-6]] += float(value)
for name in sorted(counts):
    n = counts[name]
    if n == 0:
        continue
    mean = sums[name] / n
    if name.endswith("_seconds"):
        print(f"  {name:<48} n {n:>9.0f}  mean {mean * 1e6:9.1f} us")
    else:
        print(f"  {name:<48} n {n:>9.0f}  mean {mean:9.2f}")
