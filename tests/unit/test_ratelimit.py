"""Per-user limits: connections counted per uid, borrows through a token bucket."""

import pytest

from holdingpen.pen.ratelimit import Limits


def test_connections_per_user():
    limits = Limits(connections_per_user=2, borrows_per_second=1, burst=1)
    assert [limits.connect(1000) for _ in range(3)] == [True, True, False]
    assert limits.connect(1001)                 # another user is not affected
    limits.disconnect(1000)
    assert limits.connect(1000)
    assert not limits.connect(1000)


def test_root_is_not_limited():
    limits = Limits(connections_per_user=1, borrows_per_second=1, burst=1)
    assert all(limits.connect(0) for _ in range(100))
    assert all(limits.borrow(0, now=0.0) for _ in range(100))
    limits.disconnect(0)                        # harmless


def test_disconnect_of_an_unknown_uid_changes_nothing():
    limits = Limits(connections_per_user=1, borrows_per_second=1, burst=1)
    limits.disconnect(1000)
    assert limits.connect(1000) and not limits.connect(1000)


# (times of borrow attempts, expected answers) with 2 a second and a burst of 3
BUCKET = [
    ([0, 0, 0, 0], [True, True, True, False]),          # the burst, then none
    ([0, 0, 0, 0, 0.5], [True, True, True, False, True]),  # 0.5 s gives one token back
    ([0, 0, 0, 0.25, 0.5], [True, True, True, False, True]),
    ([0, 10, 10, 10, 10], [True, True, True, True, False]),  # tokens never exceed the burst
]


@pytest.mark.parametrize("times, expected", BUCKET)
def test_borrows_per_second(times, expected):
    limits = Limits(connections_per_user=10, borrows_per_second=2, burst=3)
    assert [limits.borrow(1000, now=t) for t in times] == expected
    assert limits.borrow(1001, now=times[-1])   # per user
