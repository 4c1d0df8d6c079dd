//! Compiles the server API's proto (`proto/chatcluster/api/v1/server_api.proto`) with protox, a
//! protobuf compiler in Rust (no `protoc` needed on the build machine), into the gRPC server,
//! client and messages, and writes its descriptor set for gRPC server reflection.

use std::path::PathBuf;

use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["chatcluster/api/v1/server_api.proto"], ["proto"])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out.join("server_api_descriptor.bin"), files.encode_to_vec())?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .build_transport(false)
        .compile_fds(files)?;
    Ok(())
}
