//! Named TTHeader keys: the integer key table and the well-known string keys.
//!
//! Integer keys are `iota` from 0 in `gopkg: protocol/ttheader/metakey.go` (kitex-wire.md 1.6);
//! values are always strings (decimal numbers where they are numbers).

/// Integer keys (info block 0x10).
pub mod int_key {
    /// Mesh version (not sent by open-source Kitex).
    pub const MESH_VERSION: u16 = 0;
    /// `"framed"` or `"unframed"`: whether the payload has an inner 4-byte length.
    pub const TRANSPORT_TYPE: u16 = 1;
    /// Log id.
    pub const LOG_ID: u16 = 2;
    /// Caller service name (may be empty).
    pub const FROM_SERVICE: u16 = 3;
    /// Caller cluster.
    pub const FROM_CLUSTER: u16 = 4;
    /// Caller IDC.
    pub const FROM_IDC: u16 = 5;
    /// Destination service (the client's destService / cluster name, not the IDL service).
    pub const TO_SERVICE: u16 = 6;
    /// Destination cluster.
    pub const TO_CLUSTER: u16 = 7;
    /// Destination IDC.
    pub const TO_IDC: u16 = 8;
    /// Method name (ping-pong with the client TTHeader handler; every TTStream frame).
    pub const TO_METHOD: u16 = 9;
    /// Environment.
    pub const ENV: u16 = 10;
    /// Destination address.
    pub const DEST_ADDRESS: u16 = 11;
    /// RPC timeout in decimal milliseconds: the server-side deadline.
    pub const RPC_TIMEOUT: u16 = 12;
    /// Read timeout.
    pub const READ_TIMEOUT: u16 = 13;
    /// Ring hash key.
    pub const RING_HASH_KEY: u16 = 14;
    /// DDP tag.
    pub const DDP_TAG: u16 = 15;
    /// With mesh header.
    pub const WITH_MESH_HEADER: u16 = 16;
    /// Connect timeout in decimal milliseconds (per hop).
    pub const CONNECT_TIMEOUT: u16 = 17;
    /// Span context.
    pub const SPAN_CONTEXT: u16 = 18;
    /// Short connection.
    pub const SHORT_CONNECTION: u16 = 19;
    /// The method the caller is serving (may be empty).
    pub const FROM_METHOD: u16 = 20;
    /// Stress tag.
    pub const STRESS_TAG: u16 = 21;
    /// Message type: `"1"` call, `"2"` reply, `"3"` exception, `"4"` oneway.
    pub const MSG_TYPE: u16 = 22;
    /// HTTP content type.
    pub const HTTP_CONTENT_TYPE: u16 = 23;
    /// Raw ring hash key.
    pub const RAW_RING_HASH_KEY: u16 = 24;
    /// Load-balancer type.
    pub const LB_TYPE: u16 = 25;
    /// Cluster shard id.
    pub const CLUSTER_SHARD_ID: u16 = 26;
    /// TTStream frame type: `"1"` meta .. `"5"` rst.
    pub const FRAME_TYPE: u16 = 27;

    /// Name of an integer key as Kitex spells it, for logs and tools.
    pub fn name(key: u16) -> Option<&'static str> {
        const NAMES: [&str; 28] = [
            "MeshVersion",
            "TransportType",
            "LogID",
            "FromService",
            "FromCluster",
            "FromIDC",
            "ToService",
            "ToCluster",
            "ToIDC",
            "ToMethod",
            "Env",
            "DestAddress",
            "RPCTimeout",
            "ReadTimeout",
            "RingHashKey",
            "DDPTag",
            "WithMeshHeader",
            "ConnectTimeout",
            "SpanContext",
            "ShortConnection",
            "FromMethod",
            "StressTag",
            "MsgType",
            "HTTPContentType",
            "RawRingHashKey",
            "LBType",
            "ClusterShardID",
            "FrameType",
        ];
        NAMES.get(key as usize).copied()
    }
}

