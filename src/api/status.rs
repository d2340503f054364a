//! The one mapping from crate errors to gRPC status codes.
//!
//! | error | code |
//! |---|---|
//! | bad or oversized input (`InvalidArgument`, `RequestTooLarge`, invalid tenant id or config) | `INVALID_ARGUMENT` |
//! | tenant, node, edge or token not found | `NOT_FOUND` |
//! | tenant or token id already exists | `ALREADY_EXISTS` |
//! | quota exceeded, tenant or token limit reached | `RESOURCE_EXHAUSTED` |
//! | precondition failed, tenant disabled, cascade too large, session expired, sequence reused | `FAILED_PRECONDITION` |
//! | the Raft entry a write was batched into had no byte budget left for it (`EntryTooLarge`; a retry with a new sequence lands in another entry) | `ABORTED` |
//! | local storage failure on a read | `INTERNAL` |
//!
//! The message is the error's own text, which names the tenant, field, limit and value.

use tonic::{Code, Status};

use crate::command::ApplyError;
use crate::state_machine::ReadError;
use crate::tenant::TenantError;

/// The status code of a deterministic apply (or read-validation) error.
pub fn apply_error_code(e: &ApplyError) -> Code {
    match e {
        ApplyError::InvalidArgument { .. } | ApplyError::RequestTooLarge { .. } => {
            Code::InvalidArgument
        }
        ApplyError::Tenant(TenantError::InvalidId { .. })
        | ApplyError::Tenant(TenantError::InvalidConfig { .. }) => Code::InvalidArgument,
        ApplyError::TenantNotFound { .. }
        | ApplyError::NodeNotFound { .. }
        | ApplyError::EdgeNotFound { .. }
        | ApplyError::TokenNotFound { .. } => Code::NotFound,
        ApplyError::TenantExists { .. } | ApplyError::TokenExists { .. } => Code::AlreadyExists,
        ApplyError::TooManyTokens { .. }
        | ApplyError::Quota(_)
        | ApplyError::Tenant(TenantError::Quota(_))
        | ApplyError::TooManyTenants { .. } => Code::ResourceExhausted,
        ApplyError::PreconditionFailed { .. }
        | ApplyError::TenantDisabled { .. }
        | ApplyError::CascadeTooLarge { .. }
        | ApplyError::SessionExpired { .. }
        | ApplyError::SequenceReused { .. } => Code::FailedPrecondition,
        ApplyError::EntryTooLarge { .. } => Code::Aborted,
        ApplyError::Unauthenticated { .. } => Code::Unauthenticated,
        ApplyError::PermissionDenied { .. } => Code::PermissionDenied,
    }
}

/// A deterministic apply error as a status.
pub fn apply_error(e: &ApplyError) -> Status {
    Status::new(apply_error_code(e), e.to_string())
}

/// A read error as a status: refusals by their kind, local I/O as `INTERNAL`.
pub fn read_error(e: &ReadError) -> Status {
    match e {
        ReadError::Refused(a) => apply_error(a),
        ReadError::Io(io) => Status::internal(format!("state machine read failed: {io}")),
    }
}

/// An argument the server refuses before proposing anything.
pub fn invalid(field: &str, reason: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("invalid argument {field}: {reason}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tenant::{QuotaExceeded, Resource};

    #[test]
    fn every_refusal_maps_to_the_code_a_client_acts_on() {
        let t = || "t".to_string();
        let cases = [
            (
                ApplyError::InvalidArgument {
                    field: "f".into(),
                    reason: "r".into(),
                },
                Code::InvalidArgument,
            ),
            (
                ApplyError::RequestTooLarge {
                    tenant: t(),
                    written: 2,
                    limit: 1,
                },
                Code::InvalidArgument,
            ),
            (
                ApplyError::EntryTooLarge {
                    tenant: t(),
                    earlier: 1,
                    written: 1,
                    limit: 1,
                },
                Code::Aborted,
            ),
            (
                ApplyError::Tenant(TenantError::InvalidId {
                    id: "X".into(),
                    reason: "r".into(),
                }),
                Code::InvalidArgument,
            ),
            (ApplyError::TenantNotFound { tenant: t() }, Code::NotFound),
            (
                ApplyError::NodeNotFound {
                    tenant: t(),
                    node: 1,
                },
                Code::NotFound,
            ),
            (
                ApplyError::EdgeNotFound {
                    tenant: t(),
                    edge: 1,
                },
                Code::NotFound,
            ),
            (
                ApplyError::TenantExists { tenant: t() },
                Code::AlreadyExists,
            ),
            (
                ApplyError::TooManyTenants {
                    tenant: t(),
                    count: 1,
                    limit: 1,
                },
                Code::ResourceExhausted,
            ),
            (
                ApplyError::PreconditionFailed {
                    tenant: t(),
                    index: 0,
                    reason: "r".into(),
                },
                Code::FailedPrecondition,
            ),
            (
                ApplyError::TenantDisabled { tenant: t() },
                Code::FailedPrecondition,
            ),
            (
                ApplyError::SessionExpired {
                    client_id: 1,
                    sequence: 2,
                    last: None,
                },
                Code::FailedPrecondition,
            ),
            (
                ApplyError::SequenceReused {
                    client_id: 1,
                    sequence: 2,
                },
                Code::FailedPrecondition,
            ),
            (
                ApplyError::Unauthenticated { reason: t() },
                Code::Unauthenticated,
            ),
            (
                ApplyError::PermissionDenied { reason: t() },
                Code::PermissionDenied,
            ),
        ];
        for (e, code) in cases {
            assert_eq!(apply_error(&e).code(), code, "{e}");
        }
        let q = ApplyError::Quota(QuotaExceeded {
            tenant: t(),
            resource: Resource::Nodes,
            used: 9,
            requested: 2,
            limit: 10,
        });
        let s = apply_error(&q);
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(
            s.message(),
            "tenant t: quota exceeded for nodes: used 9, requested 2, limit 10"
        );
    }
}
