//! Compiles `proto/trail/v1/*.proto` with protox (pure Rust), so a fresh clone builds
//! with cargo alone: no `protoc` is needed on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/trail/v1/trail.proto", "proto/trail/v1/raft.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        // prost's codec plus bounds checked before a request is decoded (src/codec.rs).
        .codec_path("crate::codec::TrailCodec")
        .compile_fds(descriptors)?;
    Ok(())
}
