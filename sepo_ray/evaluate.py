"""``python -m sepo_ray.evaluate TASK``: the same command as ``sepo-ray evaluate TASK`` (:mod:`sepo_ray.cli.evaluate`)."""

import sys

from sepo_ray.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
