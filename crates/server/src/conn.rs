//! One accepted connection: sniff its protocol family, then run that family's driver.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::BytesMut;
use sluice_sniff::{Detection, Family};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

use crate::{pingpong, DefaultHandler, Drain, ServerConfig};

pub(crate) async fn serve_connection<H: DefaultHandler>(
    mut stream: TcpStream,
    peer: SocketAddr,
    config: Arc<ServerConfig>,
    handler: Arc<H>,
    drain: Drain,
) {
    let mut buf = BytesMut::with_capacity(8 * 1024);
    let family = match tokio::time::timeout(config.sniff_timeout, sniff(&mut stream, &mut buf))
        .await
    {
        Err(_) => {
            tracing::info!(%peer, listener = %config.name, "closing connection: no protocol recognised within the sniff timeout");
            return;
        }
        Ok(Err(e)) => {
            tracing::debug!(%peer, listener = %config.name, error = %e, "connection closed before sniffing");
            return;
        }
        Ok(Ok(Detection::NotOurs(reason))) => {
            tracing::warn!(%peer, listener = %config.name, %reason, "closing connection: not a protocol this listener serves");
            return;
        }
        Ok(Ok(Detection::Protocol(f))) => f,
    };
    match family {
        Family::PingPong => pingpong::run(stream, peer, buf, config, handler, drain).await,
        Family::TTStream | Family::Http2 => {
            tracing::warn!(%peer, listener = %config.name, ?family, "closing connection: streaming protocols are not served yet");
        }
    }
}

/// Reads until the connection-level sniffer decides.
async fn sniff(stream: &mut TcpStream, buf: &mut BytesMut) -> std::io::Result<Detection<Family>> {
    loop {
        match sluice_sniff::sniff_connection(buf) {
            Ok(d) => return Ok(d),
            Err(_) => {
                if stream.read_buf(buf).await? == 0 {
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
            }
        }
    }
}
