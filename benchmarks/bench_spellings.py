"""The random-network tally: gmlib.prune (verify on, its default) on N random small CNNs that spell the same ops in
the ways PyTorch allows (the generator of tests/test_spellings.py, tests/helpers/spelled_nets.py), each judged by
value against its masked float64 original (gmlib.verify.check_exact).

Counts: exact (params cut >= half the rate), partial (exact, less cut), refused (nothing cut, or a clear refusal:
NotExactError, or a TypeError / ValueError that left the model as it was) and wrong (a result that is not the masked
original, or a model left changed by a failure). The issue's target: 0 wrong. Networks are drawn by
random.Random(seed), so a run is repeatable; the largest refusal and holding-back reasons are listed.
"""
import argparse
import random
import sys
import time
import warnings
from collections import Counter
from pathlib import Path

import torch

import gmlib

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers.spelled_nets import SpelledNet, random_spec, verdict  # noqa: E402

X = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=300, help="random networks")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-verify", action="store_true", help="judge prune without its self-check")
    args = parser.parse_args()
    gmlib.set_deterministic(0, threads=1)
    rng, tally, reasons, wrong = random.Random(args.seed), Counter(), Counter(), []
    start = time.perf_counter()
    for i in range(args.n):
        blocks, head, seed, rate, policy = random_spec(rng)
        torch.manual_seed(seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            kind, why = verdict(SpelledNet(blocks, head), X, rate, policy, verify=not args.no_verify, strict=False)
        tally[kind] += 1
        if kind in ("refused", "partial"):
            reasons[(kind, (why or "").split("because: ")[-1].split(" (")[0].split("; ")[0][:70])] += 1
        if kind == "wrong":
            wrong.append((blocks, head, seed, rate, policy, why))
    seconds = time.perf_counter() - start
    print(f"{args.n} random networks (seed {args.seed}), verify={'off' if args.no_verify else 'on'}, "
          f"{seconds:.0f} s")
    print("  " + "   ".join(f"{k} {tally[k]}" for k in ("exact", "partial", "refused", "wrong")))
    for (kind, why), n in reasons.most_common(8):
        print(f"  {n:4d} {kind:8s} {why}")
    for w in wrong[:10]:
        print("  WRONG", w)


if __name__ == "__main__":
    main()
