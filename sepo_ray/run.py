"""``python -m sepo_ray.run TASK``: the same command as ``sepo-ray run TASK`` (:mod:`sepo_ray.cli.run`)."""

import sys

from sepo_ray.cli.run import main

if __name__ == "__main__":
    sys.exit(main())
