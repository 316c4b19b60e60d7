"""The supervisor of one process-runtime attempt.

Run as ``python -m moorage.runtime.shim <attempt dir>``.  It forks once and
the first process exits at once, so the supervisor is nobody's child and
outlives the moorage process that launched it.  The supervisor then:

1. takes an exclusive lock on ``<dir>/lock`` and gives up if another
   supervisor holds it, or if ``shim.json`` or ``exit.json`` already exists
   (an earlier supervisor ran this attempt: it is never run twice);
2. writes ``shim.json`` (its pid, its start time in clock ticks from
   ``/proc/<pid>/stat``, the boot id) so a reused pid is never taken for it;
3. runs the agent in a session of its own with stdout to ``<dir>/stdout``,
   stderr to ``<dir>/stderr`` and the resource limits of ``launch.json``,
   and adds the agent's pid and start time to ``shim.json``;
4. on SIGTERM (a stop; the grace is read from ``stop.json``) or at the
   deadline, sends SIGTERM to the agent's process group and SIGKILL after the
   grace;
5. when the agent ends, kills whatever is left of its process group and
   writes ``exit.json`` atomically (temporary file, then ``os.replace``).

It imports nothing from moorage, so it starts fast.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

_TICK = 0.02
#: Exit code recorded when the agent command could not be executed.
_NOT_RUN = 127


def process_start_time(pid: int) -> int | None:
    """Field 22 of ``/proc/<pid>/stat``; None if no such live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] in ("Z", "X"):  # a zombie has ended; it only awaits reaping
        return None
    return int(fields[19])


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def write_json(path: Path, document: dict[str, Any]) -> None:
    """Write ``document`` to ``path`` atomically."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w") as file:
        json.dump(document, file)
        file.flush()
        os.fsync(file.fileno())
    os.replace(tmp, path)


class _Supervisor:
    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.launch = json.loads((folder / "launch.json").read_text())
        self.stop_requested = False
        self.timed_out = False
        self.kill_at: float | None = None

    def run(self) -> None:
        started_at = time.time()
        me = {
            "pid": os.getpid(),
            "starttime": process_start_time(os.getpid()),
            "boot_id": boot_id(),
            "started_at": started_at,
        }
        signal.signal(signal.SIGTERM, self._on_term)
        write_json(self.folder / "shim.json", me)
        try:
            agent = self._spawn()
        except OSError as exc:
            (self.folder / "stderr").write_text(f"moorage: cannot run agent: {exc}\n")
            self._finish(_NOT_RUN, started_at)
            return
        me.update(agent_pid=agent.pid, agent_starttime=process_start_time(agent.pid))
        write_json(self.folder / "shim.json", me)
        code = self._supervise(agent)
        self._signal_group(agent.pid, signal.SIGKILL)
        self._finish(code, started_at)

    def _spawn(self) -> subprocess.Popen[bytes]:
        memory = self.launch.get("memory_bytes")

        def limit() -> None:
            if memory:
                resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

        with (
            open(self.folder / "stdout", "ab") as out,
            open(self.folder / "stderr", "ab") as err,
        ):
            return subprocess.Popen(
                self.launch["command"],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=self.launch["env"],
                cwd=self.folder,
                start_new_session=True,
                preexec_fn=limit,
            )

    def _supervise(self, agent: subprocess.Popen[bytes]) -> int:
        deadline = self.launch.get("deadline")
        while (code := agent.poll()) is None:
            if self.kill_at is None:
                if self.stop_requested:
                    self._terminate(agent.pid, self._stop_grace())
                elif deadline is not None and time.time() >= deadline:
                    self.timed_out = True
                    self._terminate(agent.pid, float(self.launch["grace"]))
            elif time.monotonic() >= self.kill_at:
                self._signal_group(agent.pid, signal.SIGKILL)
            time.sleep(_TICK)
        return code if code >= 0 else 128 - code

    def _terminate(self, pgid: int, grace: float) -> None:
        self._signal_group(pgid, signal.SIGTERM)
        self.kill_at = time.monotonic() + max(grace, 0.0)

    def _stop_grace(self) -> float:
        try:
            return float(json.loads((self.folder / "stop.json").read_text())["grace"])
        except (OSError, ValueError, KeyError, TypeError):
            return float(self.launch["grace"])

    def _on_term(self, signum: int, frame: object) -> None:
        self.stop_requested = True

    @staticmethod
    def _signal_group(pgid: int, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):  # the group is gone
            os.killpg(pgid, signum)

    def _finish(self, code: int, started_at: float) -> None:
        result = {
            "exit_code": code,
            "started_at": started_at,
            "finished_at": time.time(),
            "timed_out": self.timed_out,
        }
        write_json(self.folder / "exit.json", result)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        sys.stderr.write("usage: python -m moorage.runtime.shim <attempt dir>\n")
        return 2
    folder = Path(argv[1])
    if os.fork() > 0:
        return 0
    with open(folder / "lock", "a") as lock:  # held for the supervisor's life
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return 0  # another supervisor runs this attempt
        if (folder / "shim.json").exists() or (folder / "exit.json").exists():
            return 0  # an earlier supervisor ran it: never twice
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        _Supervisor(folder).run()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
