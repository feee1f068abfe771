"""``python -m sepo_ray.export RUN --output DIR``: the same command as ``sepo-ray export`` (:mod:`sepo_ray.cli.export`)."""

import sys

from sepo_ray.cli.export import main

if __name__ == "__main__":
    sys.exit(main())
