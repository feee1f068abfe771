"""``python -m sepo_ray.sweep``: the same command as ``sepo-ray sweep`` (:mod:`sepo_ray.cli.sweep`)."""

import sys

from sepo_ray.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
