//! Generates the gRPC API from `proto/raftgraph/v1/*.proto`, and the etcd KV client the
//! benchmark drives from `proto/etcd/kv.proto` (needs `protoc`: Debian
//! `protobuf-compiler`; `.ci/run` installs it).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/raftgraph/v1/graph.proto",
        "proto/raftgraph/v1/tenant.proto",
        "proto/raftgraph/v1/raft.proto",
        "proto/raftgraph/v1/cluster.proto",
        "proto/raftgraph/v1/auth.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // For server reflection (grpcurl lists and describes the services without .proto files).
        .file_descriptor_set_path(out.join("raftgraph_descriptor.bin"))
        // Ordered maps: property maps reach the log, where bytes must not depend on hash order.
        .btree_map(".")
        .compile_protos(&protos, &["proto"])?;
    // etcd's KV API, client side only: `raftgraph bench --target etcd`.
    let etcd = "proto/etcd/kv.proto";
    println!("cargo:rerun-if-changed={etcd}");
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&[etcd], &["proto"])?;
    Ok(())
}
