"""A run on several devices, or machines: its ranks, started by torch's elastic launcher.

The worker that claimed the run (the lead: its lease, its EventSink) runs the launcher's
agent (`elastic_launch`, what torchrun runs) in a thread of its own, with max_restarts 0:
a group that loses a rank ends, and the run, not the agent, decides what comes next
(resume from the newest checkpoint under a new attempt, as for a lost worker). The agent
starts `python -m worker.rank` per local device; global rank 0 connects back over
worker/channel.py and its events come out of `Group.events` as gpt.train's would.

For `nnodes` > 1 the lead publishes a `Plan` in Redis (api/redis_keys.group_key): the c10d
rendezvous endpoint (its agent hosts the store), its channel, the config. The other workers
get a `worker.train_join` message, read the plan and run their agents against it
(`Group.follow`): the launcher's rendezvous starts the group when all nnodes have joined,
or, after rendezvous_timeout_s, not at all.

Torch's launcher is imported here, in the worker; the ranks are separate processes that die
with it (worker/rank.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import signal
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from api.lifecycle import is_final

log = logging.getLogger(__name__)

ANSWERED = ("ok",)
STDERR_LINES = 6  # of a dead rank's stderr, in the run's reason
POLL_S = 0.05  # how often the lead looks at the line, the agent and the stop flags when quiet
ENDING_S = 30.0  # for the other ranks to end once rank 0 has sent its final status


class GroupError(Exception):
    """The group did not train to a final status: `reason` says why, in words for the run."""

    def __init__(self, reason: str, *, formed: bool):
        super().__init__(reason)
        self.reason, self.formed = reason, formed


@dataclass(frozen=True)
class Plan:
    """What every machine of a run's group needs to start its share of the ranks."""

    run_id: str
    attempt: int
    config: dict[str, Any]  # the TrainConfig, paths as the lead resolved them (a shared volume)
    nproc_per_node: int
    nnodes: int
    rdzv: str  # HOST:PORT of the c10d rendezvous store, hosted by the lead's agent
    channel: str  # HOST:PORT of the lead's end of rank 0's line
    key: str  # the line's secret, hex
    data_dir: str

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, raw: str | bytes) -> Plan:
        return cls(**json.loads(raw))


