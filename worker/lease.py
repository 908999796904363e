"""The lease: which one worker may train a run, and write its events and files.

`run:{id}:lease` in Redis holds the attempt number of the worker training the run, with a
TTL that a thread renews every ttl/3 (a training step may outlast the TTL; torch releases
the GIL meanwhile). A lease is never re-created once gone: one that expired (worker
killed or frozen, Redis away longer than the TTL) belongs to nobody, and the reaper
(api/reaper.py) hands the run to attempt+1, which sets the key to its own number.

A stale attempt writes nothing, because every write checks the attempt first:
- the Redis stream: XADD through XADD_SCRIPT, which checks the lease in the same step;
- the database: each write transaction checks the run's row (worker/sink.py `_guard`);
- checkpoint files: renamed into place only after that same database check.
The database check is the one that decides: the reaper and the claim change the row, so
a worker cut off from Redis while the reaper sees it is still stopped at its next write.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time

import redis

from api.redis_keys import dataset_lease_key, lease_key

log = logging.getLogger(__name__)


class LeaseLost(Exception):
    """This attempt no longer owns the run: stop, and write nothing more."""


# KEYS: lease, stream. ARGV: attempt, maxlen, final (0/1), ttl for a final stream, seq, body.
XADD_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[3] == '1' then
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 's', ARGV[5], 'e', ARGV[6], 'f', 1)
  redis.call('EXPIRE', KEYS[2], ARGV[4])
else
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*', 's', ARGV[5], 'e', ARGV[6])
end
return 1
"""
# Take the lease unless a newer attempt holds it (a worker frozen between its claim and this
# SET must not evict the attempt that replaced it).
_ACQUIRE = """
local held = tonumber(redis.call('GET', KEYS[1]))
if held and held > tonumber(ARGV[1]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
_RENEW = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0"


class Lease:
    """One attempt's hold on a run (or on a dataset's preparation: the same rules)."""

    def __init__(self, r: redis.Redis, key: str, attempt: int, ttl_s: float, what: str):
        self.r, self.what, self.attempt, self.ttl_s = r, what, attempt, ttl_s
        self.key, self.value = key, str(attempt)
        self.lost = False
        self.confirmed = time.monotonic()  # when Redis last said the lease is ours
        self.next_try = 0.0
        self._acquire = r.register_script(_ACQUIRE)
        self._renew = r.register_script(_RENEW)
        self.acquired = False
        self._release = r.register_script(_RELEASE)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @classmethod
    def for_run(cls, r: redis.Redis, run_id: str, attempt: int, ttl_s: float) -> Lease:
        return cls(r, lease_key(run_id), attempt, ttl_s, f"run {run_id}")

    @classmethod
    def for_dataset(cls, r: redis.Redis, dataset_id: str, attempt: int, ttl_s: float) -> Lease:
        return cls(r, dataset_lease_key(dataset_id), attempt, ttl_s, f"dataset {dataset_id}")

    def acquire(self) -> None:
        """Take the lease after winning the claim in the database (which decided who gets
        it), replacing what an earlier attempt left, and start renewing. If Redis does not
        answer now, the heartbeat keeps trying to take it; the reaper decides if it stays away."""
        self.renew()
        if not self.acquired and not self.lost:
            log.warning("%s: could not take the lease yet (Redis unavailable); retrying", self.what)
        self._thread = threading.Thread(target=self._beat, name=f"lease:{self.what}", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.ttl_s / 3) and not self.lost:
            self.renew()

    def renew(self) -> None:
        """Take the lease the first time, extend it after: never re-create one that lapsed."""
        script = self._renew if self.acquired else self._acquire
        try:
            ok = script(keys=[self.key], args=[self.value, int(self.ttl_s * 1000)])
        except redis.RedisError:
            return  # unknown: keep going; if it was lost meanwhile, the next answer says so
        if ok:
            self.acquired = True
            self.confirmed = time.monotonic()
        else:
            self.lost = True

    def check(self) -> None:
        """Raise LeaseLost if the lease is gone. Called every iteration, so a flag at most;
        but after a freeze (SIGSTOP, a suspended VM) the thread has not run yet, so a
        confirmation older than ttl/2 is renewed here first (at most every ttl/10)."""
        now = time.monotonic()
        if not self.lost and now - self.confirmed > self.ttl_s / 2 and now >= self.next_try:
            self.next_try = now + self.ttl_s / 10
            self.renew()
        if self.lost:
            raise LeaseLost(f"attempt {self.attempt} of {self.what} lost its lease")

    def close(self, *, release: bool) -> None:
        """Stop renewing; with release, give the lease up (the run ended or went back to the
        queue), so that nothing waits for it to expire."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if release and not self.lost:
            with contextlib.suppress(redis.RedisError):  # else it expires on its own
                self._release(keys=[self.key], args=[self.value])
