//! Async I/O helpers shared by the server and the clients, one module per concern:
//!
//! * `prefixed`: [`PrefixedIo`], an I/O object that first replays the bytes a sniffer read;
//! * `read_buf`: read sizes ([`STREAM_READ_CHUNK`], [`reserve_read`]) and the per-thread
//!   stock of read buffers for connections that come back from idle ([`take_read_buf`],
//!   [`give_back_read_buf`], [`give_back_read_buf_in_use`]);
//! * `head_arena`: frame heads cut from a per-thread arena ([`carve_head`],
//!   [`frame_chunks`]);
//! * `vectored`: vectored writes of buffer lists ([`write_all_vectored`], [`MAX_IOV`]) and a
//!   channel-fed writer task ([`write_queued`]);
//! * `out_queue`: the byte-bounded write queue many streams share ([`out_queue()`],
//!   [`QueueTx`], [`QueueWriter`]);
//! * `tasks`: [`TaskGroup`], the tasks a connection owns;
//! * `ratelog`: [`RateLog`], a budget of log lines per site;
//! * `tls`: TLS to downstreams ([`ClientTls`]) and the stream a client dials, plain TCP or TLS
//!   ([`ClientIo`]).
//!
//! The modules are private: everything public is re-exported here, at the paths users name.
#![forbid(unsafe_code)]

mod head_arena;
mod out_queue;
mod prefixed;
mod ratelog;
mod read_buf;
mod tasks;
mod tls;
mod vectored;

pub use head_arena::{carve_head, frame_chunks};
pub use out_queue::{out_queue, QueueClosed, QueueTx, QueueWriter, OUT_QUEUE_LIMIT};
pub use prefixed::PrefixedIo;
pub use ratelog::RateLog;
pub use read_buf::{
    give_back_read_buf, give_back_read_buf_in_use, reserve_read, take_read_buf, STREAM_READ_CHUNK,
};
pub use tasks::TaskGroup;
pub use tls::{ClientIo, ClientTls, ClientTlsError, ClientTlsFiles, ClientTlsPart};
pub use vectored::{write_all_vectored, write_queued, MAX_IOV};
