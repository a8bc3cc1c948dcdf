"""``python -m benchmarks.rd``: the rate–distortion benchmark's command line."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
