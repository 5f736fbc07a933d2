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

use bytes::Bytes;
use sluice_stream::Metadata;

const GRPC_TRANSIT: &str = "rpc-transit-";
const GRPC_PERSIST: &str = "rpc-persist-";
const KITEX_TRANSIT: &str = "RPC_TRANSIT_";
const KITEX_PERSIST: &str = "RPC_PERSIST_";

/// gRPC metadata as TTStream header (or trailer) keys.
pub(crate) fn grpc_to_ttstream(md: &Metadata) -> Metadata {
    let mut out = Metadata::new();
    for (k, v) in md.iter() {
        let Ok(key) = std::str::from_utf8(k) else {
            continue;
        };
        if grpc_only(key) {
            continue;
        }
        let key = if let Some(rest) = key.strip_prefix(GRPC_TRANSIT) {
            format!("{KITEX_TRANSIT}{}", to_kitex(rest))
        } else if let Some(rest) = key.strip_prefix(GRPC_PERSIST) {
            format!("{KITEX_PERSIST}{}", to_kitex(rest))
        } else {
            key.to_owned()
        };
        out.push(key, Bytes::copy_from_slice(v));
    }
    out
}

/// TTStream header (or trailer) keys as gRPC metadata. Keys HTTP/2 cannot carry are left out by
/// the gRPC client (logged there).
pub(crate) fn ttstream_to_grpc(md: &Metadata) -> Metadata {
    let mut out = Metadata::new();
    for (k, v) in md.iter() {
        let Ok(key) = std::str::from_utf8(k) else {
            continue;
        };
        // The service name travels in `:path` / `:authority`.
        if key == "isn" {
            continue;
        }
        let key = if let Some(rest) = key.strip_prefix(KITEX_TRANSIT) {
            format!("{GRPC_TRANSIT}{}", to_grpc(rest))
        } else if let Some(rest) = key.strip_prefix(KITEX_PERSIST) {
            format!("{GRPC_PERSIST}{}", to_grpc(rest))
        } else {
            key.to_ascii_lowercase()
        };
        if grpc_only(&key) {
            continue;
        }
        out.push(key, Bytes::copy_from_slice(v));
    }
    out
}

/// Keys one gRPC hop sets for itself.
fn grpc_only(key: &str) -> bool {
    key.starts_with("grpc-") || matches!(key, "content-type" | "te" | "user-agent")
}

fn to_kitex(rest: &str) -> String {
    rest.to_ascii_uppercase().replace('-', "_")
}

fn to_grpc(rest: &str) -> String {
    rest.to_ascii_lowercase().replace('_', "-")
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
