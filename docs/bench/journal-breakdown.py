#!/usr/bin/env python3
"""What fills fjall's journals: bytes per keyspace kind, from a node's data directory.

    docs/bench/journal-breakdown.py DATA_DIR [EVENTS]

Reads every journal file (DATA_DIR/db/*.jnl, fjall 3.1's format) and sums, per keyspace
kind (`events`, `raft_log`, `dedup`, ...; the `sN.` shard prefix dropped), the items,
their header bytes, key bytes and value bytes as written (after fjall's lz4 of values
of 4 KiB and more) and before. With EVENTS (how many events those journals hold, for
instance the difference of `trail_events_total` between two samples), it also prints
bytes per event. Stop the node first (`kill -9` keeps the journals as they were; a
clean stop flushes them).

Keyspace names come from fjall's own keyspace (id 0), whose records hold `n`, the
keyspace id (u64, big-endian), the name's length (u8) and the name.
"""

import collections
import glob
import os
import re
import struct
import sys

# Journal records (fjall 3.1, src/journal/entry.rs): a tag byte, then
START, ITEM, END, CLEAR = 1, 2, 3, 4
START_LEN = 1 + 4 + 8  # item count u32, seqno u64
END_LEN = 1 + 8 + 4  # checksum u64, magic "FJL" 3
CLEAR_LEN = 1 + 8  # keyspace id u64
# item: value type u8, compression u8, keyspace id u64, key len u16, value len u32,
# stored (compressed) value len u32, key, stored value
ITEM_HEADER = struct.Struct("<BBQHII")
ITEM_HEADER_LEN = 1 + ITEM_HEADER.size

NAME_RECORD = re.compile(rb"n(.{8})(.)((?:s[0-9]+\.)?[a-z_]+)", re.S)


def keyspace_names(data_dir):
    """Keyspace id -> name, from the tables and journals of fjall's keyspace 0."""
    names = {}
    files = glob.glob(os.path.join(data_dir, "db", "keyspaces", "0", "tables", "*"))
    files += glob.glob(os.path.join(data_dir, "db", "*.jnl"))
    for path in files:
        data = open(path, "rb").read()
        for match in NAME_RECORD.finditer(data):
            (keyspace_id,) = struct.unpack(">Q", match.group(1))
            name = match.group(3)[: match.group(2)[0]]
            if len(name) == match.group(2)[0] and keyspace_id < 1 << 20:
                names[keyspace_id] = name.decode()
    return names


def kind(name):
    return name.split(".", 1)[1] if re.match(r"s[0-9]+\.", name) else name


def main():
    if len(sys.argv) not in (2, 3):
        print(__doc__.strip().split("\n\n")[1])
        sys.exit(2)
    data_dir = sys.argv[1]
    events = int(sys.argv[2]) if len(sys.argv) == 3 else None
    names = keyspace_names(data_dir)
    # kind -> [items, header bytes, key bytes, stored value bytes, value bytes]
    sums = collections.defaultdict(lambda: [0, 0, 0, 0, 0])
    framing = 0
    journals = sorted(glob.glob(os.path.join(data_dir, "db", "*.jnl")))
    if not journals:
        sys.exit(f"no journal files in {data_dir}/db")
    for path in journals:
        data = open(path, "rb").read()
        at = 0
        while at < len(data):
            tag = data[at]
            if tag == START:
                at += START_LEN
                framing += START_LEN
            elif tag == END:
                at += END_LEN
                framing += END_LEN
            elif tag == CLEAR:
                at += CLEAR_LEN
                framing += CLEAR_LEN
            elif tag == ITEM:
                _, _, keyspace_id, key_len, value_len, stored_len = ITEM_HEADER.unpack_from(
                    data, at + 1
                )
                row = sums[kind(names.get(keyspace_id, f"#{keyspace_id}"))]
                row[0] += 1
                row[1] += ITEM_HEADER_LEN
                row[2] += key_len
                row[3] += stored_len
                row[4] += value_len
                at += ITEM_HEADER_LEN + key_len + stored_len
            else:
                break  # the preallocated, unwritten tail of the active journal
    total = framing + sum(row[1] + row[2] + row[3] for row in sums.values())
    print(f"{len(journals)} journal file(s), {total / 1e6:.1f} MB written, "
          f"batch framing {framing / 1e6:.1f} MB")
    per_event = events is not None and events > 0
    unit = "B/event" if per_event else "MB"
    scale = (lambda b: b / events) if per_event else (lambda b: b / 1e6)
    print(f"{'keyspace':12} {'items':>9} {'header':>9} {'key':>9} {'value':>9} "
          f"{'raw value':>9} {'share':>6}   ({unit})")
    for name, row in sorted(sums.items(), key=lambda kv: -(kv[1][1] + kv[1][2] + kv[1][3])):
        written = row[1] + row[2] + row[3]
        print(f"{name:12} {row[0]:9d} {scale(row[1]):9.1f} {scale(row[2]):9.1f} "
              f"{scale(row[3]):9.1f} {scale(row[4]):9.1f} {100 * written / total:5.1f}%")
    if per_event:
        print(f"{'all':12} {'':9} {'':9} {'':9} {scale(total):9.1f}")


if __name__ == "__main__":
    main()
