//! The key encoding and column-family names: the only place that knows either.
//!
//! Column families: [`META_CF`] and one per tenant, named [`tenant_cf`] = `tenant.{id}` (tenant
//! ids cannot contain `.`, so no tenant CF can be named `meta` or `default`).
//!
//! `meta` keys (first byte is the kind):
//! ```text
//! a                                   applied log id
//! m                                   last membership
//! g                                   Globals (cluster limits, tenant and session counts)
//! t <id> 0x00                         TenantRecord
//! u <id> 0x00                         TenantCounters (usage, id counters)
//! r <id> 0x00                         RateLimits (absent: unlimited; since codec 4, no
//!                                     format change: older data has none)
//! s <owner> <client_id: u64 BE>       Session
//! x <owner> <index: u64 BE> <client_id: u64 BE>
//!                                     an owner's session eviction order (empty value; `index`
//!                                     is at most the session's `last_index`, see `apply`)
//! S <owner>                           SessionUsage of an owner (count, bytes)
//! X <owner>                           an owner's eviction floor (u64 BE): it has no `x` key
//!                                     with a smaller index, so eviction starts there instead
//!                                     of stepping over the deleted keys before it (absent: 0.
//!                                     Since codec 4, no format change: older data has none)
//! E <owner>                           the stamped time (µs, u64 BE) of the latest entry that
//!                                     evicted an owner's sessions (absent: none. Since codec
//!                                     4, no format change)
//! D <owner>                           an owner whose token is gone: its sessions are purged
//!                                     by later requests, a few at a time (empty value)
//! d                                   how many `D` markers exist (u64 BE)
//! k <token id: u64 BE>                TokenRecord (a hash, never the token)
//! K                                   how many tokens exist (u64 BE)
//! ```
//! The `0x00` after a tenant id (ids never contain it) makes tenant keys prefix-free: the keys of
//! `t` are not a prefix of those of `t1`, so a prefix scan for one tenant never reaches another.
//!
//! Tenant CF keys:
//! ```text
//! n <node: u64 BE>                                     NodeRecord
//! e <edge: u64 BE>                                     EdgeRecord
//! o <source: u64 BE> <type: str> <edge: u64 BE>        out-adjacency -> target (u64 BE)
//! i <target: u64 BE> <type: str> <edge: u64 BE>        in-adjacency  -> source (u64 BE)
//! l <label: str> <node: u64 BE>                        label index (empty value)
//! ```
//! `owner` is a request's credential in 9 bytes: a kind byte (0 open, 1 member, 2 token) and
//! the token id, u64 BE (0 when open, and for every member certificate: they share one session
//! space, since a forwarded call is stamped with the forwarding member's certificate).
//!
//! `str` is a u16 BE length then the bytes, so a prefix ending in a whole `str` matches that
//! exact type or label and no longer one. Ids are big-endian so byte order is numeric order.

use crate::auth::Credential;

pub const META_CF: &str = "meta";
const TENANT_CF_PREFIX: &str = "tenant.";

pub const APPLIED: &[u8] = b"a";
pub const MEMBERSHIP: &[u8] = b"m";
pub const GLOBALS: &[u8] = b"g";
pub const TENANT: u8 = b't';
pub const COUNTERS: u8 = b'u';
pub const RATE_LIMITS: u8 = b'r';
pub const SESSION: u8 = b's';
pub const EVICTION: u8 = b'x';
pub const SESSION_USAGE: u8 = b'S';
pub const EVICTED: u8 = b'E';
pub const EVICTION_FLOOR: u8 = b'X';
pub const DEAD_OWNER: u8 = b'D';
pub const DEAD_OWNER_COUNT: &[u8] = b"d";
pub const TOKEN: u8 = b'k';
pub const TOKEN_COUNT: &[u8] = b"K";

pub const NODE: u8 = b'n';
pub const EDGE: u8 = b'e';
pub const OUT: u8 = b'o';
pub const IN: u8 = b'i';
pub const LABEL: u8 = b'l';

/// The column family of a (validated) tenant id.
pub fn tenant_cf(tenant: &str) -> String {
    format!("{TENANT_CF_PREFIX}{tenant}")
}

