//! The Kitex registry format against what a real Kitex v0.16.1 server wrote into etcd
//! (`shared/captures/kitex-ops/etcd-registry.txt`, the output of `etcdctl get --prefix ""`).

use std::net::SocketAddr;

use sluice_discovery::kitex::{self, DEFAULT_PREFIX};
use sluice_discovery::{FormatError, Instance};

#[test]
fn captured_kitex_values_decode_and_encode_back_byte_for_byte() {
    let path = sluice_testkit::captures_dir().join("kitex-ops/etcd-registry.txt");
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("reading {}: {e} (set SLUICE_CAPTURES?)", path.display()));
    let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
    assert_eq!(lines.len() % 2, 0, "key/value line pairs expected");
    let mut services = Vec::new();
    for pair in lines.chunks(2) {
        let (key, value) = (pair[0], pair[1]);
        let instance =
            kitex::decode(value.as_bytes()).unwrap_or_else(|e| panic!("{key}: {value}: {e}"));
        assert_eq!(instance.weight, 10);
        assert!(instance.tags.is_empty());
        // The key is <prefix>/<service>/<address> and the address is the value's.
        let rest = key.strip_prefix(&format!("{DEFAULT_PREFIX}/")).expect(key);
        let (service, addr) = rest.split_once('/').expect(key);
        assert_eq!(addr.parse::<SocketAddr>().unwrap(), instance.address);
        assert_eq!(kitex::key(DEFAULT_PREFIX, service, instance.address), key);
        assert!(key.starts_with(&kitex::service_prefix(DEFAULT_PREFIX, service)));
        // What Sluice writes for the same instance is what Kitex wrote.
        assert_eq!(kitex::encode(&instance), value);
        services.push(service.to_string());
    }
    assert_eq!(services, ["kxserver-pb", "kxserver"]);
}

#[test]
fn the_no_tag_value_is_exact() {
    let i = Instance::new("127.0.0.1:29788".parse().unwrap());
    assert_eq!(
        kitex::encode(&i),
        r#"{"network":"tcp","address":"127.0.0.1:29788","weight":10,"tags":null}"#
    );
}

#[test]
fn zero_and_negative_weights_read_as_ten() {
    for w in ["0", "-1", "-100"] {
        let v =
            format!(r#"{{"network":"tcp","address":"10.0.0.5:8888","weight":{w},"tags":null}}"#);
        assert_eq!(
            kitex::decode(v.as_bytes()).unwrap().weight,
            10,
            "weight {w}"
        );
    }
}

#[test]
fn tags_and_errors() {
    let i = kitex::decode(
        br#"{"network":"tcp","address":"10.0.0.5:8888","weight":10,"tags":{"k":"v"}}"#,
    )
    .unwrap();
    assert_eq!(i.tags.get("k").map(String::as_str), Some("v"));
    assert!(matches!(
        kitex::decode(br#"{"network":"tcp","#),
        Err(FormatError::Json { .. })
    ));
    assert!(matches!(
        kitex::decode(br#"{"network":"udp","address":"10.0.0.5:8888","weight":10,"tags":null}"#),
        Err(FormatError::Network { .. })
    ));
    assert!(matches!(
        kitex::decode(br#"{"network":"tcp","address":"10.0.0.5","weight":10,"tags":null}"#),
        Err(FormatError::Address { .. })
    ));
}
