//! Stream metadata across families: gRPC metadata to TTStream header keys and back, as Kitex
//! maps metainfo (kitex-wire.md 5.1: `rpc-transit-<k>` / `rpc-persist-<k>`, lower case with
//! `-`, for the metainfo keys `RPC_TRANSIT_<K>` / `RPC_PERSIST_<K>`, upper case with `_`).
//!
//! | gRPC metadata | TTStream header / trailer key |
//! |---|---|
//! | `rpc-transit-k-abc` | `RPC_TRANSIT_K_ABC` |
//! | `rpc-persist-k-abc` | `RPC_PERSIST_K_ABC` |
//! | `biz-status`, `biz-message`, `biz-extra` | the same |
//! | any other key | the same key (TTStream to gRPC: lower-cased) |
//! | `grpc-*`, `content-type`, `te`, `user-agent` | left out (each family sets its own) |
//!
//! Payloads are not touched: a thrift gRPC message and a TTStream data frame are both the bare
//! struct.

use bytes::{Bytes, BytesMut};
use sluice_http2::headers::{RPC_PERSIST_PREFIX, RPC_TRANSIT_PREFIX};
use sluice_sniff::Codec;
use sluice_stream::Metadata;
use sluice_thrift::kitex_pb::ErrorProto;
use sluice_thrift::{ApplicationException, ExceptionKind};
use sluice_ttheader::metainfo::{PERSIST_PREFIX, TRANSIT_PREFIX};
use sluice_ttheader::StrKvs;

/// Why a protobuf stream cannot leave as TTStream (a refusal's reason, at load and per stream).
pub(crate) const PB_OVER_TTSTREAM: &str = "protobuf over TTStream is not supported (Kitex's own \
     binary generic client fails with \"unexpected Args writer type\")";

/// gRPC metadata as TTStream header (or trailer) keys.
pub(crate) fn grpc_to_ttstream(md: &Metadata) -> Metadata {
    let mut out = Metadata::new();
    map_keys(md.iter(), kitex_key, |k, v| out.push(k, v));
    out
}

/// TTStream header (or trailer) keys as gRPC metadata. Keys HTTP/2 cannot carry are left out by
/// the gRPC client (logged there).
pub(crate) fn ttstream_to_grpc(md: &Metadata) -> Metadata {
    let mut out = Metadata::new();
    map_keys(md.iter(), grpc_key, |k, v| out.push(k, v));
    out
}

/// TTHeader string keys (a ping-pong call's or reply's) as gRPC metadata, as for TTStream.
pub(crate) fn str_kvs_to_grpc(kvs: &StrKvs) -> Metadata {
    let mut out = Metadata::new();
    map_keys(kvs.iter(), grpc_key, |k, v| out.push(k, v));
    out
}

/// gRPC metadata as TTHeader string keys, as for TTStream.
pub(crate) fn grpc_to_str_kvs(md: &Metadata) -> StrKvs {
    let mut out = StrKvs::new();
    map_keys(md.iter(), kitex_key, |k, v| out.insert(k, v));
    out
}

/// Hands `put` each pair whose (UTF-8) key `key` maps, with its value copied.
fn map_keys<'a>(
    pairs: impl Iterator<Item = (&'a [u8], &'a [u8])>,
    key: fn(&str) -> Option<String>,
    mut put: impl FnMut(String, Bytes),
) {
    for (k, v) in pairs {
        if let Some(k) = std::str::from_utf8(k).ok().and_then(key) {
            put(k, Bytes::copy_from_slice(v));
        }
    }
}

/// A gRPC metadata key as a Kitex key; `None` for one that belongs to the gRPC hop.
fn kitex_key(key: &str) -> Option<String> {
    if grpc_only(key) {
        return None;
    }
    Some(if let Some(rest) = key.strip_prefix(RPC_TRANSIT_PREFIX) {
        format!(
            "{TRANSIT_PREFIX}{}",
            rest.to_ascii_uppercase().replace('-', "_")
        )
    } else if let Some(rest) = key.strip_prefix(RPC_PERSIST_PREFIX) {
        format!(
            "{PERSIST_PREFIX}{}",
            rest.to_ascii_uppercase().replace('-', "_")
        )
    } else {
        key.to_owned()
    })
}