/// The tenant id a column-family name belongs to, if it is a tenant CF.
pub fn tenant_of_cf(cf: &str) -> Option<&str> {
    cf.strip_prefix(TENANT_CF_PREFIX)
}

fn tenant_key(kind: u8, tenant: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(tenant.len() + 2);
    k.push(kind);
    k.extend_from_slice(tenant.as_bytes());
    k.push(0);
    k
}

pub fn tenant_record(tenant: &str) -> Vec<u8> {
    tenant_key(TENANT, tenant)
}

pub fn tenant_counters(tenant: &str) -> Vec<u8> {
    tenant_key(COUNTERS, tenant)
}

pub fn tenant_rate_limits(tenant: &str) -> Vec<u8> {
    tenant_key(RATE_LIMITS, tenant)
}

/// The tenant id in a `t`/`u` meta key.
pub fn tenant_of_meta_key(key: &[u8]) -> Option<&str> {
    let body = key.get(1..)?.strip_suffix(&[0])?;
    std::str::from_utf8(body).ok()
}

fn owner_bytes(owner: Credential) -> [u8; 9] {
    let (kind, id) = match owner {
        Credential::Open => (0, 0),
        Credential::Member(_) => (1, 0),
        Credential::Token(id) => (2, id),
    };
    let mut b = [kind; 9];
    b[1..].copy_from_slice(&id.to_be_bytes());
    b
}

/// An owner's key: `kind`, the owner, then `ids` (u64 BE each).
fn owned<const N: usize>(kind: u8, owner: Credential, ids: &[u64]) -> [u8; N] {
    let mut k = [kind; N];
    k[1..10].copy_from_slice(&owner_bytes(owner));
    for (i, id) in ids.iter().enumerate() {
        k[10 + 8 * i..18 + 8 * i].copy_from_slice(&id.to_be_bytes());
    }
    k
}

pub fn session(owner: Credential, client_id: u64) -> [u8; 18] {
    owned(SESSION, owner, &[client_id])
}

pub fn session_usage(owner: Credential) -> [u8; 10] {
    owned(SESSION_USAGE, owner, &[])
}

pub fn evicted(owner: Credential) -> [u8; 10] {
    owned(EVICTED, owner, &[])
}

pub fn eviction(owner: Credential, last_index: u64, client_id: u64) -> [u8; 26] {
    owned(EVICTION, owner, &[last_index, client_id])
}

pub fn eviction_floor(owner: Credential) -> [u8; 10] {
    owned(EVICTION_FLOOR, owner, &[])
}

pub fn dead_owner(owner: Credential) -> [u8; 10] {
    owned(DEAD_OWNER, owner, &[])
}

/// The owner a `D` key names.
pub fn owner_of(key: &[u8]) -> Option<Credential> {
    let id = u64::from_be_bytes(key.get(2..10)?.try_into().ok()?);
    match (key.len(), key.get(1)?) {
        (10, 0) => Some(Credential::Open),
        (10, 1) => Some(Credential::Member(id)),
        (10, 2) => Some(Credential::Token(id)),
        _ => None,
    }
}

/// The prefix of an owner's eviction keys.
pub fn eviction_prefix(owner: Credential) -> [u8; 10] {
    owned(EVICTION, owner, &[])
}

/// The index and client id of an eviction key.
pub fn eviction_parts(key: &[u8]) -> Option<(u64, u64)> {
    let index = u64::from_be_bytes(key.get(10..18)?.try_into().ok()?);
    let client = u64::from_be_bytes(key.get(18..26)?.try_into().ok()?);
    (key.len() == 26).then_some((index, client))
}

fn id_key(kind: u8, id: u64) -> [u8; 9] {
    let mut k = [kind; 9];
    k[1..].copy_from_slice(&id.to_be_bytes());
    k
}

pub fn token(id: u64) -> [u8; 9] {
    id_key(TOKEN, id)
}

pub fn node(id: u64) -> [u8; 9] {
    id_key(NODE, id)
}

pub fn edge(id: u64) -> [u8; 9] {
    id_key(EDGE, id)
}

fn push_str(k: &mut Vec<u8>, s: &str) {
    // Names are validated to at most NAME_BYTES_MAX (256) bytes, far below u16::MAX.
    let len = u16::try_from(s.len()).expect("names are bounded far below 64 KiB");
    k.extend_from_slice(&len.to_be_bytes());
    k.extend_from_slice(s.as_bytes());
}

