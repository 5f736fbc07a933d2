//! The server driver against hand-built HTTP/2 frames: the protocol rules a peer can break and
//! the limits that protect the server. Frames and header blocks are written and read here by
//! hand (literal HPACK, no Huffman), independently of the production encoders.

mod support;

use std::time::Duration;

use sluice_http2::GrpcServerConfig;
use support::raw::*;
use support::{framed, within, TestServer};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// A gRPC request header block for `/EchoService/<method>`, plus `extra` fields.
fn request_block(method: &str, extra: &[(&str, &str)]) -> Vec<u8> {
    let mut b = vec![0x83, 0x86]; // :method POST, :scheme http (static table)
    literal(":path", &format!("/EchoService/{method}"), &mut b);
    literal(":authority", "kxserver", &mut b);
    literal("content-type", "application/grpc", &mut b);
    literal("te", "trailers", &mut b);
    for (n, v) in extra {
        literal(n, v, &mut b);
    }
    b
}

/// A minimal HPACK reader for what the server sends: static indexed fields, literals with a
/// static or new name, size updates. Returns None for anything else.
fn read_block(mut b: &[u8]) -> Option<Vec<(String, String)>> {
    const STATIC: &[(&str, &str)] = &[
        (":authority", ""),
        (":method", "GET"),
        (":method", "POST"),
        (":path", "/"),
        (":path", "/index.html"),
        (":scheme", "http"),
        (":scheme", "https"),
        (":status", "200"),
        (":status", "204"),
        (":status", "206"),
        (":status", "304"),
        (":status", "400"),
        (":status", "404"),
        (":status", "500"),
    ];
    fn int(b: &mut &[u8], prefix: u8) -> Option<usize> {
        let mask = (1u16 << prefix) as usize - 1;
        let mut v = usize::from(*b.first()?) & mask;
        *b = &b[1..];
        if v < mask {
            return Some(v);
        }
        let mut shift = 0;
        loop {
            let x = *b.first()?;
            *b = &b[1..];
            v += usize::from(x & 0x7f) << shift;
            shift += 7;
            if x & 0x80 == 0 {
                return Some(v);
            }
        }
    }
    fn string(b: &mut &[u8]) -> Option<String> {
        if b.first()? & 0x80 != 0 {
            return None; // Huffman: not expected from this server
        }
        let len = int(b, 7)?;
        let s = String::from_utf8(b.get(..len)?.to_vec()).ok()?;
        *b = &b[len..];
        Some(s)
    }
    let mut out = Vec::new();
    while let Some(&first) = b.first() {
        if first & 0x80 != 0 {
            let i = int(&mut b, 7)?;
            let (n, v) = STATIC.get(i.checked_sub(1)?)?;
            out.push((n.to_string(), v.to_string()));
        } else if first & 0xe0 == 0x20 {
            int(&mut b, 5)?;
        } else if first & 0xc0 == 0 {
            let i = int(&mut b, 4)?;
            let name = if i == 0 {
                string(&mut b)?
            } else {
                match i {
                    1 => ":authority".into(),
                    4 => ":path".into(),
                    8 => ":status".into(),
                    31 => "content-type".into(),
                    _ => return None,
                }
            };
            out.push((name, string(&mut b)?));
        } else {
            return None;
        }
    }
    Some(out)
}

/// A connection to the test server, past the handshake.
struct Conn(FrameIo);

impl std::ops::Deref for Conn {
    type Target = FrameIo;
    fn deref(&self) -> &FrameIo {
        &self.0
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut FrameIo {
        &mut self.0
    }
}

impl Conn {
    /// Connects, sends the preface and `client_settings`, and reads the server's SETTINGS.
    async fn open(server: &TestServer, client_settings: &[(u16, u32)]) -> Conn {
        let tcp = TcpStream::connect(server.addr).await.unwrap();
        let mut c = Conn(FrameIo::new(tcp));
        let mut hello = PREFACE.to_vec();
        hello.extend_from_slice(&settings(client_settings));
        c.send(&hello).await;
        let first = c.next().await.expect("server SETTINGS");
        assert_eq!((first.ty, first.flags), (SETTINGS, 0));
        c
    }

