"""``python -m sepo_ray.design TASK``: the same command as ``sepo-ray design TASK`` (:mod:`sepo_ray.cli.design`)."""

import sys

from sepo_ray.cli.design import main

if __name__ == "__main__":
    sys.exit(main())
