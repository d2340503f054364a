//! The error of a proposal whose outcome the client cannot know, and how a caller tells it.

use tonic::{Code, Status};

/// The metadata key that marks unknown-outcome errors ([`is_outcome_unknown`]), with the value
/// `unknown`.
pub const OUTCOME_HEADER: &str = "x-raftgraph-outcome";

/// The error of a proposal whose outcome the client cannot know: an earlier attempt went
/// unanswered and the retry was refused (its session had expired, its credentials were no
/// longer valid, or its entry was full), so the first attempt may or may not have been applied. `Code::Unknown`, marked with [`OUTCOME_HEADER`]; test for
/// it with [`is_outcome_unknown`].
pub(super) fn outcome_unknown(client_id: u64, sequence: u64, refusal: &Status) -> Status {
    let mut metadata = tonic::metadata::MetadataMap::new();
    metadata.insert(
        OUTCOME_HEADER,
        tonic::metadata::MetadataValue::from_static("unknown"),
    );
    Status::with_metadata(
        Code::Unknown,
        format!(
            "outcome unknown: client {client_id} sequence {sequence} went unanswered at least \
             once and its retry was refused, so it may or may not have been applied; read \
             before writing it again (the retry's refusal: {})",
            refusal.message()
        ),
        metadata,
    )
}

/// Whether `s` is a proposal whose outcome is unknown: an earlier attempt went unanswered and
/// the retry was refused because the session had expired, so it may have been applied once; it
/// was not resent. `Code::Unknown`, marked with [`OUTCOME_HEADER`].
pub fn is_outcome_unknown(s: &Status) -> bool {
    s.code() == Code::Unknown
        && s.metadata()
            .get(OUTCOME_HEADER)
            .is_some_and(|v| v.as_bytes() == b"unknown")
}
