"""Generate the embedded synthetic VOC 2007-format dataset.

python scripts/make_synthetic_voc.py --out data/synthetic_voc --trainval 200 --test 100
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from tqdm import tqdm

from voc_jax.data.synthetic import SyntheticConfig, generate


def main() -> int:
    defaults = SyntheticConfig()
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True, help="the VOC2007 directory to write")
    parser.add_argument("--trainval", type=int, default=defaults.num_trainval)
    parser.add_argument("--test", type=int, default=defaults.num_test)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--min-side", type=int, default=defaults.min_side)
    parser.add_argument("--max-side", type=int, default=defaults.max_side)
    parser.add_argument("--force", action="store_true", help="replace --out if it exists")
    args = parser.parse_args()
    config = SyntheticConfig(
        num_trainval=args.trainval,
        num_test=args.test,
        seed=args.seed,
        min_side=args.min_side,
        max_side=args.max_side,
    )
    start = time.perf_counter()
    try:
        out = generate(
            args.out,
            config,
            overwrite=args.force,
            progress=lambda r: tqdm(r, desc="generating", unit="img"),
        )
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    total = args.trainval + args.test
    print(f"wrote {total} images to {out} in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    from voc_jax.cli import run_guarded

    sys.exit(run_guarded(main))
