//! Generates the server side of the v1 services with the server's own codec
//! (`crate::codec::ServerCodec`): the messages are `tiercache_proto`'s (extern paths), so clients
//! and the server share one set of types, and only the decoding of requests differs. A
//! `PipelineRequest` arrives undecoded (`crate::pipeline::RawPipelineRequest`), so one malformed
//! message in the stream can be answered by id while the stream goes on.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["common.proto", "cache.proto", "lock.proto", "admin.proto"]
        .map(|f| root.join("tiercache/v1").join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(true)
        .extern_path(
            ".tiercache.v1.PipelineRequest",
            "crate::pipeline::RawPipelineRequest",
        )
        .extern_path(".tiercache.v1", "::tiercache_proto::v1")
        .codec_path("crate::codec::ServerCodec")
        .compile_fds(fds)?;
    Ok(())
}
