"""Pub/sub invariants: every subscriber's stream accounted for message by message
(:func:`pubsub_tally`), and checked for misdelivery, duplicates, order, losses outside a
subscription's gap, gaps outside faults, and connections left open or over the bound.

A subscriber's stream is read in its own order, never by the times its consumer took each
item: a consumer that lags (the stream's buffer full, the server holding the rest) takes a gap
event long after the connection was lost, and everything the server still held for that
connection was lost with it.  What the stream order proves is when the subscription was last
alive: the publish time of the last message it delivered before the gap.

:func:`pubsub_findings` makes the one tally of a run (with the run's own in-flight time in the
slack of its fault windows); the checks and the report both read that tally.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field

from ..records import Delivery, Publish, PubSubEvent, PubSubRecord, Window
from .base import SHOWN, Violation
from .timing import percentile

__all__ = [
    "GAP_SLACK",
    "PUBSUB_WINDOW_SLACK",
    "PubSubTally",
    "check_pubsub",
    "check_pubsub_connections",
    "check_pubsub_duplicates",
    "check_pubsub_gaps",
    "check_pubsub_losses",
    "check_pubsub_misdelivery",
    "check_pubsub_order",
    "in_flight",
    "pubsub_findings",
    "pubsub_tally",
]

#: A message lost with a subscription may have been published this long before the last message
#: that subscription delivered before its gap event: publishes running at once reach the
#: server in any order, and a classic PUBLISH crosses the cluster bus to the subscriber's node.
GAP_SLACK = 1.0
#: Pub/sub losses and gaps may start this long before a fault window (the fault is applied a
#: moment after its window opens); ``check_pubsub`` adds the run's in-flight time too.
PUBSUB_WINDOW_SLACK = 1.0
_Key = tuple[int, str]
"""(subscriber, channel)"""


@dataclass
class PubSubTally:
    """What the pub/sub load published, what each subscriber should have received, and what
    it did receive, lost (and why it may have), got twice or got on the wrong channel."""

    published: int = 0
    """Publishes the server acknowledged."""
    failed_publishes: int = 0
    """Publishes that failed (delivered or not: neither expected nor forbidden)."""
    received: int = 0
    """Deliveries of any kind, misdelivered and duplicated ones included."""
    expected: int = 0
    """(acknowledged message, subscriber of its channel) pairs."""
    received_due: int = 0
    """Of ``expected``: those received."""
    lost: list[tuple[int, Publish]] = field(default_factory=list)
    """(subscriber, message) pairs expected and never received."""
    lost_in_gap: list[tuple[int, Publish]] = field(default_factory=list)
    """Of ``lost``: published while that subscriber's subscription may have been down (in
    one of its ``down`` windows)."""
    gaps: int = 0
    duplicates: list[Delivery] = field(default_factory=list)
    misdelivered: list[tuple[Delivery, str]] = field(default_factory=list)
    reordered: list[tuple[Delivery, int]] = field(default_factory=list)
    """Deliveries that came after a later message of the same publisher and channel (with
    the seq seen before), in one subscription epoch."""
    confirms: dict[_Key, list[float]] = field(default_factory=dict)
    down: dict[_Key, list[tuple[float, float]]] = field(default_factory=dict)
    """(from, until) per gap event: the subscription was alive until ``from`` (its last sign
    of life before the gap, less ``GAP_SLACK``) and subscribed again at ``until`` (its next
    confirmation; infinity if none).  A lost message is explained by a window when it ended
    at or after ``from`` and started at or before ``until``."""
    in_flight: float = 0.0
    """The run's in-flight time (:func:`in_flight`) the fault windows were widened by."""


def _in_window(
    t: float, windows: Sequence[Window], after: float, before: float = PUBSUB_WINDOW_SLACK
) -> Window | None:
    return next((w for w in windows if w.start - before <= t <= w.end + after), None)


def in_flight(record: PubSubRecord, before: float) -> float:
    """How long a message stays in flight in this run: the p99 of publish-to-delivery times
    of the messages published before ``before`` (the first fault).  A message still in flight
    when a fault cuts its subscriber's connection is lost with it, so the slack before a fault
    window grows by this much (on a busy machine it exceeds a second)."""
    sent = {(p.channel, p.publisher, p.seq): p.start for p in record.publishes if p.ok}
    times = sorted(
        d.at - start
        for d in record.deliveries
        if (start := sent.get((d.channel, d.publisher, d.seq))) is not None and start < before
    )
    return max(0.0, percentile(times, 0.99))


