//! Who may do what, as pure logic: bearer tokens, their scopes, and the principal a call runs as.
//!
//! **Tokens.** A token is `rgt_<id>_<secret>`: a 64-bit id (16 hex digits, not secret: lists
//! and audit logs name it) and 256 random bits (64 hex digits). It is made where it is asked for
//! (the member that serves `CreateToken` or `Init`), shown to the caller once, and never stored:
//! the replicated [`TokenRecord`] keeps only a BLAKE3 hash of the id and the secret, so every
//! member decides alike and nothing on disk or in the log lets anyone present the token.
//! Comparing hashes is constant-time (`blake3::Hash`'s equality).
//!
//! **Scopes.** A token is a cluster administrator's ([`Scope::Cluster`]) or one tenant's with
//! a [`Role`]: `read` (reads), `write` (reads and writes), `admin` (those, and its tenant's
//! tokens). Tenant lifecycle, quotas, limits, tokens of other scopes and every cluster call
//! need [`Scope::Cluster`].
//!
//! **Certificates.** A client certificate from the cluster's CA that names a member of this
//! cluster (the member's own certificate) makes its holder a cluster administrator too: whoever
//! holds a member's key can act as that member on the peer plane already. It is what
//! `cluster init` is authenticated by, and the way back in when every admin token is lost.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::tenant::{TenantError, validate_tenant_id};

/// What every token string starts with.
pub const TOKEN_PREFIX: &str = "rgt_";
/// Random bytes in a token's secret.
pub const SECRET_BYTES: usize = 32;
/// The length of a token string: the prefix, 16 hex digits of id, `_`, 64 of secret.
pub const TOKEN_LEN: usize = TOKEN_PREFIX.len() + 16 + 1 + 2 * SECRET_BYTES;
/// Tokens that may exist at once, cluster-wide (each is one record that every call may read).
pub const TOKENS_MAX: u64 = 10_000;
/// Tokens one tenant may have: no tenant can use up the cluster's.
pub const TOKENS_PER_TENANT_MAX: u64 = 1_000;
/// Of [`TOKENS_MAX`], kept for cluster-admin tokens: tenants together stop short of it, so a
/// cluster admin can always be made (the way back in with a member's certificate).
pub const CLUSTER_TOKENS_RESERVED: u64 = 100;
/// The longest a token may be valid for: ten years.
pub const EXPIRY_SECS_MAX: u64 = 10 * 366 * 24 * 3600;

/// Whether the client listener authenticates calls.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    /// Every call needs a bearer token (or a member's certificate); the default.
    #[default]
    On,
    /// Every caller may do everything: for local experiments only (logged as a warning).
    Off,
}

/// What a tenant token may do in its tenant. Ordered: each role may do all a lower one may.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Role {
    /// Reads of the tenant's graph and record.
    Read,
    /// Reads and writes of the tenant's graph.
    Write,
    /// Reads, writes, and the tenant's own tokens.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

/// What a token (or certificate) stands for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// A cluster administrator: every call.
    Cluster,
    /// One tenant, with one role in it.
    Tenant { tenant: String, role: Role },
}

impl Scope {
    /// Refuses a tenant scope whose tenant id is not valid.
    pub fn validate(&self) -> Result<(), TenantError> {
        match self {
            Scope::Cluster => Ok(()),
            Scope::Tenant { tenant, .. } => validate_tenant_id(tenant),
        }
    }

    /// The tenant a tenant scope names.
    pub fn tenant(&self) -> Option<&str> {
        match self {
            Scope::Cluster => None,
            Scope::Tenant { tenant, .. } => Some(tenant),
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scope::Cluster => f.write_str("cluster-admin"),
            Scope::Tenant { tenant, role } => write!(f, "{} of tenant {tenant}", role.as_str()),
        }
    }
}

/// Why a string is not a token. The message never repeats the string.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("malformed token: {0}; a token is rgt_ followed by 16 hex digits, _ and 64 hex digits")]
pub struct Malformed(&'static str);

/// A token: its id and its secret. `Debug` shows the id only; [`Token::expose`] gives the
/// string, once, to the caller who asked for it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub id: u64,
    secret: [u8; SECRET_BYTES],
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token({})", id_hex(self.id))
    }
}

/// A token id as lists and logs show it: 16 hex digits.
pub fn id_hex(id: u64) -> String {
    format!("{id:016x}")
}

