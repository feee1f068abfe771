"""``python -m sepo_ray.compare TASK``: the same command as ``sepo-ray compare TASK`` (:mod:`sepo_ray.cli.compare`)."""

import sys

from sepo_ray.cli.compare import compare_main

if __name__ == "__main__":
    sys.exit(compare_main())