def _confirmed_after(confirms: Sequence[float], t: float) -> float:
    """The first confirmation at or after ``t`` (infinity if none)."""
    return next((c for c in confirms if c >= t), math.inf)


class _Downtimes:
    """The ``down`` windows of one record, built while its streams are read in order.

    A subscription shows it is alive by each message it delivers (as of that message's
    publish time: one connection delivers in the order the server sent, so whatever reached
    the server before it and was not delivered was not lost with a later cut) and by each
    confirmation (as of the time the consumer took it: a message published earlier is due
    only from the previous window, which ends there).  A gap event opens a window from the
    last sign of life before it, less the slack; the channel's next confirmation closes it.
    """

    def __init__(self, slack: float) -> None:
        self.slack = slack
        self.alive: dict[_Key, float] = {}
        self.windows: dict[_Key, list[list[float]]] = defaultdict(list)

    def lived(self, key: _Key, t: float) -> None:
        self.alive[key] = max(self.alive.get(key, -math.inf), t)

    def gap(self, key: _Key) -> None:
        self.windows[key].append([self.alive.get(key, -math.inf) - self.slack, math.inf])

    def confirmed(self, key: _Key, t: float) -> None:
        for window in self.windows.get(key, ()):
            if window[1] == math.inf:
                window[1] = t
        self.lived(key, t)

    def result(self) -> dict[_Key, list[tuple[float, float]]]:
        return {key: [(lo, hi) for lo, hi in found] for key, found in self.windows.items()}


def _published(
    record: PubSubRecord, sent: dict[tuple[str, int, int], Publish], d: Delivery
) -> Publish | str:
    """The publish that delivery ``d`` gives, or why ``d`` is a misdelivery."""
    kind = "smessage" if d.channel in record.sharded else "message"
    published = sent.get((d.channel, d.publisher, d.seq))
    if d.named is None:
        return "not a payload any publisher sent"
    if d.named != d.channel:
        return f"its payload names channel {d.named}"
    if d.channel not in record.subscriptions.get(d.subscriber, ()):
        return "a channel this subscriber never subscribed to"
    if d.kind != kind:
        return f"a {d.kind} where a {kind} was due"
    if published is None:
        return f"publisher {d.publisher} never sent seq {d.seq} there"
    return published


def pubsub_tally(record: PubSubRecord, gap_slack: float = GAP_SLACK) -> PubSubTally:
    """Account for every message of ``record`` (pure; the checkers and the report use it),
    reading each subscriber's stream in its order; ``gap_slack``: how much earlier than a
    subscription's last sign of life before its gap a message lost with it may have been
    published (see :class:`_Downtimes`)."""
    tally = PubSubTally()
    subscribers_of: dict[str, list[int]] = defaultdict(list)
    for subscriber, channels in record.subscriptions.items():
        for channel in channels:
            subscribers_of[channel].append(subscriber)
    confirms: dict[_Key, list[float]] = defaultdict(list)
    downtimes = _Downtimes(gap_slack)
    sent = {(p.channel, p.publisher, p.seq): p for p in record.publishes}
    received: set[tuple[int, str, int, int]] = set()
    tally.received = len(record.deliveries)
    # Stream order per subscriber: deliveries and events share the position numbering.
    stream: list[Delivery | PubSubEvent] = [*record.deliveries, *record.events]
    stream.sort(key=lambda item: (item.subscriber, item.pos))
    epoch: Counter[_Key] = Counter()
    last: dict[tuple[int, str, int], tuple[int, int]] = {}
    for item in stream:
        if isinstance(item, PubSubEvent):
            tally.gaps += 1 if item.kind == "gap" else 0
            for channel in item.channels:
                at = (item.subscriber, channel)
                if item.kind in ("subscribe", "ssubscribe"):
                    confirms[at].append(item.at)
                    downtimes.confirmed(at, item.at)
                elif item.kind == "gap":
                    epoch[at] += 1
                    downtimes.gap(at)
            continue
        d = item
        published = _published(record, sent, d)
        if isinstance(published, str):
            tally.misdelivered.append((d, published))
            continue
        downtimes.lived((d.subscriber, d.channel), published.start)
        key = (d.subscriber, d.channel, d.publisher, d.seq)
        if key in received:
            tally.duplicates.append(d)
            continue
        received.add(key)
        current = epoch[(d.subscriber, d.channel)]
        previous = last.get((d.subscriber, d.channel, d.publisher))
        if previous is not None and previous[0] == current and d.seq < previous[1]:
            tally.reordered.append((d, previous[1]))
        else:
            last[(d.subscriber, d.channel, d.publisher)] = (current, d.seq)
    tally.down = downtimes.result()
    for p in record.publishes:
        if not p.ok:
            tally.failed_publishes += 1
            continue
        tally.published += 1
        for subscriber in subscribers_of.get(p.channel, ()):
            first = confirms.get((subscriber, p.channel))
            if not first or p.start < first[0]:
                continue  # published before the subscription was confirmed: not due
            tally.expected += 1
            if (subscriber, p.channel, p.publisher, p.seq) in received:
                tally.received_due += 1
                continue
            tally.lost.append((subscriber, p))
            windows = tally.down.get((subscriber, p.channel), ())
            if any(lo <= p.end and p.start <= hi for lo, hi in windows):
                tally.lost_in_gap.append((subscriber, p))
    tally.confirms = dict(confirms)
    return tally