    /// Sends a request on `stream` and its messages, then reads the response to its end:
    /// (headers, DATA bytes, trailers).
    async fn echo(&mut self, stream: u32, message: &[u8]) -> Vec<(String, String)> {
        self.send(&frame(
            HEADERS,
            END_HEADERS,
            stream,
            &request_block("Echo", &[]),
        ))
        .await;
        self.send(&frame(DATA, END_STREAM, stream, &framed(message)))
            .await;
        let mut data = Vec::new();
        let mut lists = Vec::new();
        loop {
            let f = self
                .until("the response", |f| {
                    f.stream == stream && (f.ty == HEADERS || f.ty == DATA)
                })
                .await;
            if f.ty == DATA {
                data.extend_from_slice(&f.payload);
                continue;
            }
            lists.push(read_block(&f.payload).expect("a block this test can read"));
            if f.flags & END_STREAM != 0 {
                break;
            }
        }
        assert_eq!(data, framed(message).to_vec());
        lists.pop().unwrap()
    }
}

fn code(list: &[(String, String)], name: &str) -> Option<String> {
    list.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone())
}

#[tokio::test]
async fn pings_are_acked_and_unknown_and_priority_frames_ignored() {
    let server = TestServer::start().await;
    let mut c = Conn::open(&server, &[]).await;
    c.send(&frame(0xfa, 0xff, 0, b"whatever")).await;
    c.send(&frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 16])).await;
    c.send(&frame(PING, 0, 0, b"12345678")).await;
    let ack = c.until("PING ACK", |f| f.ty == PING).await;
    assert_eq!((ack.flags, &ack.payload[..]), (ACK, &b"12345678"[..]));
    let trailers = c.echo(1, b"still fine").await;
    assert_eq!(code(&trailers, "grpc-status").as_deref(), Some("0"));
}

#[tokio::test]
async fn a_request_split_over_continuation_frames_is_served() {
    let server = TestServer::start().await;
    let mut c = Conn::open(&server, &[]).await;
    let block = request_block("Echo", &[("x-a", "1"), ("x-b", "2")]);
    let (a, rest) = block.split_at(7);
    let (b, d) = rest.split_at(20);
    c.send(&frame(HEADERS, 0, 1, a)).await;
    c.send(&frame(CONTINUATION, 0, 1, b)).await;
    c.send(&frame(CONTINUATION, END_HEADERS, 1, d)).await;
    c.send(&frame(DATA, END_STREAM, 1, &framed(b"split"))).await;
    let head = c.until("response headers", |f| f.ty == HEADERS).await;
    let head = read_block(&head.payload).unwrap();
    assert_eq!(code(&head, ":status").as_deref(), Some("200"));
    assert_eq!(
        code(&head, "x-a").as_deref(),
        Some("1"),
        "the echo handler passes x-* on"
    );
    assert_eq!(code(&head, "x-b").as_deref(), Some("2"));
}

#[tokio::test]
async fn malformed_requests_are_reset_and_the_connection_goes_on() {
    let server = TestServer::start().await;
    let mut c = Conn::open(&server, &[]).await;
    let cases: Vec<(u32, Vec<u8>)> = vec![
        (1, request_block("Echo", &[("X-Upper", "a")])),
        (3, request_block("Echo", &[("connection", "close")])),
        (5, request_block("Echo", &[("te", "gzip")])),
        (7, {
            let mut b = request_block("Echo", &[]);
            literal(":path", "/twice/Echo", &mut b);
            b
        }),
        (9, {
            // A pseudo-header after a regular one.
            let mut b = vec![0x83, 0x86];
            literal("content-type", "application/grpc", &mut b);
            literal(":path", "/EchoService/Echo", &mut b);
            b
        }),
        (11, {
            let mut b = vec![0x83];
            literal(":path", "/EchoService/Echo", &mut b);
            b // no :scheme
        }),
    ];
    for (stream, block) in cases {
        c.send(&frame(HEADERS, END_HEADERS | END_STREAM, stream, &block))
            .await;
        let rst = c
            .until("RST_STREAM", |f| f.ty == RST_STREAM && f.stream == stream)
            .await;
        assert_eq!(
            rst.payload,
            1u32.to_be_bytes(),
            "PROTOCOL_ERROR on stream {stream}"
        );
    }
    let trailers = c.echo(13, b"after").await;
    assert_eq!(code(&trailers, "grpc-status").as_deref(), Some("0"));
}

