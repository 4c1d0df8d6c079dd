//! The generated gRPC code of `proto/chatcluster/api/v1/server_api.proto` (see `build.rs`).
#![allow(clippy::all, clippy::pedantic, missing_docs, unreachable_pub)]

tonic::include_proto!("chatcluster.api.v1");

/// The encoded descriptor set of the proto, for gRPC server reflection.
pub const DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/server_api_descriptor.bin"));
