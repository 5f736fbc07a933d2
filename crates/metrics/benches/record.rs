//! What one call costs the metrics: a record on the server series and one on the client series.
use std::time::Duration;

use sluice_metrics::{Metrics, MetricsConfig, Rpc, Status};

fn main() {
    divan::main();
}

#[divan::bench]
fn server_and_client_record(b: divan::Bencher) {
    let m = Metrics::new(MetricsConfig::default());
    let rpc = Rpc {
        caller: "client-service",
        callee: "EchoService",
        method: "Echo",
        retry: 0,
    };
    let down = Rpc {
        callee: "echo",
        ..rpc
    };
    b.bench_local(|| {
        m.server().record(
            divan::black_box(&rpc),
            Status::Succeed,
            Duration::from_micros(120),
        );
        m.client().record(
            divan::black_box(&down),
            Status::Succeed,
            Duration::from_micros(100),
        );
    });
}