#[tokio::test]
async fn a_header_list_over_the_limit_gets_resource_exhausted() {
    let config = GrpcServerConfig::default().with_max_header_list_size(1024);
    let server = TestServer::start_with(config).await;
    let mut c = Conn::open(&server, &[]).await;
    let big = "v".repeat(100);
    let extra: Vec<(String, &str)> = (0..12).map(|i| (format!("x-{i}"), big.as_str())).collect();
    let extra: Vec<(&str, &str)> = extra.iter().map(|(n, v)| (n.as_str(), *v)).collect();
    c.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("Echo", &extra),
    ))
    .await;
    let resp = c.until("the refusal", |f| f.ty == HEADERS).await;
    assert_ne!(resp.flags & END_STREAM, 0, "Trailers-Only");
    let list = read_block(&resp.payload).unwrap();
    assert_eq!(code(&list, "grpc-status").as_deref(), Some("8"));
    // The connection is still usable.
    let trailers = c.echo(3, b"small").await;
    assert_eq!(code(&trailers, "grpc-status").as_deref(), Some("0"));
}

#[tokio::test]
async fn header_blocks_too_large_or_in_too_many_pieces_end_the_connection() {
    let config = GrpcServerConfig::default().with_max_header_list_size(1024);
    let server = TestServer::start_with(config).await;

    let mut c = Conn::open(&server, &[]).await;
    c.send(&frame(HEADERS, 0, 1, &[0u8; 1500])).await;
    c.send(&frame(CONTINUATION, 0, 1, &[0u8; 1500])).await;
    assert_eq!(c.goaway().await.1, 0xb, "ENHANCE_YOUR_CALM");

    let mut c = Conn::open(&server, &[]).await;
    c.send(&frame(HEADERS, 0, 1, &request_block("Echo", &[])))
        .await;
    for _ in 0..100 {
        c.send(&frame(CONTINUATION, 0, 1, &[])).await;
    }
    assert_eq!(c.goaway().await.1, 0xb, "ENHANCE_YOUR_CALM");

    // A header block interrupted by another frame.
    let mut c = Conn::open(&server, &[]).await;
    c.send(&frame(HEADERS, 0, 1, &request_block("Echo", &[])))
        .await;
    c.send(&frame(PING, 0, 0, b"12345678")).await;
    assert_eq!(c.goaway().await.1, 0x1, "PROTOCOL_ERROR");
}

#[tokio::test]
async fn data_breaking_the_stream_rules_is_caught() {
    let config = GrpcServerConfig::default().with_initial_stream_window(65_535);
    let server = TestServer::start_with(config).await;
    let mut c = Conn::open(&server, &[]).await;
    // Past the stream window (the handler never reads): that stream is reset, and the
    // connection goes on.
    c.send(&frame(
        HEADERS,
        END_HEADERS,
        1,
        &request_block("Stall", &[]),
    ))
    .await;
    let chunk = vec![0u8; 16_384];
    for _ in 0..4 {
        c.send(&frame(DATA, 0, 1, &chunk)).await;
    }
    let rst = c
        .until("RST_STREAM", |f| f.ty == RST_STREAM && f.stream == 1)
        .await;
    assert_eq!(rst.payload, 3u32.to_be_bytes(), "FLOW_CONTROL_ERROR");

    // DATA after the client's END_STREAM.
    c.send(&frame(
        HEADERS,
        END_HEADERS,
        3,
        &request_block("Stall", &[]),
    ))
    .await;
    c.send(&frame(DATA, END_STREAM, 3, &framed(b"last"))).await;
    c.send(&frame(DATA, 0, 3, &framed(b"more"))).await;
    let rst = c
        .until("RST_STREAM", |f| f.ty == RST_STREAM && f.stream == 3)
        .await;
    assert_eq!(rst.payload, 5u32.to_be_bytes(), "STREAM_CLOSED");

    let trailers = c.echo(5, b"fine").await;
    assert_eq!(code(&trailers, "grpc-status").as_deref(), Some("0"));

    // DATA on a stream that was never opened ends the connection.
    c.send(&frame(DATA, 0, 99, &framed(b"?"))).await;
    assert_eq!(c.goaway().await, (5, 0x1), "PROTOCOL_ERROR, last stream 5");
}

