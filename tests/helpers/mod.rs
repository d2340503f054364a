//! Helpers shared by the integration tests, one file per kind:
//! - [`certs`]: a CA, member and client certificates, and TLS dialers for in-process servers;
//! - [`wal_log`]: a type config, entry builders, acknowledged appends and reads for the WAL tests;
//! - [`sm_harness`]: a harness that applies requests to a state machine as consecutive entries;
//! - [`sm_logs`]: random multi-tenant request logs for the state-machine property tests;
//! - [`stand_in`]: a graph service answering writes with a function, for client tests;
//! - [`proxy`]: TCP proxies that can cut a server off.
//!
//! Each test crate includes this module and uses the files it needs; the rest is dead code
//! there.
#![allow(dead_code)]

pub mod certs;
pub mod proxy;
pub mod sm_harness;
pub mod sm_logs;
pub mod stand_in;
pub mod wal_log;
