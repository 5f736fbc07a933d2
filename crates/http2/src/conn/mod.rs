//! One HTTP/2 connection carrying gRPC streams, either side: the machinery the server driver
//! and the client share.
//!
//! A connection is one task ([`Connection`]) and a shared state ([`Shared`]) behind one lock.
//!
//! * The task owns the socket. It reads frames, keeps each stream's receiving side (its message
//!   decoder, its receive window, the pipe to its user) without any lock, answers SETTINGS and
//!   PING, applies WINDOW_UPDATE, and writes what is queued.
//! * What a stream sends is encoded by its sink (the server's or the client's) in the
//!   sending task (a handler, or the reader of another connection when a forwarder splices two
//!   streams) straight into the shared output queue, within the peer's flow-control windows;
//!   what the windows do not allow waits in the stream's pending list until WINDOW_UPDATE
//!   opens them. Frame heads are held inline in the queue and payloads as the `Bytes` they
//!   arrived in: no copy, no allocation per message.
//!
//! Backpressure, end to end: a sink is not ready while its stream has data waiting for window or
//! the connection's queue holds [`OUT_LIMIT`](state::OUT_LIMIT) bytes; the task hands a received
//! message to its stream's pipe only while that pipe (or, spliced, the sink it feeds) is ready for
//! more, keeps the rest as undecoded bytes otherwise, and gives the peer new stream window only for
//! bytes it has handed on. A stream that is not read therefore stops its peer after one window and
//! the pipe's depth, without stopping the other streams of the connection (the connection window is
//! given back as data arrives).
//!
//! Lock order: the task never holds the lock while it hands an event to a pipe (a spliced
//! pipe takes the lock of another connection), and sinks never call into another connection
//! while they hold theirs.
//!
//! The engine plays either end through a [`Role`] (implemented in `crate::server` and
//! `crate::client`, which import this module; it imports neither). Its files, each importing
//! only those listed before it:
//!
//! * `state`: the shared state ([`Shared`], [`State`]), the queued chunk, the wake-up list;
//! * `role`: [`Role`] and what the engine hands it ([`HeaderBlock`], [`Opening`]);
//! * `send`: the sending side: header blocks, messages framed within the peer's windows;
//! * `task`: the connection task ([`Connection`]): socket, receiving sides, the poll loop;
//! * `queue`: pushing to the output queue and writing it to the socket;
//! * `control`: SETTINGS, PING, GOAWAY, WINDOW_UPDATE, RST_STREAM, shutdown, idle timeout;
//! * `recv`: reading frames, header blocks, DATA decoded into messages for each stream.
//!
//! `task`, `queue`, `control` and `recv` each implement part of [`Connection`]; the poll loop
//! in `task` calls the others' methods without importing them.

mod control;
mod queue;
mod recv;
mod role;
mod send;
mod state;
mod task;

pub(crate) use role::{Counted, HeaderBlock, Opening, Role};
pub(crate) use state::{unlock_and_wake, Opened, Shared, Side, State, Wakes};
pub use task::Http2Error;
pub(crate) use task::{run, ConnConfig, Connection};