#[tokio::test]
async fn the_server_keeps_to_a_small_client_window_and_frame_size() {
    let server = TestServer::start().await;
    // INITIAL_WINDOW_SIZE 100: the response's DATA stops at 100 bytes until a WINDOW_UPDATE.
    let mut c = Conn::open(&server, &[(0x4, 100)]).await;
    let message = vec![5u8; 1000];
    c.send(&frame(HEADERS, END_HEADERS, 1, &request_block("Echo", &[])))
        .await;
    c.send(&frame(DATA, END_STREAM, 1, &framed(&message))).await;
    let mut got = 0;
    while got < 100 {
        let f = c.until("DATA", |f| f.ty == DATA).await;
        assert!(f.payload.len() <= 100 - got);
        got += f.payload.len();
    }
    let more = tokio::time::timeout(
        Duration::from_millis(200),
        c.until("more DATA", |f| f.ty == DATA),
    )
    .await;
    assert!(more.is_err(), "nothing beyond the window");
    c.send(&frame(WINDOW_UPDATE, 0, 1, &5000u32.to_be_bytes()))
        .await;
    while got < 1005 {
        let f = c.until("DATA", |f| f.ty == DATA).await;
        got += f.payload.len();
    }
    assert_eq!(got, 1005);
    let t = c
        .until("trailers", |f| f.ty == HEADERS && f.flags & END_STREAM != 0)
        .await;
    assert_eq!(
        code(&read_block(&t.payload).unwrap(), "grpc-status").as_deref(),
        Some("0")
    );
}

#[tokio::test]
async fn a_smaller_header_table_is_answered_with_a_size_update() {
    let server = TestServer::start().await;
    let mut c = Conn::open(&server, &[(0x1, 0)]).await;
    c.send(&frame(HEADERS, END_HEADERS, 1, &request_block("Echo", &[])))
        .await;
    c.send(&frame(DATA, END_STREAM, 1, &framed(b"x"))).await;
    let head = c.until("response headers", |f| f.ty == HEADERS).await;
    assert_eq!(
        head.payload[0], 0x20,
        "dynamic table size update to 0 first"
    );
}

#[tokio::test]
async fn a_bad_start_ends_the_connection_with_goaway() {
    let server = TestServer::start().await;
    // The preface, then a PING instead of SETTINGS.
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    let mut hello = PREFACE.to_vec();
    hello.extend_from_slice(&frame(PING, 0, 0, b"12345678"));
    tcp.write_all(&hello).await.unwrap();
    let mut c = FrameIo::new(tcp);
    assert_eq!(c.goaway().await.1, 0x1, "PROTOCOL_ERROR");

    // An even stream id from a client.
    let mut c = Conn::open(&server, &[]).await;
    c.send(&frame(HEADERS, END_HEADERS, 2, &request_block("Echo", &[])))
        .await;
    assert_eq!(c.goaway().await.1, 0x1, "PROTOCOL_ERROR");
}

#[tokio::test]
async fn a_silent_client_is_closed_after_the_handshake_timeout() {
    let config = GrpcServerConfig::default().with_handshake_timeout(Duration::from_millis(200));
    let mut server = TestServer::start_with(config).await;
    let mut tcp = TcpStream::connect(server.addr).await.unwrap();
    // The test server's listener reads 10 bytes of preface before handing over.
    tcp.write_all(&PREFACE[..10]).await.unwrap();
    let result = within("the connection to end", server.results.recv()).await;
    let err = result.unwrap().unwrap_err();
    assert!(err.contains("timed out"), "{err}");
}

#[tokio::test]
async fn streams_over_the_concurrency_limit_are_refused() {
    let config = GrpcServerConfig::default().with_max_concurrent_streams(2);
    let server = TestServer::start_with(config).await;
    let mut c = Conn::open(&server, &[]).await;
    for stream in [1u32, 3, 5] {
        c.send(&frame(
            HEADERS,
            END_HEADERS,
            stream,
            &request_block("Stall", &[]),
        ))
        .await;
    }
    let rst = c.until("RST_STREAM", |f| f.ty == RST_STREAM).await;
    assert_eq!(
        (rst.stream, rst.payload.as_slice()),
        (5, &7u32.to_be_bytes()[..]),
        "REFUSED_STREAM"
    );
}

