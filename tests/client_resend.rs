//! When the Rust client sends a write again in a new session, and when it must not:
//! - refused with `EntryTooLarge` (ABORTED: the Raft entry it was batched into had no byte
//!   budget left; nothing applied): resent in a new session, so it lands in another entry, at
//!   most `ENTRY_FULL_RESENDS` times; any other ABORTED is the answer;
//! - refused as `session expired` at its first attempt (nothing applied under that sequence):
//!   resent once in a new session;
//! - refused so (or for its credentials) after an attempt that went unanswered (which may have
//!   applied): never resent, the call fails with an unknown outcome.
//!
//! The server is a stand-in graph service on loopback that answers each write as the test
//! scripts it and records each request id it sees.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftgraph::client::{Client, ClientOptions, ENTRY_FULL_RESENDS};
use raftgraph::proto::v1 as pb;
use tonic::{Code, Status};

mod helpers;
use helpers::stand_in;

const ENTRY_FULL: &str = "tenant t: this request writes at least 10 bytes after the 100 bytes of \
                          the requests batched before it in the same Raft entry, limit 100 per \
                          entry; retry it with a new sequence";

fn refused(refuse: bool, message: &'static str) -> Result<(), Status> {
    if refuse {
        Err(Status::aborted(message))
    } else {
        Ok(())
    }
}

const EXPIRED: &str = "client 7: session expired for sequence 1 (last applied sequence: None); \
                       start a new client id";

/// A write through a client of the stand-in server, whose `n`th write (from 0) is answered
/// `answer(n)`; the request ids the server saw.
async fn write(
    answer: impl Fn(usize) -> Result<(), Status> + Send + Sync + 'static,
) -> (Result<(), Status>, Vec<(u64, u64)>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let addr = stand_in::serve(Arc::new(move |request| {
        let id = request.into_inner().request_id.expect("request id");
        let mut seen = log.lock().unwrap();
        seen.push((id.client_id, id.sequence));
        let answer = answer(seen.len() - 1).map(|()| pb::WriteResponse::default());
        Box::pin(async move { answer })
    }))
    .await;
    let client = Client::new(
        vec![addr],
        ClientOptions {
            client_id: Some(7),
            attempt_timeout: Duration::from_secs(10),
            deadline: Duration::from_secs(30),
            write_stream: false,
            ..ClientOptions::default()
        },
    )
    .unwrap();
    let r = client
        .write(pb::WriteRequest {
            tenant: "t".into(),
            ..Default::default()
        })
        .await
        .map(drop);
    let seen = seen.lock().unwrap().clone();
    (r, seen)
}

#[tokio::test]
async fn a_write_refused_for_a_full_entry_is_resent_in_a_new_session() {
    let (r, seen) = write(|n| refused(n < 2, ENTRY_FULL)).await;
    r.expect("the third attempt is answered");
    assert_eq!(seen.len(), 3, "{seen:?}");
    // Each attempt in a session of its own, starting at sequence 1: a new request, never a
    // repeat of the refused one (which the session table would answer with the refusal).
    assert_eq!(seen[0], (7, 1));
    for (i, (client, sequence)) in seen.iter().enumerate().skip(1) {
        assert_eq!(*sequence, 1, "{seen:?}");
        assert!(
            seen[..i].iter().all(|(c, _)| c != client),
            "attempt {i} reused a session: {seen:?}"
        );
    }
}

#[tokio::test]
async fn a_full_entry_is_resent_a_bounded_number_of_times_and_other_aborts_are_answers() {
    let (r, seen) = write(|_| refused(true, ENTRY_FULL)).await;
    assert_eq!(r.unwrap_err().code(), Code::Aborted);
    assert_eq!(seen.len(), 1 + ENTRY_FULL_RESENDS as usize, "{seen:?}");

    let (r, seen) = write(|_| refused(true, "aborted for another reason")).await;
    assert_eq!(r.unwrap_err().code(), Code::Aborted);
    assert_eq!(seen.len(), 1, "{seen:?}");
}

#[tokio::test]
async fn a_session_expired_at_the_first_attempt_is_resent_in_a_new_session() {
    let (r, seen) = write(|n| match n {
        0 => Err(Status::failed_precondition(EXPIRED)),
        _ => Ok(()),
    })
    .await;
    r.expect("the resend is answered");
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert_ne!(seen[1].0, seen[0].0, "a new session: {seen:?}");
    assert_eq!(seen[1].1, 1);
}

/// The sequence: the first attempt applies but its answer is lost, the session is
/// evicted, the retry is refused as expired. Resending in a new session would apply it twice;
/// the client reports an unknown outcome instead and sends nothing more.
#[tokio::test]
async fn a_session_expired_after_an_unanswered_attempt_is_an_unknown_outcome() {
    let (r, seen) = write(|n| match n {
        0 => Err(Status::unavailable("the answer was lost")),
        1 => Err(Status::failed_precondition(EXPIRED)),
        _ => Ok(()),
    })
    .await;
    let e = r.unwrap_err();
    assert!(raftgraph::client::is_outcome_unknown(&e), "{e:?}");
    assert!(e.message().contains("outcome unknown"), "{e}");
    assert_eq!(
        seen,
        vec![(7, 1), (7, 1)],
        "the same request twice, then nothing"
    );
}

/// The same for a refusal of the credentials after an unanswered attempt (the token was revoked
/// in between: apply refuses it before it reads the session, so the refusal says nothing about
/// the first attempt), while the same refusal at the first attempt is the answer.
#[tokio::test]
async fn a_credentials_refusal_after_an_unanswered_attempt_is_an_unknown_outcome() {
    let (r, seen) = write(|n| match n {
        0 => Err(Status::unavailable("the answer was lost")),
        _ => Err(Status::unauthenticated(
            "token revoked before the request applied",
        )),
    })
    .await;
    let e = r.unwrap_err();
    assert!(raftgraph::client::is_outcome_unknown(&e), "{e:?}");
    assert_eq!(seen.len(), 2, "{seen:?}");
    let (r, _) = write(|_| Err(Status::unauthenticated("unknown token"))).await;
    let e = r.unwrap_err();
    assert_eq!(e.code(), Code::Unauthenticated);
    assert!(!raftgraph::client::is_outcome_unknown(&e));
}
