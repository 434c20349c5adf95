from waker.nginx.activity import Mark, MarkKind, ModelActivity, parse


def test_parses_nginx_syslog_marks():
    begin = parse(b"<190>Nov 27 10:51:39 waker: begin /_inflight/qwen2.5:7b 488-1-1")
    assert begin == Mark(MarkKind.BEGIN, "qwen2.5:7b", b"488-1-1")
    assert parse(b"<190>Nov 27 10:51:40 waker: end qwen2.5:7b 488-1-1 200") == Mark(
        MarkKind.END, "qwen2.5:7b", b"488-1-1"
    )


def test_ignores_anything_else():
    for datagram in (
        b"",
        b"garbage",
        b"<190>Nov 27 waker: begin /elsewhere/x 1-1-1",
        b"<190> waker: end x",
        b"<190>Nov 27 other: end x 1-1-1 200",
        b"\xff\xfe waker: nap x 1 2",
    ):
        assert parse(datagram) is None


def test_tracks_requests_in_flight_their_duration_and_the_last_end():
    activity = ModelActivity()
    activity.begin(b"a", 10.0)
    activity.begin(b"b", 11.0)
    assert activity.in_flight == 2 and activity.oldest == 10.0
    activity.end(b"a", 14.0)
    assert activity.in_flight == 1 and activity.oldest == 11.0 and activity.mean_seconds == 4.0
    activity.end(b"b", 13.0)
    assert activity.in_flight == 0 and activity.last_end == 13.0 and activity.total == 2
    assert activity.mean_seconds == 0.8 * 4.0 + 0.2 * 2.0


def test_an_end_without_its_begin_counts_as_activity_only():
    activity = ModelActivity()
    activity.end(b"lost", 5.0)
    assert activity.in_flight == 0 and activity.last_end == 5.0 and activity.mean_seconds is None