#[tokio::test]
async fn a_flood_of_opened_and_reset_streams_ends_the_connection() {
    let server = TestServer::start().await;
    let mut c = Conn::open(&server, &[]).await;
    // Opened and reset at once, over and over: each costs the server a handler.
    let mut burst = Vec::new();
    for i in 0..1500u32 {
        let stream = 2 * i + 1;
        burst.extend_from_slice(&frame(
            HEADERS,
            END_HEADERS,
            stream,
            &request_block("Stall", &[]),
        ));
        burst.extend_from_slice(&frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
    }
    c.send(&burst).await;
    assert_eq!(c.goaway().await.1, 0xb, "ENHANCE_YOUR_CALM");

    // Resets at a normal pace are fine.
    let mut c = Conn::open(&server, &[]).await;
    for i in 0..50u32 {
        let stream = 2 * i + 1;
        c.send(&frame(
            HEADERS,
            END_HEADERS,
            stream,
            &request_block("Stall", &[]),
        ))
        .await;
        c.send(&frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()))
            .await;
    }
    let trailers = c.echo(101, b"fine").await;
    assert_eq!(code(&trailers, "grpc-status").as_deref(), Some("0"));
}

/// A client that floods `one` frames (each answered with an acknowledgement) without reading:
/// the server stops with GOAWAY(ENHANCE_YOUR_CALM) instead of answering them all; returns how
/// many acknowledgements came before the GOAWAY.
async fn flood_without_reading(server: &TestServer, one: &[u8], count: usize, ack: u8) -> usize {
    let mut c = Conn::open(server, &[]).await;
    let flood: Vec<u8> = one.repeat(count);
    // Written whole before anything is read (the server keeps reading: it never stops for its
    // own writes, and it drains what a connection it ended still sends).
    within("writing the flood", c.tcp.write_all(&flood))
        .await
        .unwrap();
    let mut acks = 0;
    loop {
        let f = c
            .next()
            .await
            .expect("a GOAWAY before the connection closes");
        if f.ty == ack && f.flags & ACK != 0 {
            acks += 1;
            continue;
        }
        if f.ty == GOAWAY {
            let code = u32::from_be_bytes(f.payload[4..8].try_into().unwrap());
            assert_eq!(code, 0xb, "ENHANCE_YOUR_CALM");
            return acks;
        }
    }
}

#[tokio::test]
async fn ping_and_settings_floods_from_a_client_that_does_not_read_end_the_connection() {
    let mut server = TestServer::start().await;
    let count = 300_000;
    let acks = flood_without_reading(&server, &frame(PING, 0, 0, b"flooding"), count, PING).await;
    assert!(acks < count, "{acks} of {count} PINGs answered");
    let result = within("the connection's result", server.results.recv()).await;
    assert!(result.unwrap().unwrap_err().contains("ENHANCE_YOUR_CALM"));

    let acks = flood_without_reading(&server, &settings(&[(0x4, 65_535)]), count, SETTINGS).await;
    // The first SETTINGS ACK answers the handshake's SETTINGS.
    assert!(acks < count, "{acks} of {count} SETTINGS answered");

    // A client that reads its answers may ping as it likes.
    let mut c = Conn::open(&server, &[]).await;
    for _ in 0..2000 {
        c.send(&frame(PING, 0, 0, b"politely")).await;
        c.until("PING ACK", |f| f.ty == PING && f.flags & ACK != 0)
            .await;
    }
    let trailers = c.echo(1, b"fine").await;
    assert_eq!(code(&trailers, "grpc-status").as_deref(), Some("0"));
}

mod random {
    use super::*;
    use proptest::collection::vec;
    use proptest::prelude::*;

