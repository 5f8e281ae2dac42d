//! Generated Rust types and gRPC services of the tiercache v1 API (`proto/tiercache/v1`).
//!
//! The code is generated at build time by `protox` and `tonic-prost-build`, so no system `protoc`
//! is needed. [`FILE_DESCRIPTOR_SET`] feeds server reflection. [`duration`] converts
//! `google.protobuf.Duration` to and from `std::time::Duration` for every crate that speaks the
//! API.

pub mod duration;

/// The `tiercache.v1` package.
pub mod v1 {
    #![allow(clippy::all, clippy::pedantic, missing_docs)]
    tonic::include_proto!("tiercache.v1");
}

/// The encoded `FileDescriptorSet` of the v1 API, for server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] =
    include_bytes!(concat!(env!("OUT_DIR"), "/tiercache_descriptor.bin"));