/// A token id from its 16 hex digits.
pub fn parse_id(s: &str) -> Option<u64> {
    (s.len() == 16 && s.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| u64::from_str_radix(s, 16).ok())
        .flatten()
}

fn hex_nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

impl Token {
    /// A new token from `random` (which fills a buffer with random bytes: the OS generator in
    /// production, a seeded one in the simulation). Id 0 is never used.
    pub fn generate(random: &dyn Fn(&mut [u8])) -> Token {
        let mut id = [0u8; 8];
        let mut secret = [0u8; SECRET_BYTES];
        loop {
            random(&mut id);
            if u64::from_be_bytes(id) != 0 {
                break;
            }
        }
        random(&mut secret);
        Token {
            id: u64::from_be_bytes(id),
            secret,
        }
    }

    /// Parses a token string (lower-case hex only, exactly [`TOKEN_LEN`] bytes).
    pub fn parse(s: &str) -> Result<Token, Malformed> {
        if s.len() != TOKEN_LEN {
            return Err(Malformed("wrong length"));
        }
        if !s.is_ascii() {
            return Err(Malformed("not ASCII"));
        }
        let body = s
            .strip_prefix(TOKEN_PREFIX)
            .ok_or(Malformed("wrong prefix"))?;
        let (id, rest) = body.split_at(16);
        let secret_hex = rest.strip_prefix('_').ok_or(Malformed("no separator"))?;
        let id = parse_id(id)
            .filter(|_| id.bytes().all(|b| !b.is_ascii_uppercase()))
            .ok_or(Malformed("id is not 16 lower-case hex digits"))?;
        let mut secret = [0u8; SECRET_BYTES];
        for (i, pair) in secret_hex.as_bytes().chunks(2).enumerate() {
            let (Some(hi), Some(lo)) = (hex_nibble(pair[0]), hex_nibble(pair[1])) else {
                return Err(Malformed("secret is not 64 lower-case hex digits"));
            };
            secret[i] = hi << 4 | lo;
        }
        Ok(Token { id, secret })
    }

    /// The token string. Show it to whoever asked for the token, and to no one else.
    pub fn expose(&self) -> String {
        let mut s = String::with_capacity(TOKEN_LEN);
        s.push_str(TOKEN_PREFIX);
        s.push_str(&id_hex(self.id));
        s.push('_');
        for b in self.secret {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// What is stored: BLAKE3 of the id and the secret.
    pub fn hash(&self) -> [u8; 32] {
        let mut h = blake3::Hasher::new_derive_key("raftgraph 2026-12 bearer token v1");
        h.update(&self.id.to_be_bytes());
        h.update(&self.secret);
        *h.finalize().as_bytes()
    }

    /// The last four characters of the token string (lists show them to tell tokens apart).
    pub fn last4(&self) -> String {
        let s = self.expose();
        s[s.len() - 4..].to_string()
    }

    /// The record a new token is stored as.
    pub fn record(
        &self,
        scope: Scope,
        created_micros: i64,
        expires_micros: Option<i64>,
    ) -> TokenRecord {
        TokenRecord {
            id: self.id,
            scope,
            hash: self.hash(),
            created_micros,
            expires_micros,
            last4: self.last4(),
        }
    }
}

/// A token as the replicated state keeps it (meta key `k <id>`): never the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub id: u64,
    pub scope: Scope,
    #[serde(with = "serde_bytes")]
    pub hash: [u8; 32],
    /// Stamped by the leader from the creating request's timestamp.
    pub created_micros: i64,
    pub expires_micros: Option<i64>,
    pub last4: String,
}

impl TokenRecord {
    /// Whether `token` is the one this record was made from (constant-time).
    pub fn matches(&self, token: &Token) -> bool {
        token.id == self.id && blake3::Hash::from(self.hash) == blake3::Hash::from(token.hash())
    }

    /// Whether the token has expired at `now_micros`.
    pub fn expired(&self, now_micros: i64) -> bool {
        self.expires_micros.is_some_and(|e| now_micros >= e)
    }

    /// What lists show: everything but the hash.
    pub fn info(&self) -> TokenInfo {
        TokenInfo {
            id: self.id,
            scope: self.scope.clone(),
            created_micros: self.created_micros,
            expires_micros: self.expires_micros,
            last4: self.last4.clone(),
        }
    }
}

/// A token as it is listed: id, scope, times and the last four characters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    pub id: u64,
    pub scope: Scope,
    pub created_micros: i64,
    pub expires_micros: Option<i64>,
    pub last4: String,
}

