"""``sepo-ray pretrain TASK [args]`` (``python -m sepo_ray.pretrain``): (re)build a task's pretrained artifacts with
its own command.

Each task brings its pretraining (``Task.pretrain``); ``python -m sepo_ray.pretrain TASK --help`` shows its
options. Outputs go to the task's ``--output`` folder, never over the artifacts shipped in the package.
"""

from __future__ import annotations

import sys


def main(argv: list[str] | None = None) -> int:
    from sepo_ray.tasks import available_tasks, get_task

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0].startswith("-"):
        print(
            __doc__.split("\n\n")[0] + f"\ninstalled tasks: {', '.join(available_tasks())}", file=sys.stderr
        )
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    try:
        task = get_task(argv[0])
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    try:
        return int(task.pretrain(argv[1:]) or 0)
    except (NotImplementedError, ValueError) as e:  # no pretraining, or a refused input or output folder
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
