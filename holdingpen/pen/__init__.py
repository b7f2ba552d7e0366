"""Holding Pen: memory and disk reserved for the console user, lent on demand.

Pure cores, no I/O: pool (one pool's reservations and loans), protocol
(framing and message shapes), config, sizes. The shells around them: daemon
(event loop and connections), chunks (memfds and allocated files), fdstore
(state kept in systemd's store), peer, authorize, polkit, events (journal),
headroom (/proc/meminfo), client (gatekeeper's and status's side).
"""
