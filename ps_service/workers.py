"""Which worker holds which slot of a run, so that no slot is worked twice.

Lambda delivers an invocation at least once: an asynchronous invoke is retried after
an error, and a worker that hands over before its time limit starts a successor. Each
worker therefore registers ``(run, worker, generation)`` before it trains, and the
registry admits it only if that slot is free for that generation:

* a newer generation always takes the slot (a handover, or a replacement for a crash);
  the older holder is *superseded* and its pushes are refused from then on;
* the same generation is refused while its holder is alive or once it has finished,
  and admitted only when the holder's connection dropped or its heartbeat expired (the
  invocation crashed, so its work is not done);
* an older generation is always refused.

Any request on a registered connection counts as a heartbeat; a worker that is busy
elsewhere (reading a shard) sends an explicit heartbeat.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ps_service.errors import PSError

ACTIVE, FINISHED, HANDED_OVER, DISCONNECTED, SUPERSEDED = (
    "active", "finished", "handed_over", "disconnected", "superseded")
DEREGISTER_REASONS = {"finished": FINISHED, "handover": HANDED_OVER}
MAX_ID_LENGTH = 200


@dataclass
class Registration:
    run: str
    worker: str
    generation: int
    peer: str
    registered_at: float = field(default_factory=time.time)
    last_heartbeat: float = field(default_factory=time.time)
    state: str = ACTIVE

    def alive(self, now: float, timeout_s: float) -> bool:
        return self.state == ACTIVE and now - self.last_heartbeat <= timeout_s

    def check_current(self) -> None:
        """Refuse work from a holder whose slot was taken or released."""
        if self.state == SUPERSEDED:
            raise PSError(
                f"worker {self.worker!r} generation {self.generation} of run {self.run!r} was "
                "superseded by a newer generation; this invocation must stop"
            )
        if self.state in (FINISHED, HANDED_OVER):
            raise PSError(
                f"worker {self.worker!r} generation {self.generation} of run {self.run!r} already "
                f"deregistered ({self.state}); register again to do more work"
            )

    def to_json(self, now: float, timeout_s: float) -> dict[str, Any]:
        expired = self.state == ACTIVE and not self.alive(now, timeout_s)
        return {
            "run": self.run, "worker": self.worker, "generation": self.generation, "peer": self.peer,
            "state": "expired" if expired else self.state, "registered_at": self.registered_at,
            "last_heartbeat": self.last_heartbeat, "heartbeat_age_s": round(now - self.last_heartbeat, 3),
        }


class WorkerRegistry:
    def __init__(self, *, heartbeat_timeout_s: float = 30.0) -> None:
        self.heartbeat_timeout_s = heartbeat_timeout_s
        self._slots: dict[tuple[str, str], Registration] = {}

    def register(self, request: Mapping[str, Any], peer: str) -> Registration:
        run = _check_id("run", request.get("run"))
        worker = _check_id("worker", request.get("worker"))
        generation = request.get("generation", 0)
        if isinstance(generation, bool) or not isinstance(generation, int) or generation < 0:
            raise PSError(f"register: generation must be an integer >= 0, got {generation!r}")
        now = time.time()
        holder = self._slots.get((run, worker))
        if holder is not None:
            self._check_free(holder, generation, now)
            if holder.state == ACTIVE:
                holder.state = SUPERSEDED
        registration = self._slots[(run, worker)] = Registration(run, worker, generation, peer)
        return registration

    def _check_free(self, holder: Registration, generation: int, now: float) -> None:
        slot = f"worker {holder.worker!r} of run {holder.run!r}"
        if generation < holder.generation:
            raise PSError(
                f"{slot} is held by generation {holder.generation}; generation {generation} is stale "
                "and must not train"
            )
        if generation > holder.generation:
            return
        if holder.state == FINISHED:
            raise PSError(f"{slot} generation {generation} already finished its work; "
                          "a retried invocation has nothing left to do")
        if holder.state == HANDED_OVER:
            raise PSError(f"{slot} generation {generation} handed over; start generation "
                          f"{generation + 1} instead")
        if holder.alive(now, self.heartbeat_timeout_s):
            raise PSError(
                f"{slot} generation {generation} is already registered and alive (from "
                f"{holder.peer}, heartbeat {now - holder.last_heartbeat:.1f} s ago); a duplicate "
                "invocation must not train twice"
            )

    @staticmethod
    def heartbeat(registration: Registration) -> None:
        registration.check_current()
        registration.last_heartbeat = time.time()

    @staticmethod
    def deregister(registration: Registration, reason: Any) -> None:
        registration.check_current()
        if reason not in DEREGISTER_REASONS:
            raise PSError(f"deregister: reason must be one of {', '.join(DEREGISTER_REASONS)}, got {reason!r}")
        registration.state = DEREGISTER_REASONS[reason]

    @staticmethod
    def disconnected(registration: Registration) -> None:
        """The holder's connection closed without deregistering: its slot may be retried."""
        if registration.state == ACTIVE:
            registration.state = DISCONNECTED

    def forget_run(self, run: str) -> None:
        """Drop a finished run's slots, so a long-lived server does not keep every run's workers."""
        for key in [key for key in self._slots if key[0] == run]:
            del self._slots[key]

    def active_count(self) -> int:
        now = time.time()
        return sum(r.alive(now, self.heartbeat_timeout_s) for r in self._slots.values())

    def status(self) -> list[dict[str, Any]]:
        now = time.time()
        return [registration.to_json(now, self.heartbeat_timeout_s) for registration in self._slots.values()]

    def finished_slots(self) -> list[dict[str, Any]]:
        """What a checkpoint keeps: finished generations stay refused after a restart."""
        return [{"run": r.run, "worker": r.worker, "generation": r.generation, "state": r.state}
                for r in self._slots.values() if r.state in (FINISHED, HANDED_OVER)]

    def restore(self, slots: list[dict[str, Any]]) -> None:
        for slot in slots:
            registration = Registration(slot["run"], slot["worker"], int(slot["generation"]), "checkpoint")
            registration.state = slot["state"]
            self._slots[(registration.run, registration.worker)] = registration


def _check_id(what: str, value: Any) -> str:
    if (isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value)
            or len(str(value)) > MAX_ID_LENGTH):
        raise PSError(f"register: {what} must be a non-empty string or integer, got {value!r}")
    return str(value)