def node_addr(configured: str | None, nnodes: int) -> str:
    """Where this worker's rendezvous store and channel listen: loopback for a run on one
    machine, else the configured address or this machine's hostname's."""
    if nnodes == 1:
        return "127.0.0.1"
    return configured or socket.gethostbyname(socket.gethostname())


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class Group:
    """This machine's share of a run's ranks, under the launcher's agent in a thread."""

    def __init__(self, plan: Plan, *, lead: bool, log_dir: Path, threads: int, timeout_s: float, addr: str):
        self.plan, self.lead, self.log_dir = plan, lead, log_dir
        self.threads, self.timeout_s, self.addr = threads, timeout_s, addr
        self.error: BaseException | None = None
        self.end: Any = None  # the lead's WorkerEnd
        self.saw_rank0 = False
        self.thread = threading.Thread(target=self._agent, name=f"agent:{plan.run_id}", daemon=True)

    # --- starting -----------------------------------------------------------------------
    @classmethod
    def lead_for(
        cls, run_id: str, attempt: int, config: dict[str, Any], *, data_dir: str, log_dir: Path, settings: Any
    ) -> Group:
        """The lead's group: its channel open and its plan made (not started yet)."""
        from worker.channel import WorkerEnd

        nproc, nnodes = int(config["nproc_per_node"]), int(config["nnodes"])
        addr = node_addr(settings.node_addr, nnodes)
        key = secrets.token_bytes(32)
        end = WorkerEnd(addr, key)
        rdzv = f"{addr}:0" if nnodes == 1 else f"{addr}:{free_port(addr)}"
        plan = Plan(run_id, attempt, config, nproc, nnodes, rdzv, f"{addr}:{end.address[1]}", key.hex(), data_dir)
        g = cls(plan, lead=True, log_dir=log_dir, threads=_threads(settings, nproc), timeout_s=0, addr=addr)
        g.timeout_s = settings.rendezvous_timeout_s
        g.end = end
        return g

    @classmethod
    def follow(cls, plan: Plan, *, log_dir: Path, settings: Any) -> Group:
        addr = node_addr(settings.node_addr, plan.nnodes)
        return cls(
            plan,
            lead=False,
            log_dir=log_dir,
            threads=_threads(settings, plan.nproc_per_node),
            timeout_s=settings.rendezvous_timeout_s,
            addr=addr,
        )

    def start(self) -> Group:
        # The ranks inherit the environment: the key goes there, not on their command line.
        os.environ["GPTJOBS_CHANNEL_KEY"] = self.plan.key
        self.thread.start()
        return self

    def _agent(self) -> None:
        from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, Std
        from torch.distributed.launcher.api import LaunchConfig, elastic_launch

        p = self.plan
        spec = LaunchConfig(
            min_nodes=p.nnodes,
            max_nodes=p.nnodes,
            nproc_per_node=p.nproc_per_node,
            run_id=f"{p.run_id}-{p.attempt}",  # the rendezvous' name: the same on every machine
            rdzv_backend="c10d",
            rdzv_endpoint=p.rdzv,
            rdzv_configs={"is_host": self.lead, "join_timeout": int(self.timeout_s)},
            local_addr=self.addr,
            max_restarts=0,  # a lost rank ends the attempt; the run resumes from its checkpoint
            monitor_interval=0.1,
            logs_specs=DefaultLogsSpecs(log_dir=str(self.log_dir), redirects=Std.ALL, tee=Std.ERR),
        )
        args = ["-m", "worker.rank", "--config", json.dumps(p.config), "--channel", p.channel]
        args += ["--parent", str(os.getpid()), "--data-dir", p.data_dir, "--threads", str(self.threads)]
        try:
            elastic_launch(spec, sys.executable)(*args)
        except BaseException as e:  # the task reads it once the agent is done
            self.error = e

    # --- the lead: rank 0's events ------------------------------------------------------
    def events(
        self, should_stop: Callable[[], bool], fence: Callable[[], None], leaving: Callable[[], bool] = lambda: False
    ) -> Iterator[dict[str, Any]]:
        """Rank 0's events as gpt.train yields them, until it has sent its last; then raises
        GroupError if the group ended without a final status. should_stop is asked whenever
        the line is quiet or an event arrives (it rate-limits itself); its first True is
        sent to rank 0. Before rank 0 is there (a group still forming across machines), a
        stop ends the wait at once: GroupError(formed=False). An exception from should_stop
        or fence (the lease lost) goes to the caller, which then closes the group."""
        stop_sent = False
        while True:
            stop = should_stop() or leaving()
            conn = self.end.accept(0 if stop and self.plan.nnodes > 1 else POLL_S)
            if conn is None:
                if not self.thread.is_alive():
                    raise self._ended()
                if stop and self.plan.nnodes > 1:
                    raise GroupError("stopped while its group was forming", formed=False)
                continue
            self.saw_rank0 = True
            if stop and not stop_sent:
                conn.send(("stop",))
                stop_sent = True
            if not conn.poll(POLL_S):
                continue
            try:
                msg = conn.recv()
            except (EOFError, OSError):  # rank 0 is gone: its agent says how
                self.wait(ENDING_S)
                raise self._ended() from None
            if msg[0] == "iter":
                yield msg[1]
            elif msg[0] == "event":
                yield msg[1]  # handled (stored, named) before rank 0 hears "ok"
                conn.send(ANSWERED)
                if is_final(msg[1]):  # the ranks end now; how they end no longer matters to the run
                    if not self.wait(ENDING_S):
                        log.warning("run %s: ranks still running %.0f s after the end", self.plan.run_id, ENDING_S)
                    elif self.error is not None:
                        log.warning("run %s: after its end, the group failed: %s", self.plan.run_id, self.error)
                    return
            elif msg[0] == "fence":
                try:
                    fence()
                except Exception as e:
                    conn.send(("refused", str(e)))
                    raise
                conn.send(ANSWERED)

    def _ended(self) -> GroupError:
        """Why the group ended without a final event, from its agent's outcome."""
        from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
        from torch.distributed.elastic.rendezvous.api import RendezvousError

        e = self.error
        if isinstance(e, ChildFailedError):
            return GroupError(describe_failures(e.failures, self.log_dir), formed=True)
        if isinstance(e, RendezvousError):
            p = self.plan
            return GroupError(
                f"its group did not form: {p.nnodes} workers with {p.nproc_per_node} "
                f"device{'s' * (p.nproc_per_node > 1)} each did not all join within {self.timeout_s:g} s "
                f"(GPTJOBS_RENDEZVOUS_TIMEOUT_S; {type(e).__name__}: {e})",
                formed=False,
            )
        if e is not None:
            return GroupError(f"its launcher failed: {type(e).__name__}: {e}", formed=self.saw_rank0)
        return GroupError("its ranks ended without a final status", formed=True)

    # --- the end ------------------------------------------------------------------------
    def wait(self, timeout: float | None = None) -> bool:
        """Until the agent is done (its ranks ended); False if it is still running."""
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def close(self, timeout: float = 15.0) -> None:
        """Hang up on rank 0 (which then stops, and the agent ends the rest), wait for it;
        kill this machine's ranks that are still there after timeout. A rank can wait in a
        collective for one that has gone (rank 0 out of memory alone; NCCL then waits its
        whole timeout, minutes): it must not keep its device from the worker's next run."""
        if self.end is not None:
            self.end.close()
        if self.thread.is_alive() and not self.wait(timeout):
            killed = self.kill_ranks()
            log.warning(
                "run %s: its ranks did not end within %.0f s of the close; killed pids %s",
                self.plan.run_id,
                timeout,
                killed,
            )
            self.wait(timeout)

    def kill_ranks(self) -> list[int]:
        """SIGKILL this group's ranks on this machine: this process's children running
        worker.rank on the group's channel (the launcher starts them as our children)."""
        me, channel = str(os.getpid()), self.plan.channel.encode()
        killed = []
        for pid in (p for p in os.listdir("/proc") if p.isdigit()) if os.path.isdir("/proc") else ():
            try:
                stat = Path(f"/proc/{pid}/stat").read_text()
                args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:  # gone already
                continue
            ppid = stat[stat.rindex(")") + 2 :].split()[1]
            if ppid == me and b"worker.rank" in args and channel in args:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
                    killed.append(int(pid))
        return killed