def _more(count: int) -> list[Violation]:
    return [] if count <= SHOWN else [Violation("pubsub", f"... and {count - SHOWN} more")]


def _listed(rule: str, shown: Sequence[str], total: int) -> list[Violation]:
    """One ``rule`` violation for each message of ``shown`` (the first :data:`SHOWN` of
    ``total`` findings), and a count of the rest."""
    return [Violation(rule, message) for message in shown] + _more(total)


def _msg(p: Publish) -> str:
    return f"publisher {p.publisher} seq {p.seq} on {p.channel} (published t={p.start:.3f})"


def check_pubsub_misdelivery(tally: PubSubTally) -> list[Violation]:
    """Every message arrived on the channel its payload names, one its subscriber subscribed
    to, with the right type (``smessage`` for shard channels), and was really published."""
    shown = [
        f"subscriber {d.subscriber} got {d.raw!r} as a {d.kind} on {d.channel} at "
        f"t={d.at:.3f}: {reason}"
        for d, reason in tally.misdelivered[:SHOWN]
    ]
    return _listed("pubsub-no-misdelivery", shown, len(tally.misdelivered))


def check_pubsub_duplicates(tally: PubSubTally) -> list[Violation]:
    """No subscriber received one message twice (ever, gaps or not)."""
    shown = [
        f"subscriber {d.subscriber} got publisher {d.publisher} seq {d.seq} on {d.channel} "
        f"again at t={d.at:.3f}"
        for d in tally.duplicates[:SHOWN]
    ]
    return _listed("pubsub-no-duplicate", shown, len(tally.duplicates))


def check_pubsub_order(tally: PubSubTally) -> list[Violation]:
    """Per subscriber, channel and publisher, messages arrive in the order they were published
    (within a subscription: there is no order across a gap)."""
    shown = [
        f"subscriber {d.subscriber} got publisher {d.publisher} seq {d.seq} on {d.channel} "
        f"at t={d.at:.3f}, after seq {after}"
        for d, after in tally.reordered[:SHOWN]
    ]
    return _listed("pubsub-order", shown, len(tally.reordered))


def check_pubsub_losses(
    tally: PubSubTally,
    faults: Sequence[Window],
    recovery: float,
    before: float = PUBSUB_WINDOW_SLACK,
) -> list[Violation]:
    """Every acknowledged message reached every subscriber of its channel, except messages
    published while that subscriber's subscription may have been down: after its last sign of
    life before a gap event (widened by ``GAP_SLACK``) and before its resubscription was
    confirmed (``PubSubTally.down``).  Such losses must also fall in a fault window (widened by
    ``PUBSUB_WINDOW_SLACK`` before it and ``recovery`` after it).  Without faults nothing may
    be lost."""
    in_gap = {(s, id(p)) for s, p in tally.lost_in_gap}
    no_gap: list[tuple[int, Publish]] = []
    after_resubscribe: list[tuple[int, Publish]] = []
    outside: list[tuple[int, Publish]] = []
    for subscriber, p in tally.lost:
        if (subscriber, id(p)) not in in_gap:
            windows = tally.down.get((subscriber, p.channel), [])
            (after_resubscribe if any(hi < p.start for _, hi in windows) else no_gap).append(
                (subscriber, p)
            )
        elif _in_window(p.start, faults, recovery, before) is None:
            outside.append((subscriber, p))
    out = []
    if not faults and tally.lost:
        out.append(
            Violation("pubsub-no-loss", f"{len(tally.lost)} of {tally.expected} messages lost")
        )
    for name, what, found in (
        ("pubsub-gap-for-loss", "lost with no gap event for it", no_gap),
        ("pubsub-after-resubscribe", "published after the resubscription yet lost",
         after_resubscribe),
        ("pubsub-loss-in-window", "lost outside the fault window", outside),
    ):  # fmt: skip
        if not found:
            continue
        out.append(Violation(name, f"{len(found)} messages {what}"))
        out += [
            Violation(name, f"subscriber {subscriber}: {_msg(p)}")
            for subscriber, p in found[:SHOWN]
        ]
    return out


