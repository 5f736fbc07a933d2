//! Service discovery through etcd, in the format of Kitex's `registry-etcd`
//! (`github.com/kitex-contrib/registry-etcd`), so Sluice and Kitex services find each other in
//! the same etcd.
//!
//! * [`kitex`]: the key layout (`<prefix>/<service>/<host:port>`) and the JSON value, byte for
//!   byte as a Kitex server writes it.
//! * [`Watcher`]: follows one service's instances (initial Get, then Watch), keeps the last known
//!   instances through etcd outages and reconnects with backoff. Consumers read [`Snapshot`]s from
//!   a [`tokio::sync::watch`] channel.
//! * [`Registration`]: registers one listener under a lease that is kept alive, re-puts the key if
//!   it disappears, and removes it on [`Registration::deregister`].
//! * [`advertise_address`]: the address to register for a listener bound to a wildcard address.
//!
//! Both [`Watcher`] and [`Registration`] own their background task: dropping them aborts it. They
//! need a Tokio runtime (with the time driver) when started.
//!
//! ```no_run
//! # async fn demo() {
//! use std::collections::BTreeMap;
//! use std::sync::Arc;
//! use std::time::Duration;
//! use sluice_discovery::{EtcdConfig, Instance, Registration, Watcher};
//!
//! let config = Arc::new(EtcdConfig {
//!     endpoints: vec!["127.0.0.1:2379".into()],
//!     ..EtcdConfig::default()
//! });
//! let watcher = Watcher::start(config.clone(), "echo".into(), BTreeMap::new());
//! let mut rx = watcher.subscribe();
//! rx.changed().await.ok();
//! println!("echo has {} instances", rx.borrow().instances.len());
//!
//! let me = Instance::new("10.0.0.5:8888".parse().unwrap());
//! let reg = Registration::start(config, "sluice".into(), me, Duration::from_secs(60));
//! // ... on drain:
//! reg.deregister().await;
//! # }
//! ```
#![forbid(unsafe_code)]

mod backoff;
mod client;
mod config;
mod error;
pub mod kitex;
mod register;
mod watch;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

pub use config::{EtcdConfig, EtcdTls};
pub use error::{ConfigError, EtcdError, FormatError};
pub use register::{Registration, RegistrationStatus, DEREGISTER_TIMEOUT};
pub use watch::{Snapshot, WatchStats, Watcher, MAX_INSTANCES};

/// The weight Kitex gives an instance whose registered weight is 0 or negative
/// (`discovery.DefaultWeight`).
pub const DEFAULT_WEIGHT: u32 = 10;

/// One registered instance of a service: the fields of a Kitex registry value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Instance {
    /// Where the instance listens (the value's `address`; the network is always TCP).
    pub address: SocketAddr,
    /// Load-balancing weight, at least 1. A registered weight of 0 or less reads as
    /// [`DEFAULT_WEIGHT`], as in Kitex.
    pub weight: u32,
    /// The instance's tags (empty when the value says `"tags":null`).
    pub tags: BTreeMap<String, String>,
}

impl Instance {
    /// An instance at `address` with the default weight and no tags.
    pub fn new(address: SocketAddr) -> Instance {
        Instance {
            address,
            weight: DEFAULT_WEIGHT,
            tags: BTreeMap::new(),
        }
    }

    /// Whether this instance has every `(key, value)` of `wanted` among its tags (an empty
    /// `wanted` matches every instance).
    pub fn has_tags(&self, wanted: &BTreeMap<String, String>) -> bool {
        wanted
            .iter()
            .all(|(k, v)| self.tags.get(k).is_some_and(|have| have == v))
    }
}

/// The address to advertise (register) for a listener bound to `bound`.
///
/// `bound` itself unless its IP is unspecified (`0.0.0.0` or `::`); then, as Kitex does, the
/// first non-loopback IPv4 address of this host's interfaces (found with `getifaddrs`), with
/// `bound`'s port; `127.0.0.1` when the host has none.
pub fn advertise_address(bound: SocketAddr) -> SocketAddr {
    if !bound.ip().is_unspecified() {
        return bound;
    }
    let ip = match if_addrs::get_if_addrs() {
        Ok(interfaces) => first_non_loopback_v4(interfaces.iter().map(|i| i.ip())),
        Err(e) => {
            tracing::warn!(error = %e, "listing network interfaces failed; advertising 127.0.0.1");
            None
        }
    };
    SocketAddr::new(IpAddr::V4(ip.unwrap_or(Ipv4Addr::LOCALHOST)), bound.port())
}

/// The first IPv4 address that is neither loopback nor unspecified.
fn first_non_loopback_v4(ips: impl IntoIterator<Item = IpAddr>) -> Option<Ipv4Addr> {
    ips.into_iter().find_map(|ip| match ip {
        IpAddr::V4(v4) if !v4.is_loopback() && !v4.is_unspecified() => Some(v4),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concrete_bound_address_is_kept() {
        let a: SocketAddr = "10.1.2.3:8888".parse().unwrap();
        assert_eq!(advertise_address(a), a);
        let b: SocketAddr = "[fe80::1]:80".parse().unwrap();
        assert_eq!(advertise_address(b), b);
        let c: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert_eq!(advertise_address(c), c);
    }

    #[test]
    fn wildcard_becomes_a_concrete_ipv4_with_the_same_port() {
        for bound in ["0.0.0.0:8888", "[::]:8888"] {
            let a = advertise_address(bound.parse().unwrap());
            assert_eq!(a.port(), 8888);
            assert!(a.is_ipv4(), "{a}");
            assert!(!a.ip().is_unspecified(), "{a}");
        }
    }

    #[test]
    fn interface_choice_skips_loopback_and_v6() {
        let ips: Vec<IpAddr> = vec![
            "127.0.0.1".parse().unwrap(),
            "::1".parse().unwrap(),
            "fd00::5".parse().unwrap(),
            "10.0.0.5".parse().unwrap(),
            "192.168.1.2".parse().unwrap(),
        ];
        assert_eq!(first_non_loopback_v4(ips), Some(Ipv4Addr::new(10, 0, 0, 5)));
        let only_lo: Vec<IpAddr> = vec!["127.0.0.1".parse().unwrap()];
        assert_eq!(first_non_loopback_v4(only_lo), None);
    }

    #[test]
    fn tag_filter() {
        let mut i = Instance::new("10.0.0.1:1".parse().unwrap());
        i.tags.insert("env".into(), "prod".into());
        i.tags.insert("zone".into(), "a".into());
        let mut want = BTreeMap::new();
        assert!(i.has_tags(&want));
        want.insert("env".to_string(), "prod".to_string());
        assert!(i.has_tags(&want));
        want.insert("zone".to_string(), "b".to_string());
        assert!(!i.has_tags(&want));
        want.clear();
        want.insert("missing".to_string(), String::new());
        assert!(!i.has_tags(&want));
    }
}