def _threads(settings: Any, nproc: int) -> int:
    from api.settings import usable_cores

    return int(settings.torch_threads or max(1, usable_cores() // nproc))


def describe_failures(failures: dict[int, Any], log_dir: Path) -> str:
    """Which rank died and how, in a sentence: the one killed by a signal if any (the others
    mostly died of losing it), else the first to fail; with the end of its stderr. The
    launcher ends the survivors with SIGTERM and lists them too, after the ones it saw fail
    (its timestamps are whole seconds): a SIGTERM comes last, then the order it found them."""
    order = {r: i for i, r in enumerate(failures)}

    def cause(r: int) -> tuple[bool, bool, int, int]:
        code = failures[r].exitcode
        return code == -signal.SIGTERM, code >= 0, failures[r].timestamp, order[r]

    first = min(failures, key=cause)
    f = failures[first]
    how = f"was killed by {f.signal_name()}" if f.exitcode < 0 else f"exited with code {f.exitcode}"
    out = f"rank {first} (pid {f.pid}) {how}"
    tail = stderr_tail(log_dir, f.local_rank)
    if tail:
        out += f"; its stderr ended: {tail}"
    others = sorted(r for r in failures if r != first)
    if others:
        out += f" (then rank{'s' * (len(others) > 1)} {', '.join(map(str, others))} failed)"
    return out


def stderr_tail(log_dir: Path, local_rank: int, lines: int = STDERR_LINES) -> str:
    found = sorted(log_dir.glob(f"*/attempt_*/{local_rank}/stderr.log"), key=lambda p: p.stat().st_mtime)
    if not found:
        return ""
    text = found[-1].read_text(errors="replace")[-20_000:]
    kept = [ln.strip() for ln in text.splitlines() if ln.strip()][-lines:]
    return " | ".join(kept)[-1000:]
