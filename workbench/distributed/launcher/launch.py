"""Run a command on N processes with torchrun, stream its logs, and gather every rank's results JSON.

The command after ``--`` is one of:
- a workbench command (``train --preset glm4-tiny ...``): each worker runs ``python -m workbench train ...``;
- a Python script (``path/to/script.py args``);
- a module (``-m package.module args``).
Workers find ``WORKBENCH_RESULTS_DIR`` in their environment; ``write_rank_results(payload)`` writes
``rank{RANK}.json`` there, and ``launch()`` returns those dicts in rank order.

torchrun (``python -m torch.distributed.run``) does the real work: rendezvous, one process per rank, restarts of
the whole group on failure (``max_restarts``). We only build its argv. Used by ``workbench launch`` and
notebooks/03_distributed.ipynb.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from workbench.errors import ConfigError
from workbench.results import write_json_atomic

RESULTS_ENV = "WORKBENCH_RESULTS_DIR"
MAX_TIMEOUT_S = 30 * 24 * 3600.0  # 30 days: beyond any real run, and far below what threading.Timer overflows at


def check_timeout(timeout_s: float | None, name: str = "timeout") -> float | None:
    """None (no limit) or a finite number of seconds in (0, 30 days]; anything else is a ConfigError."""
    if timeout_s is None:
        return None
    try:
        value = float(timeout_s)
    except (TypeError, ValueError):
        raise ConfigError(f"{name}={timeout_s!r} must be a number of seconds") from None
    if not (math.isfinite(value) and 0 < value <= MAX_TIMEOUT_S):
        raise ConfigError(f"{name}={timeout_s!r} must be a number of seconds > 0 and <= {MAX_TIMEOUT_S:.0f} "
                          "(30 days)")
    return value


@dataclass
class LaunchConfig:
    """torchrun settings. One node by default; for several give nnodes, node_rank and rdzv_endpoint on each."""

    nproc: int = 2
    nnodes: int = 1
    node_rank: int = 0
    rdzv_endpoint: str | None = None  # HOST:PORT of node 0's rendezvous; None on one node = a free local port
    rdzv_id: str = "workbench"
    max_restarts: int = 0
    monitor_interval_s: float = 0.5  # how often torchrun checks its workers (its default, 5 s, slows restarts)
    threads_per_proc: int | None = None  # OMP_NUM_THREADS per worker; None = the caller's OMP_NUM_THREADS if set,
    #                                      else cores // nproc (at least 1)

    def __post_init__(self):
        if self.nproc < 1:
            raise ConfigError(f"nproc={self.nproc}: need at least 1 process per node")
        if self.nnodes < 1:
            raise ConfigError(f"nnodes={self.nnodes}: need at least 1 node")
        if not 0 <= self.node_rank < self.nnodes:
            raise ConfigError(f"node_rank={self.node_rank} must be in [0, nnodes={self.nnodes})")
        if self.max_restarts < 0:
            raise ConfigError(f"max_restarts={self.max_restarts} must be >= 0")
        if self.nnodes > 1 and not self.rdzv_endpoint:
            raise ConfigError(f"nnodes={self.nnodes}: give --rdzv-endpoint HOST:PORT (node 0's address), the "
                              "same on every node")
        if self.rdzv_endpoint:
            host, sep, port = self.rdzv_endpoint.rpartition(":")
            if not sep or not host or not port.isdigit():
                raise ConfigError(f"rdzv_endpoint={self.rdzv_endpoint!r} must be HOST:PORT, e.g. node0:29500")
            if not 0 < int(port) <= 65535:
                raise ConfigError(f"rdzv_endpoint={self.rdzv_endpoint!r}: port {int(port)} must be in 1..65535")

    @property
    def world_size(self) -> int:
        return self.nproc * self.nnodes


@dataclass
class LaunchResult:
    returncode: int
    run_dir: Path
    results: list[dict | None] = field(default_factory=list)  # this node's ranks, sorted by rank; None: wrote none
    log: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    errors: list[str] = field(default_factory=list)  # "rank R: SomeError: message" per failed rank, root cause first

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def timed_out(self) -> bool:
        return self.returncode == 124

    @property
    def user_error(self) -> bool:
        """The run failed only because of bad input: every rank that exited (rather than being killed) exited 2, the
        workbench CLI's user-error status, per torchrun's report; where there is no report, every failed rank ended
        in a one-line CLI error."""
        if self.ok or self.timed_out:
            return False
        codes = _failure_exit_codes(self.log)
        if codes:  # negative: killed by a signal, usually torchrun stopping the others after the first failure
            exited = [code for code in codes if code >= 0]
            return bool(exited) and all(code == 2 for code in exited)
        causes = [e.split(": ", 1)[-1] for e in self.errors]
        return bool(causes) and all(_CLI_ERROR.match(c) for c in causes)

    @property
    def cli_returncode(self) -> int:
        """The exit status for a command line: 0 on success, 124 on timeout, 2 when the ranks failed on bad input
        (see ``user_error``), else 1 (torchrun's own status says no more than "a worker failed")."""
        if self.ok or self.timed_out:
            return self.returncode
        return 2 if self.user_error else 1

    def failure_summary(self) -> str:
        """One line for a failed run: each failing rank's own error (or torchrun's), and where the logs are."""
        where = f"logs in {self.run_dir}"
        if self.timed_out:
            return f"timed out after {self.wall_s:.0f}s, run stopped; {where}"
        if self.errors:
            parts = []
            for error in self.errors[:3]:
                ranks, _, cause = error.partition(": ")
                parts.append(f"{ranks} failed: {cause}")
            if len(self.errors) > 3:
                parts.append(f"and {len(self.errors) - 3} more")
            return "; ".join(parts) + f"; {where}"
        own = root_cause("\n".join(line for line in self.log if not is_worker_line(line)))
        if own:
            return f"torchrun failed (exit {self.returncode}): {own}; {where}"
        return f"failed (exit {self.returncode}) and no rank logged an error; {where}"

    def check(self) -> "LaunchResult":
        """Raise if the run failed: the ranks' own errors first, then the log's tail (torchrun's report)."""
        if not self.ok:
            message = f"distributed run failed (exit {self.returncode})"
            if self.errors:
                message += ":\n" + "\n".join(f"  {e}" for e in self.errors)
                message += f"\n(each rank's whole stderr: {self.run_dir / 'logs'}/*/attempt_*/<rank>/stderr.log)"
            tail = "\n".join(self.log[-40:])
            raise RuntimeError(f"{message}\nlast log lines:\n{tail}")
        return self


# What a worker's stderr ends with when it fails: a traceback's final "SomeError: message" line, or the workbench
# CLI's one-line "workbench CMD: error: message" (user errors print no traceback). torch prefixes the lines of an
# uncaught exception with "[rankN]: " once a process group exists.
_RANK_PREFIX = re.compile(r"^\[rank\d+\]: ?")
_CLI_ERROR = re.compile(r"^workbench(?: [\w-]+)?: error: ")


_WORKER_LINE = re.compile(r"^\[[A-Za-z_]+\d+\]:")  # torchrun's --tee prefix: "[default0]:..." per local rank


def is_worker_line(line: str) -> bool:
    """True for a line a worker printed (torchrun tees it with a "[default<rank>]:" prefix), False for torchrun's
    own log lines, tracebacks and failure report."""
    return bool(_WORKER_LINE.match(line))


def print_worker_lines(line: str) -> None:
    """An ``on_line`` for command lines: the workers' own output on stdout; torchrun's lines stay in launch.log."""
    if is_worker_line(line):
        print(line, flush=True)


def root_cause(stderr: str, max_chars: int = 500) -> str | None:
    """The last error line in a worker's stderr (see above), or None when it shows none (e.g. killed)."""
    found, in_traceback = None, False
    for line in stderr.splitlines():
        line = _RANK_PREFIX.sub("", line)
        if line.startswith("Traceback (most recent call last):"):
            in_traceback = True
        elif in_traceback and line.strip() and not line.startswith((" ", "\t")):
            found, in_traceback = line.strip(), False  # the first unindented line after the frames
        elif _CLI_ERROR.match(line):
            found = line.strip()
    if found and len(found) > max_chars:
        found = found[:max_chars] + "..."
    return found


def rank_errors(log_dirs: Sequence[Path], log: Sequence[str] = ()) -> list[str]:
    """"rank R: error line" for each failed rank; ranks with the same error share a line. The error is the last one
    in the rank's stderr.log (under torchrun's ``--log-dir`` subfolders, last attempt only); a rank torchrun reports
    killed by a signal is "killed by SIGKILL" (the out-of-memory killer's signal); one that exited non-zero without
    an error line gets its stderr's last line (``raise SystemExit("...")``). Order: torchrun's first observed failure,
    then the rest; "connection closed by peer" errors (ranks that lost a crashed peer) come after all others."""
    by_rank: dict[int, str] = {}
    last_line: dict[int, str] = {}
    for log_dir in log_dirs:
        attempts = sorted(log_dir.glob("attempt_[0-9]*"), key=lambda p: int(p.name[len("attempt_"):]))
        for rank_dir in attempts[-1].iterdir() if attempts else ():  # named by local rank (= rank on one node)
            stderr = rank_dir / "stderr.log"
            if rank_dir.name.isdigit() and stderr.is_file():
                text = stderr.read_text(encoding="utf-8", errors="replace")
                cause = root_cause(text)
                if cause:
                    by_rank[int(rank_dir.name)] = cause
                lines = [_RANK_PREFIX.sub("", line).strip() for line in text.splitlines() if line.strip()]
                if lines:
                    last_line[int(rank_dir.name)] = lines[-1][:500]
    first = _first_failure(log)
    for rank, code in _reported_failures(log).items():
        if rank in by_rank:
            continue
        if code < 0:
            name = _signal_name(-code)
            if name != "SIGTERM" or rank == first:  # SIGTERM: torchrun stopping the survivors, not a cause
                by_rank[rank] = f"killed by {name}" + (" (out of memory? the kernel's OOM killer sends SIGKILL)"
                                                       if name == "SIGKILL" else "")
        elif code > 0 and rank in last_line:
            by_rank[rank] = last_line[rank]
    # a lost peer is a consequence even when torchrun saw that rank fail first (both died in one poll)
    order = sorted(by_rank, key=lambda r: (bool(_LOST_PEER.search(by_rank[r])), r != first, r))
    grouped: dict[str, list[int]] = {}
    for rank in order:
        grouped.setdefault(by_rank[rank], []).append(rank)
    return [f"rank{'s' if len(ranks) > 1 else ''} {', '.join(map(str, sorted(ranks)))}: {cause}"
            for cause, ranks in grouped.items()]


# A rank whose peer crashed fails too, with one of these; it is a consequence, so it is listed after the cause.
_LOST_PEER = re.compile(r"(closed|reset) by peer|broken pipe|connection refused", re.IGNORECASE)


def _signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def _reported_failures(log: Sequence[str]) -> dict[int, int]:
    """local rank -> exit code, from torchrun's ChildFailedError report ("rank : 1 (local_rank: 1)" followed by
    "exitcode : -9 (pid: ...)"); empty when there is no report."""
    failures, rank = {}, None
    for line in log:
        match = re.search(r"local_rank: (\d+)\)", line)
        if match and re.match(r"^\s*rank\s*:", line):
            rank = int(match.group(1))
            continue
        match = re.match(r"^\s*exitcode\s*:\s*(-?\d+)", line)
        if match and rank is not None:
            failures[rank] = int(match.group(1))
            rank = None
    return failures


def _first_failure(log: Sequence[str]) -> int | None:
    """The local rank torchrun's ChildFailedError report names as "Root Cause (first observed failure)"."""
    seen_root = False
    for line in log:
        if "Root Cause" in line:
            seen_root = True
        match = re.search(r"local_rank: (\d+)\)", line) if seen_root else None
        if match:
            return int(match.group(1))
    return None


def _failure_exit_codes(log: Sequence[str]) -> list[int]:
    """The exit codes torchrun's ChildFailedError report gives for the failed ranks (empty when there is none)."""
    codes = []
    for line in log:
        match = re.match(r"^\s*exitcode\s*:\s*(-?\d+)", line)
        if match:
            codes.append(int(match.group(1)))
    return codes


def free_port() -> int:
    """A TCP port that was free a moment ago (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def worker_argv(command: Sequence[str]) -> list[str]:
    """The part of torchrun's argv after its own flags: what each worker runs."""
    command = list(command)
    if command and command[0] == "--":
        command = command[1:]
    if not command:
        raise ConfigError("nothing to launch: give a command after `--`, e.g. `-- train --preset glm4-tiny`")
    if command[0] in ("-m", "--module"):
        if len(command) < 2:
            raise ConfigError("`-m` needs a module name, e.g. `-- -m mypackage.worker`")
        return ["-m", *command[1:]]
    if command[0].endswith(".py"):
        if not Path(command[0]).exists():
            raise FileNotFoundError(f"script {command[0]!r} does not exist")
        return command
    from workbench.cli import COMMANDS

    if command[0] in COMMANDS:
        return ["-m", "workbench", *command]
    raise ConfigError(f"cannot launch {command[0]!r}: give a workbench command ({', '.join(COMMANDS)}), "
                      "a .py script, or `-m module`")


def torchrun_argv(config: LaunchConfig, command: Sequence[str], log_dir: str | Path | None = None) -> list[str]:
    """torchrun's full argv (without the interpreter) for ``command`` under ``config``."""
    argv = ["--nproc-per-node", str(config.nproc), "--nnodes", str(config.nnodes),
            "--max-restarts", str(config.max_restarts), "--monitor-interval", str(config.monitor_interval_s)]
    if config.nnodes == 1 and not config.rdzv_endpoint:
        argv += ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "--rdzv-id",
                 config.rdzv_id]
    else:
        argv += ["--node-rank", str(config.node_rank), "--rdzv-backend", "c10d", "--rdzv-endpoint",
                 config.rdzv_endpoint, "--rdzv-id", config.rdzv_id]
    if log_dir is not None:
        # Per-rank log files under log_dir, and every line also on the console prefixed "[default<rank>]:".
        argv += ["--log-dir", str(log_dir), "--tee", "3"]
    work = worker_argv(command)
    if work[0] == "-m":
        argv += ["--module", *work[1:]]
    else:
        argv += work
    return argv


