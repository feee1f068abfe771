"""``python -m sepo_ray.pretrain TASK``: the same command as ``sepo-ray pretrain TASK`` (:mod:`sepo_ray.cli.pretrain`)."""

import sys

from sepo_ray.cli.pretrain import main

if __name__ == "__main__":
    sys.exit(main())
