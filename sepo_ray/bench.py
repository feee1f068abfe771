"""``python -m sepo_ray.bench``: the same command as ``sepo-ray bench`` (:mod:`sepo_ray.cli.bench`)."""

import sys

from sepo_ray.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
