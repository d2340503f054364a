//! Regression test (found by the simulation): a client call's deadline covers the whole call.
//! A write first asks the endpoints who leads (up to 1 s each), and a "session expired" refusal
//! is resent once; before the fix each retry loop started its own deadline after discovery,
//! so a call against an unresponsive cluster ran for discovery plus the deadline (the
//! simulation saw an 8 s write take 10.3 s).
//!
//! Time is tokio's paused clock; the endpoints never answer (their connections never complete).

use std::sync::Arc;
use std::time::Duration;

use raftgraph::client::{Client, ClientOptions, Pool};
use raftgraph::proto::v1 as pb;
use raftgraph::transport::{Connector, Dialer};

#[tokio::test(start_paused = true)]
async fn a_write_to_an_unresponsive_cluster_ends_at_its_deadline() {
    // Over the connection's write stream and as unary calls.
    for write_stream in [true, false] {
        write_ends_at_deadline(write_stream).await;
    }
}

/// A client of three endpoints whose connections never complete, with a 1 s attempt timeout.
fn silent_client(deadline: Duration, write_stream: bool, read_stream: bool) -> Client {
    let silent: Connector = Arc::new(|_addr| Box::pin(std::future::pending()));
    Client::new(
        vec!["a:1".into(), "b:1".into(), "c:1".into()],
        ClientOptions {
            client_id: Some(7),
            jitter_seed: Some(7),
            attempt_timeout: Duration::from_secs(1),
            deadline,
            pool: Pool::new(Dialer::with_connector(silent)),
            write_stream,
            read_stream,
        },
    )
    .unwrap()
}

async fn write_ends_at_deadline(write_stream: bool) {
    let deadline = Duration::from_secs(3);
    let client = silent_client(deadline, write_stream, true);
    let started = tokio::time::Instant::now();
    let r = client
        .write(pb::WriteRequest {
            tenant: "t".into(),
            ..Default::default()
        })
        .await;
    let took = started.elapsed();
    assert!(r.is_err(), "{r:?}");
    // Leader discovery alone takes the 3 s (1 s per endpoint); before the fix the write then
    // retried for another full deadline.
    assert!(
        took <= deadline + Duration::from_millis(100),
        "the call took {took:?} with a {deadline:?} deadline (write_stream {write_stream})"
    );
    assert!(
        took >= deadline - Duration::from_millis(100),
        "gave up early: {took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_read_from_an_unresponsive_cluster_ends_at_its_deadline() {
    // Over the connection's read stream and as unary calls.
    for read_stream in [true, false] {
        let deadline = Duration::from_secs(3);
        let client = silent_client(deadline, true, read_stream);
        let started = tokio::time::Instant::now();
        let r = client
            .get_node(pb::GetNodeRequest {
                tenant: "t".into(),
                id: 1,
                consistency: pb::Consistency::Serializable as i32,
            })
            .await;
        let took = started.elapsed();
        let s = r.unwrap_err();
        assert_eq!(s.code(), tonic::Code::DeadlineExceeded, "{s:?}");
        assert!(
            took <= deadline + Duration::from_millis(100) && took >= deadline / 2,
            "the read took {took:?} with a {deadline:?} deadline (read_stream {read_stream})"
        );
    }
}