    /// A frame with a random type (the ten defined ones and an unknown one), flags, a small
    /// stream id and payload: most are invalid in some way.
    fn any_frame() -> impl Strategy<Value = Vec<u8>> {
        (0u8..11, any::<u8>(), 0u32..8, vec(any::<u8>(), 0..48)).prop_map(
            |(ty, flags, stream, mut payload)| {
                // Now and then a valid-looking request block, so streams get opened.
                if ty == HEADERS && flags & 1 == 0 {
                    payload = request_block("Echo", &[]);
                }
                frame(ty, flags, stream, &payload)
            },
        )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

        #[test]
        fn random_frames_never_break_the_server(frames in vec(any_frame(), 1..30)) {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                let mut server = TestServer::start().await;
                let mut c = Conn::open(&server, &[]).await;
                c.send(&frames.concat()).await;
                // Whatever the server makes of them, it answers or closes, then ends this
                // connection with a result once the client goes (no panic, no hang).
                let _ = tokio::time::timeout(Duration::from_millis(100), async {
                    while c.next().await.is_some() {}
                })
                .await;
                drop(c);
                let result = within("the connection's result", server.results.recv()).await;
                assert!(result.is_some());
                // And it still serves others.
                let mut fresh = Conn::open(&server, &[]).await;
                let trailers = fresh.echo(1, b"ok").await;
                assert_eq!(code(&trailers, "grpc-status").as_deref(), Some("0"));
            });
        }
    }
}

#[tokio::test]
async fn streams_reset_at_any_point_leave_no_handler_behind() {
    let server = TestServer::start().await;
    let mut c = Conn::open(&server, &[]).await;
    let mut stream = 1u32;
    for round in 0..100u32 {
        for method in ["Echo", "Stall", "RecvReport", "Slow", "Flood"] {
            let mut burst = frame(HEADERS, END_HEADERS, stream, &request_block(method, &[]));
            match round % 4 {
                0 => {}
                1 => burst.extend_from_slice(&frame(DATA, 0, stream, &framed(b"m"))),
                2 => burst.extend_from_slice(&frame(DATA, END_STREAM, stream, &framed(b"m"))),
                _ => burst.extend_from_slice(&frame(DATA, 0, stream, &[0, 0, 0, 0, 9, 1])),
            }
            burst.extend_from_slice(&frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
            c.send(&burst).await;
            stream += 2;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let trailers = c.echo(stream, b"fine").await;
    assert_eq!(code(&trailers, "grpc-status").as_deref(), Some("0"));
    within("every handler to end", async {
        while server.live.load(std::sync::atomic::Ordering::SeqCst) != 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn headers_on_a_closed_or_lower_stream_id_is_a_connection_error() {
    let server = TestServer::start().await;
    // A closed stream (both sides ended).
    let mut c = Conn::open(&server, &[]).await;
    let trailers = c.echo(3, b"done").await;
    assert_eq!(code(&trailers, "grpc-status").as_deref(), Some("0"));
    c.send(&frame(HEADERS, END_HEADERS, 3, &request_block("Echo", &[])))
        .await;
    assert_eq!(c.goaway().await, (3, 0x1), "PROTOCOL_ERROR");

    // A new stream below the highest one used.
    let mut c = Conn::open(&server, &[]).await;
    let trailers = c.echo(5, b"done").await;
    assert_eq!(code(&trailers, "grpc-status").as_deref(), Some("0"));
    c.send(&frame(HEADERS, END_HEADERS, 3, &request_block("Echo", &[])))
        .await;
    assert_eq!(c.goaway().await, (5, 0x1), "PROTOCOL_ERROR");
}

#[tokio::test]
async fn rst_stream_and_window_update_on_idle_streams_are_connection_errors() {
    let server = TestServer::start().await;
    let mut c = Conn::open(&server, &[]).await;
    c.send(&frame(RST_STREAM, 0, 7, &8u32.to_be_bytes())).await;
    assert_eq!(c.goaway().await, (0, 0x1), "PROTOCOL_ERROR");

    let mut c = Conn::open(&server, &[]).await;
    let trailers = c.echo(1, b"done").await;
    assert_eq!(code(&trailers, "grpc-status").as_deref(), Some("0"));
    // On the stream just closed: fine. On one never opened: not.
    c.send(&frame(WINDOW_UPDATE, 0, 1, &100u32.to_be_bytes()))
        .await;
    c.send(&frame(WINDOW_UPDATE, 0, 9, &100u32.to_be_bytes()))
        .await;
    assert_eq!(c.goaway().await, (1, 0x1), "PROTOCOL_ERROR");
}

#[tokio::test]
async fn headers_on_a_half_closed_remote_stream_is_stream_closed() {
    let server = TestServer::start().await;
    let mut c = Conn::open(&server, &[]).await;
    c.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &request_block("Stall", &[]),
    ))
    .await;
    let mut trailer = Vec::new();
    literal("x-trailer", "t", &mut trailer);
    c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &trailer))
        .await;
    let rst = c
        .until("RST_STREAM", |f| f.ty == RST_STREAM && f.stream == 1)
        .await;
    assert_eq!(rst.payload, 5u32.to_be_bytes(), "STREAM_CLOSED");
    // A stream error: the connection goes on.
    let trailers = c.echo(3, b"fine").await;
    assert_eq!(code(&trailers, "grpc-status").as_deref(), Some("0"));
}

#[tokio::test]
async fn pseudo_headers_in_trailers_reset_the_stream() {
    let server = TestServer::start().await;
    let mut c = Conn::open(&server, &[]).await;
    c.send(&frame(
        HEADERS,
        END_HEADERS,
        1,
        &request_block("RecvReport", &[]),
    ))
    .await;
    c.send(&frame(DATA, 0, 1, &framed(b"m"))).await;
    let mut trailer = Vec::new();
    literal(":path", "/EchoService/Echo", &mut trailer);
    c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &trailer))
        .await;
    let rst = c
        .until("RST_STREAM", |f| f.ty == RST_STREAM && f.stream == 1)
        .await;
    assert_eq!(rst.payload, 1u32.to_be_bytes(), "PROTOCOL_ERROR");
    let trailers = c.echo(3, b"fine").await;
    assert_eq!(code(&trailers, "grpc-status").as_deref(), Some("0"));
}

