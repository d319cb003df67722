"""Baselines of `rote bench text`: what people use from Python for n-gram membership.

- rbloom (a Rust Bloom filter for Python): Bloom(expected_items, fp) filled with every
  n-gram inside a document, then queried; its default hash is Python's hash() of the key.
- a Python set of the same n-grams, the exact answer.

An n-gram is the bytes slice of its n tokens in the token file (n·width bytes): the
cheapest hashable key Python has for it (a tuple of ints is slower to build and larger).
Queries are every n-gram of two probe sequences: a run of corpus tokens (members) and
random tokens (almost surely not members: the false-positive rate).

Usage: python3 text_rbloom.py --dir DIR, with DIR/meta.json {tokens, width, n, fp,
docs: [[start, end], ...], modes}, DIR/members.bin and DIR/random.bin (probe token
sequences in the same width). Prints JSON: seconds, counts, bits and bytes.
Install: pip install --target .tools/py rbloom (scripts/bench.sh does).
"""

import argparse
import json
import os
import sys
import time


def ngrams(raw, width, n, start, end):
    step = width
    span = n * width
    for i in range(start * step, (end - n + 1) * step, step):
        yield raw[i:i + span]


def probes(path, width, n):
    raw = open(path, "rb").read()
    count = len(raw) // width - n + 1
    return [raw[i * width:(i + n) * width] for i in range(count)]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    a = ap.parse_args()
    meta = json.load(open(os.path.join(a.dir, "meta.json")))
    raw = open(meta["tokens"], "rb").read()
    width, n, fp = meta["width"], meta["n"], meta["fp"]
    docs = [(s, e) for s, e in meta["docs"] if e - s >= n]
    positions = sum(e - s - n + 1 for s, e in docs)
    members = probes(os.path.join(a.dir, "members.bin"), width, n)
    rand = probes(os.path.join(a.dir, "random.bin"), width, n)
    out = {"python": sys.version.split()[0], "positions": positions, "queries": len(members) + len(rand)}

    if "rbloom" in meta["modes"]:
        import rbloom

        out["rbloom"] = getattr(rbloom, "__version__", "1.5")
        t0 = time.perf_counter()
        b = rbloom.Bloom(positions, fp)
        for s, e in docs:
            b.update(ngrams(raw, width, n, s, e))
        out["rbloom_build_seconds"] = time.perf_counter() - t0
        out["rbloom_bits"] = b.size_in_bits
        t0 = time.perf_counter()
        hit_m = sum(1 for g in members if g in b)
        hit_r = sum(1 for g in rand if g in b)
        out["rbloom_query_seconds"] = time.perf_counter() - t0
        out["rbloom_member_hits"] = hit_m
        out["rbloom_random_hits"] = hit_r
        del b

    if "set" in meta["modes"]:
        t0 = time.perf_counter()
        s = set()
        for d0, d1 in docs:
            s.update(ngrams(raw, width, n, d0, d1))
        out["set_build_seconds"] = time.perf_counter() - t0
        # The hash table plus its keys (each a bytes object).
        out["set_bytes"] = sys.getsizeof(s) + sum(sys.getsizeof(g) for g in s)
        out["set_distinct"] = len(s)
        t0 = time.perf_counter()
        hit_m = sum(1 for g in members if g in s)
        hit_r = sum(1 for g in rand if g in s)
        out["set_query_seconds"] = time.perf_counter() - t0
        out["set_member_hits"] = hit_m
        out["set_random_hits"] = hit_r

    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
