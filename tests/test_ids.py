"""Response and item ids: random, never handed out twice, and a forked worker's are its own."""

from __future__ import annotations

import os
import re
import threading

from gateway.translate.stream import _RandomHex, _random_hex, random_id

SHAPE = re.compile(r"msg_[0-9a-f]{32}")


def test_ids_have_the_shape_and_never_repeat_across_refills() -> None:
    ids = [random_id("msg") for _ in range(_RandomHex.IDS * 20 + 7)]  # many pools, and a part of one
    assert all(SHAPE.fullmatch(i) for i in ids), ids[:3]
    assert len(set(ids)) == len(ids)


def test_threads_drawing_at_once_get_distinct_ids() -> None:
    drawn: list[list[str]] = [[] for _ in range(4)]

    def draw(out: list[str]) -> None:
        for _ in range(_RandomHex.IDS * 5):
            out.append(random_id("msg"))

    threads = [threading.Thread(target=draw, args=(out,)) for out in drawn]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [i for out in drawn for i in out]
    assert len(set(everything)) == len(everything) == 4 * _RandomHex.IDS * 5


def test_a_forked_child_does_not_hand_out_its_parents_ids() -> None:
    random_id("msg")  # the parent's pool is filled: its next ids are already decided
    left = list(_random_hex.pool)  # what the parent would hand out next...
    _random_hex.pool = iter(left)  # ...kept for it
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its ids, as a forked gateway worker would make them
        try:
            os.write(write, " ".join(random_id("msg") for _ in range(8)).encode())
        finally:
            os._exit(0)
    os.close(write)
    child = os.read(read, 65536).decode().split()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 8 and all(SHAPE.fullmatch(i) for i in child)
    assert not {i[4:] for i in child} & set(left)
