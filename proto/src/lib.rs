//! Trail's wire protocol: the `trail.v1` protobuf messages and the tonic client and
//! server for the `Trail` service. Generated at build time from `proto/trail/v1`.

#![allow(clippy::large_enum_variant)]

pub mod codec;

pub mod v1 {
    tonic::include_proto!("trail.v1");
}

/// Node-to-node Raft traffic (internal to a cluster).
pub mod raft {
    tonic::include_proto!("trail.raft.v1");
}

pub use prost_types::Timestamp;
