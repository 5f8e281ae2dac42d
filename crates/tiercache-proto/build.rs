//! Generates the v1 API with `protox` (no system `protoc`) and writes the descriptor set used by
//! server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Read at run time, not with env!(): a build script binary may be reused from another
    // checkout of the workspace (same hash), and must look at this checkout's protos.
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = ["common.proto", "cache.proto", "lock.proto", "admin.proto"]
        .map(|f| root.join("tiercache/v1").join(f));
    for f in &files {
        println!("cargo:rerun-if-changed={}", f.display());
    }
    let fds = protox::compile(&files, [&root])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("tiercache_descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        .bytes(".tiercache.v1")
        .compile_fds(fds)?;
    Ok(())
}