/// Well-known string keys (info block 0x01), kitex-wire.md 1.7.
pub mod str_key {
    /// IDL service name of the request (e.g. `EchoService`).
    pub const IDL_SERVICE_NAME: &str = "isn";
    /// Caller's real address (set by meshes).
    pub const REAL_IP: &str = "rip";
    /// "Connection ready to reset": the sender is draining; drop this connection after the reply.
    pub const CONN_RESET: &str = "crrst";
    /// Business status code (decimal int32) on replies and TTStream trailers.
    pub const BIZ_STATUS: &str = "biz-status";
    /// Business error message.
    pub const BIZ_MESSAGE: &str = "biz-message";
    /// Business error extra, a JSON object of string to string.
    pub const BIZ_EXTRA: &str = "biz-extra";
    /// TTStream cascading cancel path, `"A"` or `"A,B,C"`.
    pub const TTSTREAM_CANCEL_PATH: &str = "ttscp";
    /// Hex CRC32-C of the payload, when the sender opted in.
    pub const CRC32C: &str = "crc32c";
    /// Where Kitex keeps the ACL token in its string map; on the wire it is info block 0x11.
    pub const ACL_TOKEN: &str = "RPC_TRANSIT_gdpr-token";
}

/// Metainfo key prefixes (`bytedance/gopkg: cloud/metainfo/info.go`).
pub mod metainfo {
    /// Persistent metainfo: forwarded on every hop.
    pub const PERSIST_PREFIX: &str = "RPC_PERSIST_";
    /// Transient metainfo: one hop.
    pub const TRANSIT_PREFIX: &str = "RPC_TRANSIT_";
    /// Stale transient metainfo from the previous hop (accepted on decode, never re-emitted by Kitex).
    pub const TRANSIT_UPSTREAM_PREFIX: &str = "RPC_TRANSIT_UPSTREAM_";
    /// Backward metainfo prefix used in-process by Kitex (replies carry bare keys on the wire).
    pub const BACKWARD_PREFIX: &str = "RPC_BACKWARD_";
    /// Backward metainfo received from downstream, in-process.
    pub const BACKWARD_DOWNSTREAM_PREFIX: &str = "RPC_BACKWARD_DOWNSTREAM_";
}

/// FLAGS bits (kitex-wire.md 1.2).
pub mod flags {
    /// Set on every request of a Kitex mux client: replies may come out of order, matched by seq.
    pub const SUPPORT_OUT_OF_ORDER: u16 = 0x0001;
    /// Set on every TTStream frame.
    pub const STREAMING: u16 = 0x0002;
    /// Declared only.
    pub const DUPLEX_REVERSE: u16 = 0x0008;
    /// Declared only.
    pub const SASL: u16 = 0x0010;
}

/// Protocol ids (first byte of the header section).
pub mod protocol_id {
    /// Thrift binary, and what Kitex writes for every ping-pong message, Kitex protobuf included.
    pub const THRIFT_BINARY: u8 = 0x00;
    /// Thrift compact: refused by Kitex.
    pub const THRIFT_COMPACT: u8 = 0x02;
    /// Old Kitex protobuf id, accepted for compatibility.
    pub const THRIFT_COMPACT_V2: u8 = 0x03;
    /// Kitex protobuf; accepted, never written by Kitex.
    pub const KITEX_PROTOBUF: u8 = 0x04;
    /// TTStream frames: the payload is a bare thrift struct.
    pub const THRIFT_STRUCT: u8 = 0x10;
    /// Declared for protobuf TTStream; unused by Kitex.
    pub const PROTOBUF_STRUCT: u8 = 0x11;

    /// The ids Kitex's decoder accepts (`checkProtocolID`).
    pub fn is_supported(id: u8) -> bool {
        matches!(
            id,
            THRIFT_BINARY | THRIFT_COMPACT_V2 | KITEX_PROTOBUF | THRIFT_STRUCT | PROTOBUF_STRUCT
        )
    }
}

/// Info block ids in the header section.
pub mod info_id {
    /// A zero byte: padding, skipped anywhere.
    pub const PADDING: u8 = 0x00;
    /// String key/value block.
    pub const KEY_VALUE: u8 = 0x01;
    /// Integer key/value block.
    pub const INT_KEY_VALUE: u8 = 0x10;
    /// ACL token: one u16-length string, no key.
    pub const ACL_TOKEN: u8 = 0x11;
}
