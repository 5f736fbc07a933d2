//! Request encoding and reply decoding for the four downstream transports, sans-IO.
//!
//! The pooled and multiplexed clients use these on their connections; a tool that talks to one
//! server directly (`sluice call`) can use them too, and see every byte.

use std::time::Instant;

use bytes::{BufMut, Bytes, BytesMut};
use sluice_framed::{BufferedCodec, FramedCodec};
use sluice_sniff::Codec;
use sluice_thrift::{envelope, kitex_pb, MessageType};
use sluice_ttheader::{flags, int_key, Header};

use crate::{Call, Reply, ReplyError, Transport};

static FRAMED: Bytes = Bytes::from_static(b"framed");
static UNFRAMED: Bytes = Bytes::from_static(b"unframed");
static MSG_CALL: Bytes = Bytes::from_static(b"1");
static MSG_ONEWAY: Bytes = Bytes::from_static(b"4");

/// The transport actually used for `codec`: Kitex protobuf always needs a length (kitex-wire.md
/// 2.5), so Buffered becomes Framed and unframed TTHeader becomes TTHeader with the inner length.
pub fn effective(transport: Transport, codec: Codec) -> Transport {
    match (transport, codec) {
        (Transport::Buffered, Codec::KitexProtobuf) => Transport::Framed,
        (Transport::TTHeaderUnframed, Codec::KitexProtobuf) => Transport::TTHeader,
        (t, _) => t,
    }
}

/// Encodes `call` with `seq_id`: returns the head (framing, header, envelope); the args `Bytes`
/// follow it on the wire as they are.
pub fn encode_request(
    call: &mut Call,
    transport: Transport,
    seq_id: i32,
    mux: bool,
) -> Result<Bytes, sluice_ttheader::Error> {
    let transport = effective(transport, call.codec);
    let env_len = envelope::header_len(&call.method);
    let message_len = env_len + call.args.len();
    let hint = 128 + env_len + call.header.str_kvs.len() * 32;
    // Cut from the thread's head arena: a request head costs no allocation of its own.
    sluice_io::carve_head(hint, |head| {
        encode_head_into(call, transport, seq_id, mux, message_len, head)
    })
}

fn encode_head_into(
    call: &mut Call,
    transport: Transport,
    seq_id: i32,
    mux: bool,
    message_len: usize,
    head: &mut BytesMut,
) -> Result<(), sluice_ttheader::Error> {
    match transport {
        Transport::TTHeader | Transport::TTHeaderUnframed => {
            let framed = transport == Transport::TTHeader;
            // The call's own header is completed in place and encoded: no copy of its keys.
            // (Re-encoding it for a retry sets the same keys again.)
            let h = &mut call.header;
            h.flags = if mux { flags::SUPPORT_OUT_OF_ORDER } else { 0 };
            h.seq_id = seq_id;
            h.protocol_id = 0;
            h.transforms.clear();
            let tt = if framed {
                FRAMED.clone()
            } else {
                UNFRAMED.clone()
            };
            h.int_kvs.insert(int_key::TRANSPORT_TYPE, tt);
            if h.int_kvs.get(int_key::TO_METHOD).map(|m| m.as_ref()) != Some(call.method.as_bytes())
            {
                h.int_kvs.insert(
                    int_key::TO_METHOD,
                    Bytes::copy_from_slice(call.method.as_bytes()),
                );
            }
            let mt = if call.msg_type == MessageType::Oneway {
                MSG_ONEWAY.clone()
            } else {
                MSG_CALL.clone()
            };
            h.int_kvs.insert(int_key::MSG_TYPE, mt);
            match call.deadline {
                Some(d) => {
                    // The downstream gets what is left of the caller's budget (at least 1 ms, so
                    // a nearly spent budget is not read as "no timeout").
                    let left = d
                        .saturating_duration_since(Instant::now())
                        .as_millis()
                        .max(1);
                    h.int_kvs
                        .insert(int_key::RPC_TIMEOUT, Bytes::from(left.to_string()));
                }
                None => {
                    h.int_kvs.remove(int_key::RPC_TIMEOUT);
                }
            }
            sluice_ttheader::encode_head(h, framed, message_len, head)?;
        }
        Transport::Framed => head.put_u32(message_len as u32),
        Transport::Buffered => {}
    }
    match call.codec {
        Codec::Thrift => envelope::write_header(head, &call.method, call.msg_type, seq_id),
        Codec::KitexProtobuf => kitex_pb::write_header(head, &call.method, call.msg_type, seq_id),
    }
    Ok(())
}

/// Reply decoders for one connection.
#[derive(Debug, Clone, Copy)]
pub struct ReplyDecoder {
    ttheader: sluice_ttheader::Decoder,
    framed: FramedCodec,
    buffered: BufferedCodec,
}

/// A reply taken off the wire, with its envelope read.
#[derive(Debug)]
pub struct RawReply {
    /// TTHeader seq (the envelope seq for other transports).
    pub frame_seq: i32,
    /// The envelope's seq id.
    pub envelope_seq: i32,
    /// The envelope's method name.
    pub method: Bytes,
    /// The reply (its `endpoint` unset, `attempts` 1).
    pub reply: Reply,
}

impl ReplyDecoder {
    /// Decoders that refuse frames over `max_frame_size` bytes.
    pub fn new(max_frame_size: usize) -> Self {
        Self {
            ttheader: sluice_ttheader::Decoder::new(sluice_ttheader::Limits {
                max_frame_size,
                ..Default::default()
            }),
            framed: FramedCodec::new(max_frame_size),
            buffered: BufferedCodec::new(max_frame_size),
        }
    }

    /// Takes one reply off `buf` if it is whole.
    pub fn decode(
        &self,
        buf: &mut BytesMut,
        transport: Transport,
    ) -> Result<Option<RawReply>, ReplyError> {
        let (header, message) = match transport {
            Transport::TTHeader | Transport::TTHeaderUnframed => {
                match self.ttheader.decode(buf)? {
                    Some(f) => (f.header, f.payload),
                    None => return Ok(None),
                }
            }
            Transport::Framed => match self.framed.decode(buf)? {
                Some(m) => (Header::default(), m.message),
                None => return Ok(None),
            },
            Transport::Buffered => match self.buffered.decode(buf)? {
                Some(m) => (Header::default(), m),
                None => return Ok(None),
            },
        };
        let env = if message.len() >= 2 && message[0] == 0x90 {
            kitex_pb::decode_header(&message)
        } else {
            envelope::decode_header(&message)
        }
        .map_err(ReplyError::Envelope)?;
        if env.msg_type.is_request() {
            return Err(ReplyError::NotAReply(env.msg_type.as_str()));
        }
        let frame_seq = if transport.is_ttheader() {
            header.seq_id
        } else {
            env.seq_id
        };
        Ok(Some(RawReply {
            frame_seq,
            envelope_seq: env.seq_id,
            // A slice of the message: the method is only compared, so it is not copied.
            method: message.slice_ref(env.name.as_bytes()),
            reply: Reply {
                msg_type: env.msg_type,
                body: message.slice(env.body_offset..),
                header,
                endpoint: None,
                attempts: 1,
            },
        }))
    }
}
