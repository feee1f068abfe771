"""``python -m sepo_ray.frontier TASK``: the same command as ``sepo-ray frontier TASK`` (:mod:`sepo_ray.cli.compare`)."""

import sys

from sepo_ray.cli.compare import frontier_main

if __name__ == "__main__":
    sys.exit(frontier_main())