def rank_results_path(rank: int | None = None, results_dir: str | Path | None = None) -> Path | None:
    """Where rank ``rank`` (default: this process's RANK) writes its results, or None outside a launch."""
    results_dir = results_dir or os.environ.get(RESULTS_ENV)
    if not results_dir:
        return None
    rank = int(os.environ.get("RANK", 0)) if rank is None else rank
    return Path(results_dir) / f"rank{rank}.json"


def write_rank_results(payload: dict[str, Any]) -> Path | None:
    """A worker's last step: write its results dict for the launcher to collect (no-op outside a launch)."""
    path = rank_results_path()
    return write_json_atomic(path, payload) if path else None


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP reached the launcher while torchrun ran (``timeout``, a CI runner, a closed terminal).
    torchrun runs in its own session, so the signal does not reach it: raising this lets ``launch`` stop torchrun
    and its workers as it does on Ctrl-C. A KeyboardInterrupt, so callers that handle Ctrl-C handle it too."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"stopped by {signal.Signals(signum).name}")
        self.signum = signum


@contextlib.contextmanager
def _stop_workers_on_termination():
    """While the block runs, SIGTERM / SIGHUP raise ``Terminated`` (once; later ones are ignored while the workers
    are being stopped). Python lets only the main thread install handlers: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    raised = []

    def handler(signum, _frame):
        if not raised:
            raised.append(signum)
            raise Terminated(signum)

    wanted = [getattr(signal, name) for name in ("SIGTERM", "SIGHUP") if hasattr(signal, name)]
    previous = {signum: signal.signal(signum, handler) for signum in wanted}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


LOCAL_HOSTS = ("127.0.0.1", "localhost", "0.0.0.0", "::1")


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent_hook() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes torchrun receive SIGTERM when the launcher dies, however it dies.

    torchrun runs in its own session so that a timeout can stop its whole group, which also keeps every signal to
    the launcher from reaching it: a SIGKILL of the launcher (kill -9, the OOM killer) left torchrun and every rank
    training as orphans, writing checkpoints into a run folder that refused the user's --resume. Linux's
    PR_SET_PDEATHSIG has the kernel send SIGTERM to torchrun when the thread that started it ends; torchrun then
    stops its workers. None (nothing to do) on other systems or where libc cannot be loaded."""
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl  # the process's own symbols: libc's (no ldconfig search)
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def die_with_parent() -> None:  # runs in the child between fork and exec: no imports, no allocations to speak of
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # the launcher died before the line above: no signal will come
            os.kill(os.getpid(), signal.SIGTERM)

    return die_with_parent


