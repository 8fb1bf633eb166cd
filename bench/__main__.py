"""Run every benchmark: ``python -m bench [--quick]`` (``make bench``)."""

from __future__ import annotations

import argparse

from bench import preprocess, ps, quality, train, tune
from bench.moto_s3 import MotoUnavailable


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="small inputs, for a smoke run")
    args = parser.parse_args()
    preprocess.main(["--rows", "100000"] if args.quick else [])
    train.main(["--rows", "100000"] if args.quick else [])
    # The same comparison with the data and every exchange through storage in an S3 API (moto on loopback).
    try:
        train.main(["--workers", "1", "--rounds", "1", "--storage", "s3",
                    *(["--rows", "100000", "--cap", "20"] if args.quick else ["--cap", "150"])])
    except MotoUnavailable as error:
        print(f"  train on S3 skipped: {error}")
    quality.main([])
    tune.main(["--rows", "50000", "--epochs", "3"] if args.quick else [])
    ps.main(["--quick"] if args.quick else [])


if __name__ == "__main__":
    main()
