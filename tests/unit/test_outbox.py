"""The on-disk outbox: order, bounds, and what survives a restart or a failing disk."""

import sqlite3

from edge_agent.outbox import Outbox


def payloads(box):
    return [p.payload for p in box.drain()]


def test_messages_come_out_in_the_order_they_were_put(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3")
    for i in range(5):
        box.put(f"t/{i}", str(i).encode(), is_ack=i % 2 == 0)
    assert [(p.topic, p.payload, p.is_ack) for p in box.peek()] == [
        (f"t/{i}", str(i).encode(), i % 2 == 0) for i in range(5)
    ]
    assert len(box) == 5


def test_oldest_telemetry_is_evicted_and_acks_never_are(tmp_path):
    box = Outbox(tmp_path / "outbox.sqlite3", max_telemetry=2)
    box.put("t/health", b"h1", is_ack=False)
    for i in range(50):
        box.put("t/ack", f"a{i}".encode(), is_ack=True)
    box.put("t/health", b"h2", is_ack=False)
    box.put("t/health", b"h3", is_ack=False)
    assert box.evicted == 1
    assert payloads(box) == [*(f"a{i}".encode() for i in range(50)), b"h2", b"h3"]


def test_what_was_not_sent_survives_a_restart_and_keeps_its_place(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path)
    for name in (b"a1", b"h1", b"a2"):
        box.put("t", name, is_ack=name.startswith(b"a"))
    first = box.peek(1)[0]
    box.done(first)  # a1 reached the broker; then the power went
    del box
    reopened = Outbox(path)
    assert len(reopened) == 2
    reopened.put("t", b"h2", is_ack=False)
    assert payloads(reopened) == [b"h1", b"a2", b"h2"]
    assert len(reopened) == 0
    assert len(Outbox(path)) == 0


def test_a_failing_disk_keeps_messages_in_memory_after_those_on_disk(tmp_path):
    path = tmp_path / "outbox.sqlite3"
    box = Outbox(path, max_telemetry=1)
    box.put("t", b"on-disk", is_ack=True)
    box._db.close()
    box._db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, check_same_thread=False, isolation_level=None)
    box.put("t", b"ack-in-memory", is_ack=True)
    box.put("t", b"health-1", is_ack=False)
    box.put("t", b"health-2", is_ack=False)
    assert box.disk_error is not None
    assert box.evicted == 1
    assert [p.payload for p in box.peek()] == [b"on-disk", b"ack-in-memory", b"health-2"]
    for item in box.peek()[1:]:
        box.done(item)
    assert [p.payload for p in box.peek()] == [b"on-disk"]