/// A Kitex key as a gRPC metadata key; `None` for one gRPC carries elsewhere or sets itself.
fn grpc_key(key: &str) -> Option<String> {
    // The service name travels in `:path` / `:authority`.
    if key == "isn" {
        return None;
    }
    let key = if let Some(rest) = key.strip_prefix(TRANSIT_PREFIX) {
        format!(
            "{RPC_TRANSIT_PREFIX}{}",
            rest.to_ascii_lowercase().replace('_', "-")
        )
    } else if let Some(rest) = key.strip_prefix(PERSIST_PREFIX) {
        format!(
            "{RPC_PERSIST_PREFIX}{}",
            rest.to_ascii_lowercase().replace('_', "-")
        )
    } else {
        key.to_ascii_lowercase()
    };
    (!grpc_only(&key)).then_some(key)
}

/// Keys one gRPC hop sets for itself.
fn grpc_only(key: &str) -> bool {
    key.starts_with("grpc-") || matches!(key, "content-type" | "te" | "user-agent")
}

/// An EXCEPTION body for an error status: a `TApplicationException` (thrift) or an
/// `ErrorProto` (Kitex protobuf) of type `kind`.
pub(crate) fn exception_body(codec: Codec, kind: i32, message: String) -> Bytes {
    let mut b = BytesMut::new();
    match codec {
        Codec::Thrift => ApplicationException::new(ExceptionKind(kind), message).encode(&mut b),
        Codec::KitexProtobuf => ErrorProto {
            type_id: kind,
            message,
        }
        .encode(&mut b),
    }
    b.freeze()
}

/// The type and message of an EXCEPTION body; an unreadable one is an internal error (6).
pub(crate) fn read_exception(codec: Codec, body: &[u8]) -> (i32, String) {
    let read = match codec {
        Codec::Thrift => ApplicationException::decode(body).map(|(e, _)| (e.kind.0, e.message)),
        Codec::KitexProtobuf => ErrorProto::decode(body).map(|e| (e.type_id, e.message)),
    };
    read.unwrap_or_else(|_| {
        (
            ExceptionKind::INTERNAL_ERROR.0,
            "sluice: the downstream's exception could not be read".into(),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn md(pairs: &[(&str, &str)]) -> Metadata {
        let mut m = Metadata::new();
        for (k, v) in pairs {
            m.push(k.to_string(), v.to_string());
        }
        m
    }

    fn pairs(m: &Metadata) -> Vec<(String, String)> {
        m.iter()
            .map(|(k, v)| {
                (
                    String::from_utf8_lossy(k).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    }

    #[test]
    fn metainfo_maps_as_kitex_maps_it_both_ways() {
        let grpc = md(&[
            ("rpc-transit-kx-req-id", "r1"),
            ("rpc-persist-tenant", "gold"),
            ("biz-status", "502"),
            ("x-user", "u"),
            ("grpc-timeout", "1S"),
            ("user-agent", "grpc-go"),
        ]);
        let tt = grpc_to_ttstream(&grpc);
        assert_eq!(
            pairs(&tt),
            [
                ("RPC_TRANSIT_KX_REQ_ID".to_owned(), "r1".to_owned()),
                ("RPC_PERSIST_TENANT".to_owned(), "gold".to_owned()),
                ("biz-status".to_owned(), "502".to_owned()),
                ("x-user".to_owned(), "u".to_owned()),
            ]
        );
        let back = ttstream_to_grpc(&tt);
        assert_eq!(
            pairs(&back),
            [
                ("rpc-transit-kx-req-id".to_owned(), "r1".to_owned()),
                ("rpc-persist-tenant".to_owned(), "gold".to_owned()),
                ("biz-status".to_owned(), "502".to_owned()),
                ("x-user".to_owned(), "u".to_owned()),
            ]
        );
        let tt = md(&[("isn", "EchoService"), ("X-Mixed", "v")]);
        assert_eq!(
            pairs(&ttstream_to_grpc(&tt)),
            [("x-mixed".to_owned(), "v".to_owned())]
        );
    }
}
