//! Generates the gRPC API from `proto/raftgraph/v1/*.proto` (needs `protoc`: Debian
//! `protobuf-compiler`; `.ci/run` installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/raftgraph/v1/graph.proto",
        "proto/raftgraph/v1/tenant.proto",
        "proto/raftgraph/v1/raft.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        // Ordered maps: property maps reach the log, where bytes must not depend on hash order.
        .btree_map(".")
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
