//! The listener's accept queue takes a burst of new connections.

use std::time::Duration;

#[tokio::test]
async fn a_burst_of_connections_is_queued_before_any_is_accepted() {
    let l = sluice_server::bind_listener(([127, 0, 0, 1], 0).into()).unwrap();
    let addr = l.local_addr().unwrap();
    // Nothing accepts while they connect: each handshake completes only if the kernel has room
    // for it in the accept queue. With the standard library's backlog of 128, the SYNs past it
    // are dropped and those connects would still be waiting for a retransmit a second later.
    let mut connects = tokio::task::JoinSet::new();
    for _ in 0..400 {
        connects.spawn(async move {
            tokio::time::timeout(
                Duration::from_millis(700),
                tokio::net::TcpStream::connect(addr),
            )
            .await
        });
    }
    let mut open = Vec::new();
    while let Some(r) = connects.join_next().await {
        let s = r
            .unwrap()
            .expect("connect waited for a SYN retransmit: the accept queue was full")
            .unwrap();
        open.push(s);
    }
    assert_eq!(open.len(), 400);
    // And they are all there to accept.
    for _ in 0..400 {
        tokio::time::timeout(Duration::from_secs(5), l.accept())
            .await
            .unwrap()
            .unwrap();
    }
}
