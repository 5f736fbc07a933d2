//! The Kitex `registry-etcd` format: where an instance is stored and what its value looks like.
//!
//! A Kitex server serving `echo` on `10.0.0.5:8888` writes, under a lease,
//!
//! ```text
//! kitex/registry-etcd/echo/10.0.0.5:8888
//! {"network":"tcp","address":"10.0.0.5:8888","weight":10,"tags":null}
//! ```
//!
//! A resolver lists the keys under `kitex/registry-etcd/echo/` (with the trailing slash, so that
//! `echo2` is not mistaken for `echo`) and takes the instance from each value; the last key
//! segment is not read.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::{FormatError, Instance, DEFAULT_WEIGHT};

/// The key prefix Kitex's `registry-etcd` uses unless configured otherwise.
pub const DEFAULT_PREFIX: &str = "kitex/registry-etcd";

/// The only network Sluice accepts in a value.
pub const NETWORK_TCP: &str = "tcp";

/// `"<prefix>/<service>/"`: the prefix under which `service`'s instances are stored. Trailing
/// slashes of `prefix` are ignored, so `"kitex/registry-etcd/"` works like the default.
pub fn service_prefix(prefix: &str, service: &str) -> String {
    format!("{}/{service}/", prefix.trim_end_matches('/'))
}

/// `"<prefix>/<service>/<host:port>"`: the key of one instance (IPv6 hosts in brackets, as Go's
/// `net.JoinHostPort` writes them).
pub fn key(prefix: &str, service: &str, addr: SocketAddr) -> String {
    format!("{}{addr}", service_prefix(prefix, service))
}

/// The value as Kitex's Go code marshals it: fields in this order, `tags` `null` when empty.
#[derive(Serialize)]
struct WireOut<'a> {
    network: &'a str,
    address: String,
    weight: u32,
    tags: Option<&'a BTreeMap<String, String>>,
}

/// The value as read: missing fields take Go's zero values, unknown fields are ignored.
#[derive(Deserialize)]
struct WireIn {
    #[serde(default)]
    network: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    weight: i64,
    #[serde(default)]
    tags: Option<BTreeMap<String, String>>,
}

/// The JSON value of `instance`, byte for byte what a Kitex (Go) server writes:
/// `{"network":"tcp","address":"127.0.0.1:29788","weight":10,"tags":null}`.
///
/// Tag maps are written with sorted keys and with Go's HTML-safe escaping (`<`, `>`, `&`,
/// U+2028 and U+2029 as `\uXXXX`), as `encoding/json` does.
pub fn encode(instance: &Instance) -> String {
    let wire = WireOut {
        network: NETWORK_TCP,
        address: instance.address.to_string(),
        weight: instance.weight,
        tags: (!instance.tags.is_empty()).then_some(&instance.tags),
    };
    // Serializing strings, integers and a string map cannot fail.
    let json = serde_json::to_string(&wire).unwrap_or_default();
    go_html_escape(json)
}

