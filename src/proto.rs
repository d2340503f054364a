//! The gRPC API generated from `proto/raftgraph/v1` (tonic + prost). Only the server and the
//! client use these types; `wal`, `state_machine` and `tenant` never see them.

/// `raftgraph.v1`: the graph, tenant, cluster and Raft services and their messages.
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod v1 {
    tonic::include_proto!("raftgraph.v1");
}

/// The encoded `FileDescriptorSet` of `raftgraph.v1`, served through gRPC server reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("raftgraph_descriptor");

/// `etcdserverpb`: the slice of etcd's v3 KV API that `raftgraph bench --target etcd` drives
/// (client only).
#[allow(clippy::all, clippy::pedantic, missing_docs)]
pub mod etcd {
    tonic::include_proto!("etcdserverpb");
}
