"""Optional per-key ordering (`delivery.ordering.key`, e.g. `event.subject`).

Events with the same key are delivered one at a time, in stream order; a key
whose head event is failing blocks only itself. Keys and parked entries live
in Redis, so the order holds across replicas and restarts:

- the ordering HASH maps a key to the stream id that holds it (being
  delivered, or scheduled for a retry);
- an event whose key is held is parked: acknowledged in the group (it is no
  longer "being delivered"), added to the parked ZSET as
  "<key>\\0<zero-padded id>" so ZRANGEBYLEX yields a key's events in stream
  order, and to the held ZSET so retention keeps it;
- when the holder is settled (delivered or dead-lettered), the next parked
  event of its key takes the key and is scheduled as due at once; the settle
  script leases it to the settling replica and returns it, which starts it
  right away (no fetch round trip; so a hot key runs at the subscriber's
  latency plus one settle), unless that replica has no room, the limits say
  no or the Trigger is in Backoff: then any replica's fetch takes it.

Acquiring happens inside the script that reads the entries (cursor.py), so
two replicas reading consecutive events of one key cannot swap them. Events
without a value at the key's path are not ordered.

The Lua is tidings/api/lua/_ordering.lua, included in the cursor scripts.
"""

from __future__ import annotations


def path_of(ordering_key: str | None) -> str:
    """`event.data.customer` -> `data.customer` (the script's argument; "" = unordered)."""
    if not ordering_key:
        return ""
    return ordering_key.removeprefix("event.")
