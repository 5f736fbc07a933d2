//! Raw HTTP/2 for tests that play the peer by hand: frames and literal header blocks written
//! here, frames read back whole. Independent of the production encoders and decoders.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::within;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

pub const DATA: u8 = 0;
pub const HEADERS: u8 = 1;
pub const PRIORITY: u8 = 2;
pub const RST_STREAM: u8 = 3;
pub const SETTINGS: u8 = 4;
pub const PUSH_PROMISE: u8 = 5;
pub const PING: u8 = 6;
pub const GOAWAY: u8 = 7;
pub const WINDOW_UPDATE: u8 = 8;
pub const CONTINUATION: u8 = 9;

pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;

/// A frame: head and payload.
pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, ty, flags];
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A SETTINGS frame with these (identifier, value) pairs.
pub fn settings(pairs: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in pairs {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &p)
}

/// A literal field without indexing, with a new name (RFC 7541 6.2.2), lengths below 127.
pub fn literal(name: &str, value: &str, out: &mut Vec<u8>) {
    assert!(name.len() < 127 && value.len() < 127);
    out.push(0x00);
    out.push(name.len() as u8);
    out.extend_from_slice(name.as_bytes());
    out.push(value.len() as u8);
    out.extend_from_slice(value.as_bytes());
}

/// A received frame.
#[derive(Debug)]
pub struct Got {
    pub ty: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

/// A connection driven frame by frame.
pub struct FrameIo {
    pub tcp: TcpStream,
    buf: Vec<u8>,
}

impl FrameIo {
    pub fn new(tcp: TcpStream) -> FrameIo {
        FrameIo {
            tcp,
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.tcp.write_all(bytes).await.unwrap();
    }

    /// The next frame, or None once the peer closed the connection.
    pub async fn next(&mut self) -> Option<Got> {
        within("a frame from the peer", async {
            loop {
                if self.buf.len() >= 9 {
                    let len = (usize::from(self.buf[0]) << 16)
                        | (usize::from(self.buf[1]) << 8)
                        | usize::from(self.buf[2]);
                    if self.buf.len() >= 9 + len {
                        let f: Vec<u8> = self.buf.drain(..9 + len).collect();
                        return Some(Got {
                            ty: f[3],
                            flags: f[4],
                            stream: u32::from_be_bytes([f[5], f[6], f[7], f[8]]) & 0x7fff_ffff,
                            payload: f[9..].to_vec(),
                        });
                    }
                }
                let mut chunk = [0u8; 16384];
                match self.tcp.read(&mut chunk).await {
                    Ok(0) | Err(_) => return None,
                    Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                }
            }
        })
        .await
    }

    /// Frames until one `pick` accepts; panics if the connection closes first.
    pub async fn until(&mut self, what: &str, pick: impl Fn(&Got) -> bool) -> Got {
        loop {
            match self.next().await {
                Some(f) if pick(&f) => return f,
                Some(_) => continue,
                None => panic!("connection closed before {what}"),
            }
        }
    }

    /// Whether a frame `pick` accepts arrives within `wait`.
    pub async fn sees(&mut self, wait: Duration, pick: impl Fn(&Got) -> bool) -> bool {
        tokio::time::timeout(wait, async {
            loop {
                match self.next().await {
                    Some(f) if pick(&f) => return true,
                    Some(_) => continue,
                    None => return false,
                }
            }
        })
        .await
        .unwrap_or(false)
    }

    /// The GOAWAY that ends the connection: (last stream id, error code).
    pub async fn goaway(&mut self) -> (u32, u32) {
        let f = self.until("GOAWAY", |f| f.ty == GOAWAY).await;
        let last = u32::from_be_bytes(f.payload[0..4].try_into().unwrap());
        let code = u32::from_be_bytes(f.payload[4..8].try_into().unwrap());
        (last, code)
    }
}