/// Reads frames off a duplex pipe: (type, flags, stream, payload), None at EOF.
async fn read_frame(io: &mut tokio::io::DuplexStream) -> Option<(u8, u8, u32, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut head = [0u8; 9];
    io.read_exact(&mut head).await.ok()?;
    let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await.ok()?;
    let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
    Some((head[3], head[4], stream, payload))
}

#[tokio::test(start_paused = true)]
async fn an_idle_connection_is_closed_with_goaway_after_the_idle_timeout() {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    let stats = Arc::new(sluice_http2::GrpcServerStats::default());
    let config = GrpcServerConfig::default()
        .with_idle_timeout(Duration::from_secs(60))
        .with_stats(Some(stats.clone()));
    let (reports, _reports_rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = Arc::new(support::Scripted {
        reports,
        live: Arc::default(),
    });
    let (mut client, server_io) = tokio::io::duplex(1 << 16);
    let peer = "127.0.0.1:9".parse().unwrap();
    let serving = tokio::spawn(async move {
        sluice_http2::serve_connection(server_io, peer, &config, handler, std::future::pending())
            .await
    });
    let mut hello = PREFACE.to_vec();
    hello.extend_from_slice(&settings(&[]));
    // A stream that stays open keeps the connection, however quiet.
    hello.extend_from_slice(&frame(
        HEADERS,
        END_HEADERS,
        1,
        &request_block("Stall", &[]),
    ));
    client.write_all(&hello).await.unwrap();
    tokio::time::sleep(Duration::from_secs(200)).await;
    let mut frames = Vec::new();
    while let Ok(Some(f)) =
        tokio::time::timeout(Duration::from_millis(10), read_frame(&mut client)).await
    {
        frames.push(f);
    }
    assert!(frames.iter().all(|f| f.0 != GOAWAY), "{frames:?}");
    // Once it is reset, the connection is idle: 60 s of silence later it is closed.
    client
        .write_all(&frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(59)).await;
    assert!(!serving.is_finished());
    assert_eq!(stats.connections_idle_closed.load(Ordering::Relaxed), 0);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let goaway = loop {
        match read_frame(&mut client).await {
            Some(f) if f.0 == GOAWAY => break f,
            Some(_) => continue,
            None => panic!("closed without GOAWAY"),
        }
    };
    assert_eq!(
        &goaway.3[..8],
        &[0, 0, 0, 1, 0, 0, 0, 0],
        "last stream 1, NO_ERROR"
    );
    drop(client);
    let result = serving.await.unwrap();
    assert!(result.is_ok(), "{result:?}");
    assert_eq!(stats.connections_idle_closed.load(Ordering::Relaxed), 1);
    assert_eq!(stats.streams_reset_by_peer.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn refused_streams_are_counted() {
    use std::sync::atomic::Ordering;
    use std::sync::Arc;
    let stats = Arc::new(sluice_http2::GrpcServerStats::default());
    let config = GrpcServerConfig::default()
        .with_max_concurrent_streams(1)
        .with_stats(Some(stats.clone()));
    let server = TestServer::start_with(config).await;
    let mut c = Conn::open(&server, &[]).await;
    c.send(&frame(
        HEADERS,
        END_HEADERS,
        1,
        &request_block("Stall", &[]),
    ))
    .await;
    // Over the limit.
    c.send(&frame(
        HEADERS,
        END_HEADERS,
        3,
        &request_block("Stall", &[]),
    ))
    .await;
    c.until("RST_STREAM", |f| f.ty == RST_STREAM && f.stream == 3)
        .await;
    // Malformed (no :path).
    c.send(&frame(RST_STREAM, 0, 1, &8u32.to_be_bytes())).await;
    c.send(&frame(HEADERS, END_HEADERS, 5, &[0x83, 0x86])).await;
    c.until("RST_STREAM", |f| f.ty == RST_STREAM && f.stream == 5)
        .await;
    // Answered with a status (bad content-type).
    let mut block = vec![0x83, 0x86];
    literal(":path", "/EchoService/Echo", &mut block);
    literal("content-type", "text/plain", &mut block);
    c.send(&frame(HEADERS, END_HEADERS | END_STREAM, 7, &block))
        .await;
    c.until("the refusal", |f| f.ty == HEADERS && f.stream == 7)
        .await;
    assert_eq!(stats.streams_refused.load(Ordering::Relaxed), 3);
    assert_eq!(stats.streams_reset_by_peer.load(Ordering::Relaxed), 1);
}

/// Graceful shutdown: a request sent before the client saw the first GOAWAY is served even if
/// the connection was idle when the shutdown began; one sent after the final GOAWAY is refused
/// with REFUSED_STREAM (safe to retry).
#[tokio::test]
async fn drain_serves_requests_in_flight_and_refuses_later_ones() {
    let server = TestServer::start().await;
    let mut c = Conn::open(&server, &[]).await;
    server.shutdown();
    let first = c.until("the first GOAWAY", |f| f.ty == GOAWAY).await;
    assert_eq!(&first.payload[..8], &[0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0]);
    let ping = c
        .until("the shutdown PING", |f| f.ty == PING && f.flags & ACK == 0)
        .await;
    // A request the client sent before it read the GOAWAY.
    c.send(&frame(HEADERS, END_HEADERS, 1, &request_block("Slow", &[])))
        .await;
    c.send(&frame(DATA, END_STREAM, 1, &framed(b"in flight")))
        .await;
    c.send(&frame(PING, ACK, 0, &ping.payload)).await;
    let last = c.until("the final GOAWAY", |f| f.ty == GOAWAY).await;
    assert_eq!(
        &last.payload[..8],
        &[0, 0, 0, 1, 0, 0, 0, 0],
        "last stream 1"
    );
    // After the final GOAWAY: refused.
    c.send(&frame(HEADERS, END_HEADERS, 3, &request_block("Echo", &[])))
        .await;
    let mut refused = false;
    loop {
        let f = c
            .until("the response", |f| f.stream == 1 || f.stream == 3)
            .await;
        if f.stream == 3 {
            assert_eq!(
                (f.ty, f.payload.as_slice()),
                (RST_STREAM, &7u32.to_be_bytes()[..])
            );
            refused = true;
        } else if f.ty == HEADERS && f.flags & END_STREAM != 0 {
            let trailers = read_block(&f.payload).unwrap();
            assert_eq!(code(&trailers, "grpc-status").as_deref(), Some("0"));
            break;
        }
    }
    if !refused {
        let f = c.until("the refusal", |f| f.stream == 3).await;
        assert_eq!(
            (f.ty, f.payload.as_slice()),
            (RST_STREAM, &7u32.to_be_bytes()[..])
        );
    }
}
