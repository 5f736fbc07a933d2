//! What the engine leaves to the end it plays: the gRPC server or the gRPC client.
//!
//! The engine is generic over a [`Role`], as h2's connection is over its `Peer`: one
//! monomorphized engine per end, every side-specific branch decided at compile time (a
//! constant [`Role::SIDE`]), no `dyn` call and no allocation between the engine and its role.
//! The server implements it in `crate::server`, the client in `crate::client`; the engine
//! imports neither. The engine's vocabulary for the role ([`HeaderBlock`], [`Opening`]) is
//! defined here, next to the trait that uses it.

use std::sync::Arc;

use bytes::Bytes;
use sluice_stream::PipeTx;

use crate::status::Status;

use super::state::{Shared, Side};

/// What the engine reports for the server's counters (`GrpcServerStats`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted {
    /// A stream refused before a handler ran.
    Refused,
    /// A running stream reset by the peer.
    ResetByPeer,
    /// The connection closed after its idle timeout.
    IdleClosed,
}

/// A complete, decoded header block.
pub(crate) struct HeaderBlock {
    pub(crate) stream: u32,
    pub(crate) end_stream: bool,
    pub(crate) fields: Vec<(Bytes, Bytes)>,
    /// The list was larger than the limit: `fields` holds only its start.
    pub(crate) too_large: bool,
}

/// What the side-specific part decides about a header block.
pub(crate) enum Opening {
    /// A new stream: its receiving side, and whether the peer already ended its side.
    Accept {
        to_user: PipeTx,
        compressed_ok: bool,
        end_stream: bool,
    },
    /// Answered or refused already: nothing to keep.
    Done,
}

/// The end of an HTTP/2 connection the engine plays, and the calls the engine makes into it.
///
/// HTTP/2 itself (frames, flow control, stream states, SETTINGS, PING, GOAWAY) is the
/// engine's, for both ends alike; what is left here is what only the gRPC side knows: how a
/// request becomes a call, how a call the engine cannot read is answered, and what is counted.
/// The value lives in the connection task (`Connection::role`), so a server role owns its
/// handler without a box.
pub(crate) trait Role {
    /// Which end this is. A constant, so that the engine's `match R::SIDE` branches cost
    /// nothing at run time.
    const SIDE: Side;

    /// A header block that opens a stream from the peer (a request), once the engine has
    /// checked its id and the stream limits: the role answers or refuses it itself
    /// ([`Opening::Done`]), or starts the call and hands back its receiving side.
    ///
    /// Only a server is asked: push is disabled, so a client's peer opens no streams (the
    /// engine drops late blocks of a client's streams that are over).
    fn open(&mut self, shared: &Arc<Shared>, block: HeaderBlock) -> Opening;

    /// Ends stream `id` with `status` because what the peer sent on it cannot be read (a bad
    /// message, a message too large, a stream ending inside a message), before the engine
    /// tells the stream's user that its input broke off.
    ///
    /// Only a server is asked: a client ends such a stream towards its own user, which the
    /// engine does itself.
    fn abort(shared: &Shared, id: u32, status: &Status);

    /// Counts `what`.
    fn count(&self, what: Counted);
}