/// Who a call runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Principal {
    pub scope: Scope,
    pub via: Credential,
}

/// What authenticated a principal. Every request records it (`Request::owner`): a client's
/// exactly-once session lives in the space of the credential that made it, and apply checks a
/// token credential again. **Format:** part of every request in the log (bincode, positional).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Credential {
    /// A bearer token, by id.
    Token(u64),
    /// A certificate naming this member of the cluster.
    Member(u64),
    /// Authentication is off (`auth = "off"`): every caller is a cluster administrator.
    Open,
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.via {
            Credential::Token(id) => write!(f, "token {} ({})", id_hex(id), self.scope),
            Credential::Member(id) => write!(f, "member {id}'s certificate ({})", self.scope),
            Credential::Open => f.write_str("anyone (authentication off)"),
        }
    }
}

impl Principal {
    pub fn is_cluster_admin(&self) -> bool {
        self.scope == Scope::Cluster
    }

    /// Whether the principal may act on `tenant` with `role`.
    pub fn may(&self, tenant: &str, role: Role) -> bool {
        match &self.scope {
            Scope::Cluster => true,
            Scope::Tenant { tenant: t, role: r } => t == tenant && *r >= role,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counting() -> impl Fn(&mut [u8]) {
        let n = std::cell::Cell::new(0u8);
        move |buf: &mut [u8]| {
            for b in buf {
                n.set(n.get().wrapping_add(1));
                *b = n.get();
            }
        }
    }

    #[test]
    fn a_token_round_trips_and_only_its_own_string_matches() {
        let t = Token::generate(&counting());
        let s = t.expose();
        assert_eq!(s.len(), TOKEN_LEN);
        assert!(s.starts_with("rgt_0102030405060708_090a0b"), "{s}");
        assert_eq!(Token::parse(&s).unwrap(), t);
        let rec = t.record(Scope::Cluster, 1, None);
        assert!(rec.matches(&t));
        assert_eq!(rec.last4, s[s.len() - 4..]);
        // One bit of the secret changed: no match.
        let mut other = s.clone().into_bytes();
        let last = other.len() - 1;
        other[last] = if other[last] == b'0' { b'1' } else { b'0' };
        let other = Token::parse(std::str::from_utf8(&other).unwrap()).unwrap();
        assert!(!rec.matches(&other));
        assert!(
            !format!("{t:?}").contains(&s[21..]),
            "Debug shows no secret"
        );
    }

    #[test]
    fn malformed_tokens_are_refused_without_echoing_them() {
        let good = Token::generate(&counting()).expose();
        let cases = [
            String::new(),
            good[..good.len() - 1].to_string(),
            format!("x{}", &good[1..]),
            good.replacen('_', "-", 2),
            good.to_uppercase().replacen("RGT_", "rgt_", 1),
            format!("{}g", &good[..good.len() - 1]),
            // Multi-byte characters where the id ends must not split a character.
            format!("rgt_{}é{}", &good[4..18], &good[20..]),
        ];
        for c in cases {
            let e = Token::parse(&c).unwrap_err().to_string();
            assert!(e.starts_with("malformed token"), "{c}: {e}");
            assert!(c.is_empty() || !e.contains(&c), "{e}");
        }
    }

    #[test]
    fn roles_are_ordered_and_scoped_to_one_tenant() {
        let p = |role| Principal {
            scope: Scope::Tenant {
                tenant: "a".into(),
                role,
            },
            via: Credential::Token(1),
        };
        assert!(p(Role::Read).may("a", Role::Read));
        assert!(!p(Role::Read).may("a", Role::Write));
        assert!(p(Role::Admin).may("a", Role::Write));
        assert!(!p(Role::Admin).may("b", Role::Read));
        assert!(!p(Role::Admin).is_cluster_admin());
        let admin = Principal {
            scope: Scope::Cluster,
            via: Credential::Member(2),
        };
        assert!(admin.may("b", Role::Admin) && admin.is_cluster_admin());
    }

    #[test]
    fn expiry_is_exclusive_of_the_instant() {
        let rec = Token::generate(&counting()).record(Scope::Cluster, 0, Some(10));
        assert!(!rec.expired(9));
        assert!(rec.expired(10));
        assert!(
            !Token::generate(&counting())
                .record(Scope::Cluster, 0, None)
                .expired(i64::MAX)
        );
    }
}