def check_rendezvous_port(config: LaunchConfig) -> None:
    """On one node with a given --rdzv-endpoint on this machine, fail now if its port is taken: torchrun waited
    silently for the holder to go away (another launch on the same endpoint, or any other program)."""
    if config.nnodes != 1 or not config.rdzv_endpoint:
        return
    host, _, port = config.rdzv_endpoint.rpartition(":")
    host = host.strip("[]")
    if host not in LOCAL_HOSTS and host != socket.gethostname():
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the rendezvous store binds: TIME_WAIT is ok
        try:
            probe.bind(("" if host == "0.0.0.0" else host, int(port)))
        except OSError as error:
            raise ConfigError(f"rendezvous port {port} on {host} is in use ({error.strerror or error}): another "
                              f"launch or program holds it; pick another port, or leave --rdzv-endpoint out on one "
                              f"node (a free port is chosen)") from None


def launch(command: Sequence[str], config: LaunchConfig | None = None, *, run_dir: str | Path = "runs/launch",
           on_line: Callable[[str], None] | None = print, timeout_s: float | None = None,
           env: dict[str, str] | None = None) -> LaunchResult:
    """Run ``command`` under torchrun; stream each log line to ``on_line``; return exit code, log and results.

    ``timeout_s`` kills the whole process group (torchrun and its workers) when exceeded (exit code 124).
    """
    config = config or LaunchConfig()
    timeout_s = check_timeout(timeout_s, "timeout_s")
    check_rendezvous_port(config)
    run_dir = Path(run_dir)
    results_dir = run_dir / "results"
    results_dir.mkdir(parents=True, exist_ok=True)
    for stale in results_dir.glob("rank*.json"):
        stale.unlink()
    # torchrun writes each launch's per-rank logs to a new subfolder of logs/; remember the old ones
    old_logs = set((run_dir / "logs").glob("*"))
    argv = [sys.executable, "-m", "torch.distributed.run",
            *torchrun_argv(config, command, log_dir=run_dir / "logs")]
    # The user's OMP_NUM_THREADS (e.g. a limit on a shared host) wins over the cores // nproc default.
    threads = config.threads_per_proc or os.environ.get("OMP_NUM_THREADS", "").strip() or \
        max(1, (os.cpu_count() or 1) // config.nproc)
    child_env = {**os.environ, RESULTS_ENV: str(results_dir.resolve()), "OMP_NUM_THREADS": str(threads),
                 "PYTHONUNBUFFERED": "1", **(env or {})}
    log: list[str] = []
    start = time.perf_counter()
    # A new session makes torchrun the leader of its own process group, so a timeout can end all of it; the
    # parent-death signal ends it when the launcher is killed outright.
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=child_env,
                            encoding="utf-8", errors="replace", start_new_session=True, bufsize=1,
                            preexec_fn=_die_with_parent_hook())
    timer = None
    timed_out = threading.Event()
    if timeout_s is not None:
        def _kill():
            timed_out.set()
            _kill_group(proc)
        timer = threading.Timer(timeout_s, _kill)
        timer.daemon = True
        timer.start()
    try:
        with _stop_workers_on_termination(), open(run_dir / "launch.log", "w", encoding="utf-8") as log_file:
            try:
                for line in proc.stdout:
                    line = line.rstrip("\n")
                    log.append(line)
                    log_file.write(line + "\n")
                    if on_line is not None:
                        on_line(line)
                proc.wait()
            except BaseException:  # Ctrl-C in a notebook, SIGTERM to the CLI: take the workers down with us
                _kill_group(proc)
                raise
    finally:
        if timer is not None:
            timer.cancel()
    code = 124 if timed_out.is_set() else proc.returncode
    # With a c10d rendezvous torchrun gives out global ranks in join order, not by --node-rank, so collect the
    # rank files this node's workers actually wrote (sorted by rank); None fills in for ranks that wrote none.
    if config.nnodes == 1:  # ranks 0..nproc-1 all live here: results[r] is rank r's (None where it wrote none)
        results = [_read_json(results_dir / f"rank{r}.json") if (results_dir / f"rank{r}.json").exists() else None
                   for r in range(config.nproc)]
    else:
        written = sorted(results_dir.glob("rank*.json"), key=lambda p: int(p.stem[len("rank"):]))
        results = [_read_json(p) for p in written]
        results += [None] * (config.nproc - len(results))
    errors = rank_errors(sorted(set((run_dir / "logs").glob("*")) - old_logs), log) if code else []
    return LaunchResult(code, run_dir, results, log, time.perf_counter() - start, errors)


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc; empty elsewhere). torchrun starts workers in their own sessions,
    so signalling torchrun's process group alone would leave them running."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """Stop torchrun and its workers: SIGTERM torchrun (it stops its workers), then SIGKILL whatever is left."""
    workers = _descendants(proc.pid)
    try:
        os.killpg(proc.pid, signal.SIGTERM)  # the group we created with start_new_session
        proc.wait(timeout=grace_s)
    except (ProcessLookupError, PermissionError, subprocess.TimeoutExpired):
        pass
    for pid in [proc.pid, *workers]:
        try:
            os.kill(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
