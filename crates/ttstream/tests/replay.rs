//! The state machine replays every TTStream capture: frames in causal order (DECODED.md index
//! order, which follows the relay's reads), grouped per connection and stream id, fed to a
//! server-side and a client-side machine. No frame is refused, and every stream ends as the
//! capture shows.

mod common;

use std::collections::BTreeMap;

use common::decode_one;
use sluice_testkit::{Capture, Dir, TTSTREAM};
use sluice_ttstream::{End, FrameType, Side, Step, Stream, StreamFrame};

type Streams = BTreeMap<(usize, i32), Vec<(Side, StreamFrame)>>;

/// The frames of each stream of a capture, in causal order, with their sender.
fn streams_of(name: &str) -> Streams {
    let cap = Capture::load(name);
    let mut frames: Vec<_> = cap.frames.iter().collect();
    frames.sort_by_key(|e| e.index);
    let mut out = Streams::new();
    for e in frames {
        let dir = e.dir.expect("direction");
        let bytes = &cap.conns[e.conn].bytes(dir)[e.offset..e.offset + e.len];
        let f = decode_one(bytes);
        assert_eq!(Some(f.stream_id), e.seq_id);
        let from = match dir {
            Dir::C2s => Side::Client,
            Dir::S2c => Side::Server,
        };
        out.entry((e.conn, f.stream_id))
            .or_default()
            .push((from, f));
    }
    out
}

/// Feeds one stream to both ends' machines; both must agree on every step.
fn replay(ctx: &str, id: i32, frames: &[(Side, StreamFrame)]) -> (Vec<Step>, Stream, Stream) {
    let mut server = Stream::new(Side::Server, id).unwrap();
    let mut client = Stream::new(Side::Client, id).unwrap();
    let mut steps = Vec::new();
    for (i, (from, f)) in frames.iter().enumerate() {
        let (s, c) = match from {
            Side::Client => (server.recv(f.kind), client.send(f.kind)),
            Side::Server => (server.send(f.kind), client.recv(f.kind)),
        };
        let s = s.unwrap_or_else(|e| panic!("{ctx}: frame {i} ({from:?} {}): {e}", f.kind));
        assert_eq!(c, Ok(s), "{ctx}: frame {i}: both ends agree");
        steps.push(s);
    }
    (steps, server, client)
}

#[test]
fn every_capture_replays_without_error() {
    let mut total = 0;
    for name in TTSTREAM {
        for ((conn, id), frames) in streams_of(name) {
            let ctx = format!("{name} conn{conn} stream {id}");
            let (steps, server, client) = replay(&ctx, id, &frames);
            total += 1;

            // The frame that ends the stream: the first Rst, or the server's Trailer.
            let end_at = frames
                .iter()
                .position(|(from, f)| {
                    f.kind == FrameType::Rst
                        || (*from == Side::Server && f.kind == FrameType::Trailer)
                })
                .unwrap_or_else(|| panic!("{ctx}: every captured stream ends"));
            let (by, kind) = (frames[end_at].0, frames[end_at].1.kind);
            let want = match kind {
                FrameType::Rst => End::Reset { by },
                _ => End::Finished,
            };
            assert_eq!(steps[0], Step::Opened, "{ctx}");
            assert_eq!(steps[end_at], Step::Ended(want), "{ctx}");
            for (i, step) in steps.iter().enumerate().take(end_at).skip(1) {
                let (from, f) = &frames[i];
                let want = if *from == Side::Client && f.kind == FrameType::Trailer {
                    Step::HalfClosed
                } else {
                    Step::Accepted
                };
                assert_eq!(*step, want, "{ctx}: frame {i}");
            }
            for step in &steps[end_at + 1..] {
                assert_eq!(*step, Step::Ignored, "{ctx}: late frame");
            }
            assert_eq!(server.end(), Some(want), "{ctx}");
            assert_eq!(client.end(), Some(want), "{ctx}");
        }
    }
    assert_eq!(total, 13, "streams in the TTStream captures");
}

