"""The reaper of a local Ray runtime: when the driver that started it dies, however it dies, its Ray processes go.

``init_ray`` starts ``python -m sepo_ray.reaper SESSION_DIR PID ...`` in a session of its own, with a pipe from
the driver on its stdin, after starting a local Ray runtime. The pipe closes when the driver exits, a SIGKILL
included (the kernel closes a dead process's files). Then, after a short grace period in which a clean
``ray.shutdown()`` finishes its own work, the reaper kills what is left of that runtime: the processes the driver
started (listed on the command line, each checked by its creation time) and any process whose command line or
open files lie in the runtime's session folder (Ray's agents and workers). A driver that joined an existing
cluster starts no reaper.
"""

from __future__ import annotations

import os
import sys
import time


def session_processes(session_dir: str, pids: list[tuple[int, float]]) -> list:
    """The live processes of a Ray session: ``pids`` ((pid, create_time) of the processes the driver started,
    still the same processes) and any process that names ``session_dir`` or holds a file inside it."""
    import psutil

    found = {}
    for pid, created in pids:
        try:
            proc = psutil.Process(pid)
            if abs(proc.create_time() - created) < 1e-3:
                found[pid] = proc
        except psutil.Error:
            pass
    for proc in psutil.process_iter(["pid", "cmdline"]):
        if proc.pid in found or proc.pid == os.getpid():
            continue
        try:
            if any(session_dir in arg for arg in proc.info["cmdline"] or ()) or any(
                f.path.startswith(session_dir) for f in proc.open_files()
            ):
                found[proc.pid] = proc
        except psutil.Error:
            pass
    return list(found.values())


def reap(session_dir: str, pids: list[tuple[int, float]], grace_s: float = 2.0) -> int:
    """Terminate, then kill, the session's processes; returns how many were still alive after ``grace_s``."""
    import psutil

    time.sleep(grace_s)
    procs = session_processes(session_dir, pids)
    for proc in procs:
        try:
            proc.terminate()
        except psutil.Error:
            pass
    _, alive = psutil.wait_procs(procs, timeout=3)
    for proc in alive:
        try:
            proc.kill()
        except psutil.Error:
            pass
    return len(procs)


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    session_dir, pids = args[0], [(int(p), float(t)) for p, t in (a.split("@") for a in args[1:])]
    sys.stdin.buffer.read()  # blocks until the driver's end of the pipe closes: the driver has exited
    reap(session_dir, pids)
    return 0


if __name__ == "__main__":
    sys.exit(main())
