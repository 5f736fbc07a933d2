//! Dialling an endpoint: the one place the ping-pong pool, the multiplexed connections and the
//! TTStream client make a connection, plain TCP or TLS (when the downstream has
//! [`ClientConfig::tls`]).

use std::net::SocketAddr;

use sluice_io::ClientIo;
use tokio::net::TcpStream;

use crate::{ClientConfig, Error};

/// Connects to `addr` and, with TLS configured, runs the handshake; both within the connect
/// timeout. A failed handshake is [`Error::Tls`], which callers treat like a refused
/// connection.
pub(crate) async fn connect(config: &ClientConfig, addr: SocketAddr) -> Result<ClientIo, Error> {
    let timeout = config.connect_timeout;
    let dial = async {
        let tcp = TcpStream::connect(addr)
            .await
            .map_err(|source| Error::Connect {
                downstream: config.name.clone(),
                addr,
                source,
            })?;
        let _ = tcp.set_nodelay(true);
        match &config.tls {
            // The plain path hands over the TcpStream itself: readers split it into its
            // owned halves, with no lock per poll.
            None => Ok(ClientIo::Tcp(tcp)),
            Some(tls) => match tls.handshake(tcp, addr).await {
                Ok(s) => Ok(ClientIo::Tls(Box::new(s))),
                Err(source) => Err(Error::Tls {
                    downstream: config.name.clone(),
                    addr,
                    source,
                }),
            },
        }
    };
    match tokio::time::timeout(timeout, dial).await {
        Ok(r) => r,
        Err(_) => Err(Error::ConnectTimeout {
            downstream: config.name.clone(),
            addr,
            after: timeout,
        }),
    }
}
