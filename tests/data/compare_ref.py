#!/usr/bin/env python3
"""Two reference files of the same script (make_arch_ref.py or make_gemma3_ref.py), e.g. the one
checked in (made on this CPU) and one made again on the device's GPU: are the sequences the same,
how many scored positions keep their top-1, and how far apart are the log-probs.
usage: compare_ref.py CHECKED_IN.txt OTHER.txt   (exit 1 if a sequence or a top-1 differs)"""
import sys


def load(path):
    ids, rows = {}, {}
    for line in open(path):
        f = line.split()
        if not f or f[0].startswith("#"):
            continue
        if f[0] == "ids":
            ids[tuple(f[1:3] if not f[1].isdigit() else f[1:2])] = f[3:] if not f[1].isdigit() else f[2:]
            continue
        k = 3 if not f[0].isdigit() else 2          # arch seq pos | seq pos
        rows[tuple(f[:k])] = (f[k], float(f[k + 1]), f[k + 2], [float(x) for x in f[k + 3::2]])
    return ids, rows


def main():
    (ia, ra), (ib, rb) = load(sys.argv[1]), load(sys.argv[2])
    same_ids = ia == ib
    keys = sorted(set(ra) & set(rb))
    top1 = sum(ra[k][2] == rb[k][2] for k in keys)
    worst = max((abs(ra[k][1] - rb[k][1]) for k in keys), default=float("nan"))
    print("%s vs %s: sequences %s; %d of %d positions in both (%d, %d); top-1 equal at %d; "
          "largest |next-token log-prob difference| %.3g" % (sys.argv[1], sys.argv[2], "identical" if same_ids else "DIFFER",
                                                            len(keys), max(len(ra), len(rb)), len(ra), len(rb), top1, worst))
    sys.exit(0 if same_ids and top1 == len(keys) == len(ra) == len(rb) else 1)


if __name__ == "__main__":
    main()