def check_pubsub_gaps(
    record: PubSubRecord,
    tally: PubSubTally,
    faults: Sequence[Window],
    recovery: float,
    before: float = PUBSUB_WINDOW_SLACK,
) -> list[Violation]:
    """Every subscription was confirmed; gaps happen only around faults (and a fault that
    should have broken subscriptions did cause at least one gap); every channel a gap lists
    is subscribed again (a new confirmation) afterwards; no stream raised an error."""
    out = []
    for subscriber, channels in sorted(record.subscriptions.items()):
        missing = [c for c in channels if not tally.confirms.get((subscriber, c))]
        if missing:
            out.append(
                Violation(
                    "pubsub-subscribed",
                    f"subscriber {subscriber}: {len(missing)} channels never confirmed "
                    f"({', '.join(missing[:3])})",
                )
            )
    gaps = [e for e in record.events if e.kind == "gap"]
    for event in gaps:
        if _in_window(event.at, faults, recovery, before) is None:
            out.append(
                Violation(
                    "pubsub-unexpected-gap",
                    f"subscriber {event.subscriber}: gap at t={event.at:.3f} with no fault "
                    f"({event.detail})",
                )
            )
        for channel in event.channels:
            again = _confirmed_after(tally.confirms.get((event.subscriber, channel), []), event.at)
            if again == math.inf:
                out.append(
                    Violation(
                        "pubsub-resubscribed",
                        f"subscriber {event.subscriber}: {channel} never confirmed again after "
                        f"the gap at t={event.at:.3f}",
                    )
                )
    if faults and not gaps:
        out.append(Violation("pubsub-gap-seen", "the fault caused no gap event"))
    errors = [e for e in record.events if e.kind == "error"]
    shown = [
        f"subscriber {e.subscriber}: the stream raised {e.detail} at t={e.at:.3f}"
        for e in errors[:SHOWN]
    ]
    return out + _listed("pubsub-stream-error", shown, len(errors))


def check_pubsub_connections(record: PubSubRecord) -> list[Violation]:
    """Every pub/sub connection is closed once the PubSubs are; the client never had more
    open than its bound, nor refused one (recovery must not trip the bound)."""
    out = []
    if record.open_after_close != 0:
        out.append(
            Violation(
                "pubsub-connections-closed",
                f"pubsub_stats() shows {record.open_after_close} connections open after every "
                "PubSub was closed",
            )
        )
    bound = int(record.stats.get("max_connections", 0))
    if bound and record.peak_connections > bound:
        out.append(
            Violation(
                "pubsub-connection-bound",
                f"{record.peak_connections} pub/sub connections open at once, bound {bound}",
            )
        )
    refused = int(record.stats.get("limit_rejections", 0))
    if refused:
        out.append(Violation("pubsub-connection-bound", f"{refused} connections refused"))
    return out


def pubsub_findings(record: PubSubRecord, faults: Sequence[Window]) -> PubSubTally:
    """The tally of a run, with its in-flight time measured before the first fault (which
    widens the fault windows, not the gaps: those start from the stream's own evidence)."""
    tally = pubsub_tally(record)
    tally.in_flight = in_flight(record, min((w.start for w in faults), default=math.inf))
    return tally


def check_pubsub(
    record: PubSubRecord,
    faults: Sequence[Window],
    recovery: float,
    tally: PubSubTally | None = None,
) -> list[Violation]:
    """Every pub/sub invariant; messages were published and every subscriber received some.
    The slack before fault windows grows by the run's own in-flight time.  ``tally``:
    the run's :func:`pubsub_findings` (made here when not given)."""
    if tally is None:
        tally = pubsub_findings(record, faults)
    flight = tally.in_flight
    out = check_pubsub_misdelivery(tally)
    out += check_pubsub_duplicates(tally)
    out += check_pubsub_order(tally)
    out += check_pubsub_losses(tally, faults, recovery, PUBSUB_WINDOW_SLACK + flight)
    out += check_pubsub_gaps(record, tally, faults, recovery, PUBSUB_WINDOW_SLACK + flight)
    out += check_pubsub_connections(record)
    if not tally.published:
        out.append(Violation("pubsub-activity", "nothing was published"))
    heard = {d.subscriber for d in record.deliveries}
    silent = sorted(set(record.subscriptions) - heard)
    if tally.published and silent:
        out.append(Violation("pubsub-activity", f"subscribers {silent} received nothing"))
    return out