/// What each scenario's streams must end as: (streams, how they end, late frames in all).
#[test]
fn terminal_states_per_scenario() {
    let want: [(&str, usize, End, usize); 7] = [
        ("ttstream-bidi", 2, End::Finished, 0),
        ("ttstream-client", 2, End::Finished, 0),
        ("ttstream-server", 2, End::Finished, 0),
        // The client's Trailer follows the server's error Trailer.
        ("ttstream-bidi-error", 1, End::Finished, 1),
        ("ttstream-echofail", 1, End::Finished, 1),
        // After the client's Rst: its own Trailer and the server's error Trailer.
        (
            "ttstream-bidi-cancel",
            1,
            End::Reset { by: Side::Client },
            2,
        ),
        ("ttstream-bidi-multi", 4, End::Finished, 0),
    ];
    assert_eq!(want.len(), TTSTREAM.len());
    for (name, count, end, late) in want {
        let streams = streams_of(name);
        assert_eq!(streams.len(), count, "{name}");
        let mut ignored = 0;
        for ((_, id), frames) in &streams {
            let (steps, server, client) = replay(name, *id, frames);
            assert_eq!(
                (server.end(), client.end()),
                (Some(end), Some(end)),
                "{name}"
            );
            assert!(!server.is_open() && client.client_done(), "{name}");
            ignored += steps.iter().filter(|s| **s == Step::Ignored).count();
        }
        assert_eq!(ignored, late, "{name}: late frames");
    }
}

#[test]
fn server_view_of_a_race_ignores_in_flight_client_data() {
    // ttstream-bidi-error as the server may see it: its error Trailer leaves before the
    // client's second Data arrives. The Data was in flight, not a violation.
    let streams = streams_of("ttstream-bidi-error");
    let frames = streams.values().next().unwrap();
    let order: Vec<(Side, FrameType)> = frames.iter().map(|(s, f)| (*s, f.kind)).collect();
    assert_eq!(
        order,
        [
            (Side::Client, FrameType::Header),
            (Side::Client, FrameType::Data),
            (Side::Server, FrameType::Header),
            (Side::Server, FrameType::Data),
            (Side::Client, FrameType::Data),
            (Side::Server, FrameType::Trailer),
            (Side::Client, FrameType::Trailer),
        ]
    );
    let mut server = Stream::new(Side::Server, 1).unwrap();
    for (from, kind) in &order[..4] {
        server.apply(*from, *kind).unwrap();
    }
    assert_eq!(
        server.send(FrameType::Trailer),
        Ok(Step::Ended(End::Finished))
    );
    assert_eq!(server.recv(FrameType::Data), Ok(Step::Ignored));
    assert_eq!(server.recv(FrameType::Trailer), Ok(Step::Ignored));
}

#[test]
fn interleaved_streams_on_one_connection_are_independent() {
    // ttstream-bidi-multi conn1: streams 2 and 4 interleave and 4 ends first.
    let streams = streams_of("ttstream-bidi-multi");
    let ids: Vec<i32> = streams
        .keys()
        .filter(|(c, _)| *c == 1)
        .map(|(_, id)| *id)
        .collect();
    assert_eq!(ids, [2, 4]);
    let cap = Capture::load("ttstream-bidi-multi");
    let mut ends = Vec::new();
    let mut machines: BTreeMap<i32, Stream> = BTreeMap::new();
    let mut frames: Vec<_> = cap.frames.iter().filter(|e| e.conn == 1).collect();
    frames.sort_by_key(|e| e.index);
    for e in frames {
        let dir = e.dir.unwrap();
        let f = decode_one(&cap.conns[1].bytes(dir)[e.offset..e.offset + e.len]);
        let m = machines
            .entry(f.stream_id)
            .or_insert_with(|| Stream::new(Side::Server, f.stream_id).unwrap());
        let step = match dir {
            Dir::C2s => m.recv(f.kind),
            Dir::S2c => m.send(f.kind),
        }
        .unwrap();
        if let Step::Ended(_) = step {
            ends.push(f.stream_id);
        }
    }
    assert_eq!(ends, [4, 2]);
}