/// Prefix of a node's adjacency in one direction (`OUT` or `IN`), optionally of one type.
pub fn adjacency_prefix(dir: u8, node: u64, edge_type: Option<&str>) -> Vec<u8> {
    let mut k = Vec::with_capacity(11 + edge_type.map_or(0, str::len));
    k.extend_from_slice(&id_key(dir, node));
    if let Some(t) = edge_type {
        push_str(&mut k, t);
    }
    k
}

pub fn adjacency(dir: u8, node: u64, edge_type: &str, edge: u64) -> Vec<u8> {
    let mut k = adjacency_prefix(dir, node, Some(edge_type));
    k.extend_from_slice(&edge.to_be_bytes());
    k
}

/// The edge id at the end of an adjacency key.
pub fn adjacency_edge(key: &[u8]) -> Option<u64> {
    let tail = key.len().checked_sub(8)?;
    Some(u64::from_be_bytes(key[tail..].try_into().ok()?))
}

pub fn label_prefix(label: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + label.len());
    k.push(LABEL);
    push_str(&mut k, label);
    k
}

pub fn label(label: &str, node: u64) -> Vec<u8> {
    let mut k = label_prefix(label);
    k.extend_from_slice(&node.to_be_bytes());
    k
}

/// The id in an `n`/`e` key or at the end of an `l` key.
pub fn trailing_id(key: &[u8]) -> Option<u64> {
    adjacency_edge(key)
}

pub fn u64_value(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

/// The smallest key greater than every key starting with `prefix` (None: no such key).
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tenant_meta_keys_are_prefix_free() {
        let ids = ["t", "t1", "t1a", "t-", "tt"];
        for a in ids {
            for b in ids {
                if a != b {
                    for f in [tenant_record, tenant_counters] {
                        assert!(!f(b).starts_with(&f(a)), "{a} prefixes {b}");
                    }
                    assert!(!tenant_cf(b).eq(&tenant_cf(a)));
                }
            }
            assert_eq!(tenant_of_meta_key(&tenant_record(a)), Some(a));
            assert_eq!(tenant_of_cf(&tenant_cf(a)), Some(a));
        }
        assert_eq!(tenant_of_cf(META_CF), None);
    }

    #[test]
    fn typed_prefixes_match_one_type_only() {
        let p = adjacency_prefix(OUT, 7, Some("a"));
        assert!(adjacency(OUT, 7, "a", 3).starts_with(&p));
        assert!(!adjacency(OUT, 7, "ab", 3).starts_with(&p));
        assert!(!label("ab", 1).starts_with(&label_prefix("a")));
        assert_eq!(adjacency_edge(&adjacency(IN, 1, "x", 99)), Some(99));
        assert!(node(1) < node(256), "big-endian ids sort numerically");
    }

    #[test]
    fn owners_have_disjoint_session_spaces() {
        let owners = [
            Credential::Open,
            Credential::Member(1),
            Credential::Token(1),
            Credential::Token(2),
        ];
        assert_eq!(
            session(Credential::Member(1), 7),
            session(Credential::Member(2), 7),
            "member certificates share one space"
        );
        assert_eq!(
            owner_of(&dead_owner(Credential::Token(9))),
            Some(Credential::Token(9))
        );
        for a in owners {
            for b in owners {
                if a != b {
                    assert_ne!(session(a, 7), session(b, 7));
                    assert!(!eviction(b, 3, 7).starts_with(&eviction_prefix(a)));
                }
            }
            assert!(eviction(a, 3, 7).starts_with(&eviction_prefix(a)));
            assert_eq!(eviction_parts(&eviction(a, 3, 7)), Some((3, 7)));
        }
        assert!(eviction(Credential::Open, 1, 9) < eviction(Credential::Open, 2, 0));
    }

    #[test]
    fn prefix_end_is_the_first_key_past_the_prefix() {
        assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
        assert_eq!(prefix_end(&[1, 0xff]), Some(vec![2]));
        assert_eq!(prefix_end(&[0xff, 0xff]), None);
    }
}
