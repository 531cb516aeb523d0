"""Per-process counters: one table of names, a plain object the hot path increments.

Workers add to attributes of a :class:`Stats` (a slotted object: an increment is one
attribute store) and copy the values into their shared-memory slot once per loop
iteration, so ``natserverctl stats`` sees every process without the hot path paying
for shared memory or locks.
"""

from __future__ import annotations

COUNTERS: tuple[tuple[str, str], ...] = (
    ("requests", "SIP requests received"),
    ("replies", "SIP replies received"),
    ("keepalives", "datagrams shorter than 32 bytes (keepalives) ignored"),
    ("bad_messages", "messages refused as malformed"),
    ("errors", "internal errors while processing a message"),
    ("shed", "new requests answered 503 while shedding load (load_shed)"),
    ("sent", "datagrams sent"),
    ("send_errors", "datagrams that could not be sent"),
    ("sl_replies", "stateless replies sent"),
    ("sl_acks_absorbed", "ACKs to stateless replies absorbed"),
    ("fwd_replies", "replies relayed statelessly"),
    ("tm_created", "transactions created"),
    ("tm_retransmissions", "request retransmissions absorbed"),
    ("tm_timeouts", "transactions ended by a timeout (408)"),
    ("tm_replies_relayed", "replies relayed by transactions"),
    ("tm_table_full", "transactions refused: table full"),
    ("tm_replies_foreign", "replies matched to a transaction another process created"),
    ("tm_local_replies", "final replies tm generated itself (408, 487, t_relay errors)"),
    ("tm_retransmits", "request and reply retransmissions sent by tm timers"),
    ("tm_cancels", "CANCELs sent downstream"),
    ("tm_acks_absorbed", "hop-by-hop ACKs to non-2xx finals absorbed"),
    ("tm_timer_takeovers", "transaction timers taken over from another process"),
    ("registrations", "REGISTERs accepted"),
    ("auth_challenges", "authentication challenges sent"),
    ("auth_failures", "credentials that did not verify"),
    ("natpings", "NAT keepalives sent"),
    ("rtp_packets", "RTP/RTCP packets relayed"),
    ("rtp_dropped", "RTP/RTCP packets dropped"),
)

COUNTER_NAMES: tuple[str, ...] = tuple(name for name, _ in COUNTERS)


class Stats:
    """This process's counters; ``values()`` in COUNTERS order."""

    __slots__ = COUNTER_NAMES

    def __init__(self) -> None:
        for name in COUNTER_NAMES:
            setattr(self, name, 0)

    def values(self) -> list[int]:
        return [getattr(self, name) for name in COUNTER_NAMES]

    def as_dict(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in COUNTER_NAMES}
