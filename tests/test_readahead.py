"""Readahead's window over a forward scroll, against an engine that records what it is asked
(no fetching): which chunks go into memory, which onto disk, and when."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest

from ngffmount.cache.readahead import Readahead

CHUNK = 100  # bytes a chunk holds


class RecordingEngine:
    """What Readahead calls on a ChunkEngine, with a memory room that tests change."""

    def __init__(self, room_chunks: int, stage_chunks: int):
        self.readahead_bytes = room_chunks * CHUNK
        self.stage_bytes = stage_chunks * CHUNK
        self.room = room_chunks * CHUNK
        self.readahead_paused = False
        self.memory = SimpleNamespace(max_bytes=10**9)
        self.to_memory: list[tuple] = []
        self.to_disk: list[tuple] = []
        self.kept = 0

    def chunk_footprint(self, level):
        return CHUNK, 0

    def ahead_room(self, readahead, reserve, parts=None):
        return self.room

    def keep_ahead(self, readahead, nbytes):
        self.kept = nbytes

    def forget_ahead(self, level, indices):
        pass

    def prefetch(self, level, indices, urgent=False, cancelled=None):
        if not urgent:
            self.to_memory.extend(indices)

    def stage(self, level, indices, cancelled=None):
        self.to_disk.extend(indices)


def chunks_of(depth: int, tiles: int):
    """Chunks of a plane: `tiles` chunks side by side, each `depth` planes deep."""
    return lambda plane: [(plane // depth, t) for t in range(tiles)]


@pytest.mark.parametrize("depth,tiles,room,stage", [(1, 4, 10, 20), (2, 3, 7, 5), (4, 2, 3, 0), (1, 16, 40, 100)])
def test_forward_scroll_asks_each_chunk_once_nearest_into_memory(depth, tiles, room, stage):
    planes = 40
    of = chunks_of(depth, tiles)
    engine = RecordingEngine(room, stage)
    ahead = Readahead(engine, SimpleNamespace(chunk_nbytes=CHUNK), planes, of)
    rng = random.Random(depth * 1000 + room)
    reached: set[tuple] = set()
    for plane in range(planes):
        if plane % 7 == 3:
            engine.room = rng.choice([room // 2, room, 2 * room]) * CHUNK  # readers come and go
        ahead.observe(plane)
        reached.update(of(plane))
        # Nothing asked twice into memory, nor twice onto disk.
        assert len(set(engine.to_memory)) == len(engine.to_memory)
        assert len(set(engine.to_disk)) == len(engine.to_disk)
        # In memory ahead of the reader: within the largest room it had, and the nearest of the window.
        held = [c for c in engine.to_memory if c not in reached]
        assert len(held) * CHUNK == engine.kept
        assert len(held) <= 2 * room
        window = [c for c in dict.fromkeys(c for p in range(plane + 1, planes) for c in of(p)) if c not in reached]
        asked = set(engine.to_memory) | set(engine.to_disk)
        covered = [c for c in window if c in asked]
        assert covered == window[:len(covered)], "the window is the next planes' chunks, in order"
        if plane > 0:  # the first read waits for a second step before guessing
            assert len(covered) >= min(len(window), engine.room // CHUNK + stage), "as far as the budgets allow"
        assert set(held) == set(covered[:len(held)]), "memory gets the nearest; disk the ones after"


def test_room_grows_staged_chunks_move_into_memory_in_order():
    of = chunks_of(1, 4)
    engine = RecordingEngine(room_chunks=4, stage_chunks=12)
    ahead = Readahead(engine, SimpleNamespace(chunk_nbytes=CHUNK), 20, of)
    ahead.observe(0)
    ahead.observe(1)
    assert engine.to_memory == of(2)
    assert engine.to_disk == of(3) + of(4) + of(5)
    engine.room = 12 * CHUNK
    ahead.observe(2)
    assert engine.to_memory == of(2) + of(3) + of(4) + of(5), "staged ones first, nearest first"
    assert engine.to_disk == of(3) + of(4) + of(5) + of(6) + of(7) + of(8), "then new ones onto disk"


def test_jump_starts_over_and_a_second_step_resumes():
    of = chunks_of(1, 2)
    engine = RecordingEngine(room_chunks=4, stage_chunks=0)
    ahead = Readahead(engine, SimpleNamespace(chunk_nbytes=CHUNK), 50, of)
    for plane in range(3):
        ahead.observe(plane)
    engine.to_memory.clear()
    ahead.observe(30)
    assert engine.to_memory == [] and engine.kept == 0, "a jump asks for nothing yet"
    ahead.observe(31)
    assert engine.to_memory == of(32) + of(33)
