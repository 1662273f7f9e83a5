//! Compiles the simulation's Raft transport (`proto/trail/sim/v1/raft.proto`) with
//! protox (pure Rust, no `protoc`), as `proto/build.rs` does for the wire protocol.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/trail/sim/v1/raft.proto"];
    for file in files {
        println!("cargo:rerun-if-changed={file}");
    }
    let descriptors = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(descriptors)?;
    Ok(())
}