/// Go's `encoding/json` escapes these characters inside strings; serde_json writes them as they
/// are. None of them can appear in JSON outside a string, so replacing them everywhere is exact.
fn go_html_escape(json: String) -> String {
    if !json.contains(['<', '>', '&', '\u{2028}', '\u{2029}']) {
        return json;
    }
    let mut out = String::with_capacity(json.len() + 16);
    for c in json.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

/// Reads a registry value. The network must be `tcp` and the address an `ip:port`
/// ([`SocketAddr`]); a weight of 0 or less reads as [`DEFAULT_WEIGHT`] (weights above `u32::MAX`
/// are capped); `"tags":null` or no tags read as empty.
pub fn decode(value: &[u8]) -> Result<Instance, FormatError> {
    let wire: WireIn =
        serde_json::from_slice(value).map_err(|source| FormatError::Json { source })?;
    if wire.network != NETWORK_TCP {
        return Err(FormatError::Network {
            network: wire.network,
        });
    }
    let address = wire
        .address
        .parse::<SocketAddr>()
        .map_err(|source| FormatError::Address {
            address: wire.address.clone(),
            source,
        })?;
    let weight = if wire.weight <= 0 {
        DEFAULT_WEIGHT
    } else {
        u32::try_from(wire.weight).unwrap_or(u32::MAX)
    };
    Ok(Instance {
        address,
        weight,
        tags: wire.tags.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn no_tag_instance_encodes_exactly_like_kitex() {
        let i = Instance::new(addr("127.0.0.1:29788"));
        assert_eq!(
            encode(&i),
            r#"{"network":"tcp","address":"127.0.0.1:29788","weight":10,"tags":null}"#
        );
    }

    #[test]
    fn tags_are_sorted_and_go_escaped() {
        let mut i = Instance::new(addr("10.0.0.5:8888"));
        i.weight = 3;
        i.tags.insert("zone".into(), "a".into());
        i.tags.insert("env".into(), "<p&q>\u{2028}\"".into());
        assert_eq!(
            encode(&i),
            r#"{"network":"tcp","address":"10.0.0.5:8888","weight":3,"tags":{"env":"\u003cp\u0026q\u003e\u2028\"","zone":"a"}}"#
        );
        assert_eq!(decode(encode(&i).as_bytes()).unwrap(), i);
    }

    #[test]
    fn keys_and_prefixes() {
        assert_eq!(
            service_prefix(DEFAULT_PREFIX, "echo"),
            "kitex/registry-etcd/echo/"
        );
        assert_eq!(
            service_prefix("kitex/registry-etcd/", "echo"),
            "kitex/registry-etcd/echo/"
        );
        assert_eq!(
            key(DEFAULT_PREFIX, "kxserver", addr("127.0.0.1:29788")),
            "kitex/registry-etcd/kxserver/127.0.0.1:29788"
        );
        assert_eq!(key("p", "s", addr("[::1]:80")), "p/s/[::1]:80");
        assert!(!key(DEFAULT_PREFIX, "echo2", addr("1.2.3.4:5"))
            .starts_with(&service_prefix(DEFAULT_PREFIX, "echo")));
        let v6 = Instance::new(addr("[fd00::1]:8888"));
        assert!(encode(&v6).contains(r#""address":"[fd00::1]:8888""#));
        assert_eq!(decode(encode(&v6).as_bytes()).unwrap(), v6);
    }

    #[test]
    fn weights() {
        let w = |v: &str| decode(v.as_bytes()).unwrap().weight;
        assert_eq!(
            w(r#"{"network":"tcp","address":"1.2.3.4:5","weight":0}"#),
            10
        );
        assert_eq!(
            w(r#"{"network":"tcp","address":"1.2.3.4:5","weight":-7}"#),
            10
        );
        assert_eq!(w(r#"{"network":"tcp","address":"1.2.3.4:5"}"#), 10);
        assert_eq!(
            w(r#"{"network":"tcp","address":"1.2.3.4:5","weight":1}"#),
            1
        );
        assert_eq!(
            w(r#"{"network":"tcp","address":"1.2.3.4:5","weight":250}"#),
            250
        );
        assert_eq!(
            w(r#"{"network":"tcp","address":"1.2.3.4:5","weight":99999999999}"#),
            u32::MAX
        );
    }

    #[test]
    fn tags_decode_and_extra_fields_are_ignored() {
        let i = decode(
            br#"{"network":"tcp","address":"10.0.0.5:8888","weight":10,"tags":{"k":"v","env":"prod"},"extra":[1]}"#,
        )
        .unwrap();
        assert_eq!(i.address, addr("10.0.0.5:8888"));
        assert_eq!(i.tags.len(), 2);
        assert_eq!(i.tags["k"], "v");
        assert_eq!(i.tags["env"], "prod");
        let none =
            decode(br#"{"network":"tcp","address":"10.0.0.5:8888","weight":10,"tags":null}"#)
                .unwrap();
        assert!(none.tags.is_empty());
    }

    #[test]
    fn bad_values_are_typed_errors() {
        assert!(matches!(decode(b"not json"), Err(FormatError::Json { .. })));
        assert!(matches!(decode(b""), Err(FormatError::Json { .. })));
        assert!(matches!(
            decode(br#"{"network":"tcp","address":"1.2.3.4:5","weight":"ten"}"#),
            Err(FormatError::Json { .. })
        ));
        assert!(matches!(
            decode(br#"{"network":"tcp","address":"1.2.3.4:5","tags":{"k":1}}"#),
            Err(FormatError::Json { .. })
        ));
        match decode(br#"{"network":"unix","address":"/tmp/s.sock","weight":10,"tags":null}"#) {
            Err(FormatError::Network { network }) => assert_eq!(network, "unix"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(br#"{"address":"1.2.3.4:5"}"#),
            Err(FormatError::Network { .. })
        ));
        match decode(br#"{"network":"tcp","address":"echo.local:8888","weight":10,"tags":null}"#) {
            Err(FormatError::Address { address, .. }) => assert_eq!(address, "echo.local:8888"),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            decode(br#"{"network":"tcp","address":"1.2.3.4","weight":10}"#),
            Err(FormatError::Address { .. })
        ));
    }
}
