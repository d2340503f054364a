//! Applying one client request: exactly-once sessions, then the command, all into one batch.

use std::io;

use serde::{Deserialize, Serialize};

use super::config::ApplyBugs;
use super::keys;
use super::ops::{Writer, corrupt, load, save};
use super::store::Store;
use super::txn::{Cf, Fail, Layer, Txn};
use crate::auth::{
    CLUSTER_TOKENS_RESERVED, Credential, Principal, Scope, TOKENS_MAX, TOKENS_PER_TENANT_MAX,
    TokenRecord, id_hex,
};
use crate::command::{
    ApplyError, ClusterLimits, Command, Fingerprint, Need, NewToken, Outcome, RESEALED_MAX,
    Request, Response, WriteRequest,
};
use crate::tenant::{
    Secret, TenantCounters, TenantInfo, TenantRecord, check_quotas, validate_tenant_id,
};

/// How long after an owner's latest session eviction (leader-stamped times) a resent first
/// request that finds no session is refused (see [`Request::resent`]). A first attempt older
/// than this, retried, finds its session unless it was evicted since, which would be more
/// recent: it bounds how long after its first attempt a client's retries are protected (the
/// Rust client gives up after its deadline, 30 s by default), leader clocks' skew included.
const RESENT_WINDOW_MICROS: i64 = 10 * 60 * 1_000_000;

/// Most sessions one entry evicts: lowering the per-principal session limits a long way
/// evicts over several entries instead of building one huge batch.
const EVICTIONS_PER_ENTRY_MAX: u64 = 1_000;

/// Cluster-wide counters and limits, at `keys::GLOBALS`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Globals {
    pub limits: ClusterLimits,
    pub tenants: u64,
    pub sessions: u64,
}

/// How many sessions an owner keeps and their bytes (keys and values), at
/// `keys::session_usage(owner)`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SessionUsage {
    pub count: u64,
    pub bytes: u64,
}

/// A client's last applied request and its response, at `keys::session(owner, client_id)`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(crate) struct Session {
    pub sequence: u64,
    pub last_index: u64,
    /// The request's [`Fingerprint`] (stamped by the leader): a repeat must be the same
    /// request. Another request under a used sequence is refused rather than answered with a
    /// response that belongs to something else.
    ///
    /// Encoded as one byte string (a plain array is 32 one-byte fields to encode and decode).
    #[serde(with = "serde_bytes")]
    pub fingerprint: Fingerprint,
    pub response: Response,
}

/// Column-family work an entry needs beyond its batch (see `Store::create_tenant_cf`).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) enum Ddl {
    #[default]
    None,
    Create(String),
    Drop(String),
}

fn fatal_of(f: Fail) -> io::Error {
    match f {
        Fail::Fatal(e) => e,
        Fail::Refused(e) => io::Error::other(format!("unexpected refusal reading state: {e}")),
    }
}

/// Applies `req` as part of entry `index`, over the changes of the entry's earlier requests
/// (`layer`), to which its own are added when accepted; column-family work goes into `ddl`.
/// Returns the response, or an error that must stop the member (I/O, corruption).
pub(crate) fn apply_request(
    store: &Store,
    index: u64,
    req: &Request,
    layer: &mut Layer,
    ddl: &mut Ddl,
    planted: ApplyBugs,
) -> io::Result<Response> {
    let base: &Layer = layer;
    let refuse = |e: ApplyError| Ok(Response { outcome: Err(e) });
    let session_key = keys::session(req.owner, req.client_id);
    let (session, session_bytes): (Option<Session>, u64) = {
        let txn = Txn::new(store, store.meta()?, base);
        // A request whose token was revoked, has expired or does not allow it is refused
        // before its session is read: it learns nothing of it and records none.
        if let Err(e) = authorize(&txn, req).map_err(fatal_of)? {
            return refuse(e);
        }
        match txn.get(Cf::Meta, &session_key).map_err(fatal_of)? {
            None => (None, 0),
            Some(b) => {
                let s = crate::codec::decode(&b)
                    .map_err(|e| fatal_of(corrupt(format_args!("session {session_key:?}: {e}"))))?;
                (Some(s), (session_key.len() + b.len()) as u64)
            }
        }
    };
    let sequence = req.seq();
    if sequence == 0 {
        return refuse(ApplyError::InvalidArgument {
            field: "sequence".into(),
            reason: format!("client {}: sequence 0; sequences start at 1", req.client_id),
        });
    }
    let expired = |last| ApplyError::SessionExpired {
        client_id: req.client_id,
        sequence,
        last,
    };
    let fingerprint = req.fingerprint;
    match &session {
        Some(s) if sequence == s.sequence && s.fingerprint != fingerprint => {
            return refuse(ApplyError::SequenceReused {
                client_id: req.client_id,
                sequence,
            });
        }
        Some(s) if sequence == s.sequence && !planted.skip_session_dedup => {
            return Ok(s.response.clone());
        }
        Some(s) if sequence == s.sequence => {}
        Some(s) if sequence < s.sequence => return refuse(expired(Some(s.sequence))),
        None if sequence > 1 => return refuse(expired(None)),
        // A resent first request without a session: its first attempt may have applied and
        // the session been evicted since, if its owner had a session evicted within
        // `RESENT_WINDOW_MICROS` of it. Applying it again could apply it twice; refused, the
        // client reports an unknown outcome.
        None if req.resent() => {
            let txn = Txn::new(store, store.meta()?, base);
            let last = count(&txn, &keys::evicted(req.owner)).map_err(fatal_of)?;
            if last > 0 && req.timestamp_micros.saturating_sub(last as i64) <= RESENT_WINDOW_MICROS
            {
                return refuse(expired(None));
            }
        }
        _ => {}
    }

    let mut txn = Txn::new(store, store.meta()?, base);
    // `execute` changes `globals` in memory only; `before` is what is stored.
    let before = load_globals(&txn).map_err(fatal_of)?;
    let mut globals = before.clone();
    let outcome = match execute(store, &mut txn, index, req, &mut globals, ddl, planted) {
        Ok(o) => Ok(o),
        Err(Fail::Fatal(e)) => return Err(e),
        Err(Fail::Refused(e @ ApplyError::TenantNotFound { .. }))
            if matches!(req.command, Command::Write(_)) =>
        {
            // Refused before it reached a tenant: no session either, so writes to tenants
            // that do not exist cannot fill the session table.
            return refuse(e);
        }
        Err(Fail::Refused(e)) => {
            // Nothing of a refused request is applied: start over from the database.
            txn = Txn::new(store, store.meta()?, base);
            globals = before.clone();
            *ddl = Ddl::None;
            Err(e)
        }
    };
    let response = Response { outcome };
    let new = Session {
        sequence,
        last_index: index,
        fingerprint,
        response: response.clone(),
    };
    let previous_bytes = session.is_some().then_some(session_bytes);
    record_session(&mut txn, &mut globals, req, new, previous_bytes).map_err(fatal_of)?;
    if globals != before {
        save(&mut txn, Cf::Meta, keys::GLOBALS, &globals).map_err(fatal_of)?;
    }
    let changes = txn.into_changes();
    layer.absorb(changes);
    Ok(response)
}

pub(crate) fn load_globals(txn: &Txn) -> Result<Globals, Fail> {
    Ok(load(txn, Cf::Meta, keys::GLOBALS)?.unwrap_or_default())
}

/// Checks a token-owned request again, against the replicated token records: the token must
/// still exist (revocation applies on every member at the same entry), be unexpired at the
/// request's leader-stamped time, and allow the command. Member and open requests were
/// checked by the member that made them.
fn authorize(txn: &Txn, req: &Request) -> Result<Result<(), ApplyError>, Fail> {
    let Credential::Token(id) = req.owner else {
        return Ok(Ok(()));
    };
    let token = || format!("token {}", id_hex(id));
    let Some(record) = load::<TokenRecord>(txn, Cf::Meta, &keys::token(id))? else {
        return Ok(Err(ApplyError::Unauthenticated {
            reason: format!("{} was revoked before the request applied", token()),
        }));
    };
    if record.expired(req.timestamp_micros) {
        return Ok(Err(ApplyError::Unauthenticated {
            reason: format!("{} expired before the request applied", token()),
        }));
    }
    let principal = Principal {
        scope: record.scope,
        via: req.owner,
    };
    let allowed = match req.command.needs() {
        Need::Cluster => principal.is_cluster_admin(),
        Need::Tenant(tenant, role) => principal.may(tenant, role),
    };
    Ok(if allowed {
        Ok(())
    } else {
        Err(ApplyError::PermissionDenied {
            reason: format!("{principal} may not {}", req.command.needs()),
        })
    })
}

/// Stores the session in its owner's space and meters it; past the owner's limits
/// (`sessions_per_principal_max`, `session_bytes_per_principal_max`) evicts that owner's least
/// recently written sessions, never another owner's. `previous_bytes`: the stored bytes of the
/// session this one replaces, if any.
///
/// The eviction index is written lazily: a session gets its key `(owner, last_index, client)`
/// when it is created, and a later write of the same client leaves that key behind (one
/// memtable insert per write instead of a delete and an insert). So each session has one key,
/// whose index is at most the session's `last_index`. Eviction takes the owner's oldest keys: a
/// key whose index is its session's `last_index` goes with its session, a stale one is re-filed
/// under the session's `last_index`, and that repeats until the owner is within its limits. The
/// sessions evicted are exactly the owner's least recently written (ties broken by client id):
/// a session whose key is exact at `k` has every session last written before `k` among the
/// keys before its own.
fn record_session(
    txn: &mut Txn,
    globals: &mut Globals,
    req: &Request,
    session: Session,
    previous_bytes: Option<u64>,
) -> Result<(), Fail> {
    let owner = req.owner;
    let usage_key = keys::session_usage(owner);
    let stored_usage: SessionUsage = load(txn, Cf::Meta, &usage_key)?.unwrap_or_default();
    let mut usage = stored_usage.clone();
    let key = keys::session(owner, req.client_id);
    match previous_bytes {
        None => {
            globals.sessions += 1;
            usage.count += 1;
            let first = keys::eviction(owner, session.last_index, req.client_id);
            txn.put(Cf::Meta, &first, Vec::new())?;
        }
        Some(bytes) => usage.bytes = usage.bytes.saturating_sub(bytes),
    }
    let bytes = crate::codec::encode(&session).map_err(|e| corrupt(format_args!("encode: {e}")))?;
    usage.bytes += (key.len() + bytes.len()) as u64;
    txn.put(Cf::Meta, &key, bytes)?;

    let limits = &globals.limits;
    let over = |u: &SessionUsage| {
        u.count > limits.sessions_per_principal_max
            || u.bytes > limits.session_bytes_per_principal_max
    };
    // Keys visited, re-filed ones included, bound one entry's work; what is left over is
    // evicted by the owner's next entries.
    let mut evicted = 0;
    let mut steps = 2 * EVICTIONS_PER_ENTRY_MAX;
    let prefix = keys::eviction_prefix(owner);
    // Eviction deletes from the head of the owner's keys, so its deleted keys pile up there
    // until RocksDB compacts them; a scan from the prefix would step over every one, each time.
    // Scans start at the floor instead: every key below it is gone (see `keys`).
    let floor_key = keys::eviction_floor(owner);
    let (stored_floor, mut floor) = if over(&usage) {
        let f = count(txn, &floor_key)?;
        (f, f)
    } else {
        (0, 0)
    };
    'evict: while over(&usage) && evicted < EVICTIONS_PER_ENTRY_MAX && steps > 0 {
        // As many keys as the count is over by (usually one), at least one: a scan reads
        // every key it returns.
        let need = usage
            .count
            .saturating_sub(limits.sessions_per_principal_max)
            .max(1);
        let batch = need.min(EVICTIONS_PER_ENTRY_MAX - evicted).min(steps) as usize;
        let from = keys::eviction(owner, floor, 0);
        let oldest = txn.scan_from(Cf::Meta, &prefix, &from, batch)?;
        let Some(last) = oldest.last().map(|(k, _)| k.clone()) else {
            break;
        };
        for (k, _) in oldest {
            let (index, client) = keys::eviction_parts(&k)
                .ok_or_else(|| corrupt(format_args!("eviction key {k:?}")))?;
            if client == req.client_id && index == session.last_index {
                // The session just written is the owner's newest: nothing older is left.
                break 'evict;
            }
            steps -= 1;
            let session_key = keys::session(owner, client);
            let stored = txn.get(Cf::Meta, &session_key)?.ok_or_else(|| {
                corrupt(format_args!(
                    "eviction key {k:?}: client {client} has no session"
                ))
            })?;
            let s: Session = crate::codec::decode(&stored)
                .map_err(|e| corrupt(format_args!("session {session_key:?}: {e}")))?;
            txn.delete(Cf::Meta, &k)?;
            // The head key went: every key left has at least its index (new keys get the
            // index of the entry that writes them, re-filed ones a later one).
            floor = index;
            if s.last_index == index {
                txn.delete(Cf::Meta, &session_key)?;
                globals.sessions -= 1;
                usage.count -= 1;
                usage.bytes = usage
                    .bytes
                    .saturating_sub((session_key.len() + stored.len()) as u64);
                evicted += 1;
                if !over(&usage) {
                    break 'evict;
                }
            } else if s.last_index > index {
                let refiled = keys::eviction(owner, s.last_index, client);
                txn.put(Cf::Meta, &refiled, Vec::new())?;
                if refiled.as_slice() < last.as_slice() {
                    // It sorts before the rest of this scan: look again.
                    continue 'evict;
                }
            } else {
                return Err(corrupt(format_args!(
                    "eviction key {k:?} is ahead of client {client}'s last write {}",
                    s.last_index
                )));
            }
            if steps == 0 {
                break 'evict;
            }
        }
    }
    if usage != stored_usage {
        save(txn, Cf::Meta, &usage_key, &usage)?;
    }
    if floor > stored_floor {
        set_count(txn, &floor_key, floor)?;
    }
    if evicted > 0 {
        let key = keys::evicted(owner);
        let before = count(txn, &key)?;
        set_count(txn, &key, before.max(req.timestamp_micros.max(1) as u64))?;
    }
    purge_dead(txn, globals)
}

/// Sessions of owners whose token is gone that one request purges, at most.
const DEAD_PURGE_PER_REQUEST: usize = 32;

/// Purges a few sessions of the first owner whose token was revoked (or whose tenant was
/// deleted): no request of that owner can apply again, so its sessions would otherwise stay
/// forever. When none is left, its usage record and marker go too.
fn purge_dead(txn: &mut Txn, globals: &mut Globals) -> Result<(), Fail> {
    // Read through the meta cache: no scan on the write path while no owner is marked.
    let dead = count(txn, keys::DEAD_OWNER_COUNT)?;
    if dead == 0 {
        return Ok(());
    }
    let Some((marker, _)) = txn
        .scan(Cf::Meta, &[keys::DEAD_OWNER], 1)?
        .into_iter()
        .next()
    else {
        return Ok(());
    };
    let owner = keys::owner_of(&marker)
        .ok_or_else(|| corrupt(format_args!("dead owner key {marker:?}")))?;
    // From the floor, as eviction scans (see `record_session`): the purge deletes from the head.
    let floor_key = keys::eviction_floor(owner);
    let floor = count(txn, &floor_key)?;
    let batch = txn.scan_from(
        Cf::Meta,
        &keys::eviction_prefix(owner),
        &keys::eviction(owner, floor, 0),
        DEAD_PURGE_PER_REQUEST,
    )?;
    let mut new_floor = floor;
    for (k, _) in &batch {
        let (index, client) =
            keys::eviction_parts(k).ok_or_else(|| corrupt(format_args!("eviction key {k:?}")))?;
        txn.delete(Cf::Meta, k)?;
        new_floor = index;
        let session = keys::session(owner, client);
        if txn.get(Cf::Meta, &session)?.is_some() {
            txn.delete(Cf::Meta, &session)?;
            globals.sessions = globals.sessions.saturating_sub(1);
        }
    }
    if batch.len() < DEAD_PURGE_PER_REQUEST {
        txn.delete(Cf::Meta, &marker)?;
        txn.delete(Cf::Meta, &keys::session_usage(owner))?;
        txn.delete(Cf::Meta, &keys::evicted(owner))?;
        txn.delete(Cf::Meta, &floor_key)?;
        set_count(txn, keys::DEAD_OWNER_COUNT, dead - 1)?;
    } else if new_floor > floor {
        set_count(txn, &floor_key, new_floor)?;
    }
    Ok(())
}

fn execute<'s>(
    store: &'s Store,
    txn: &mut Txn<'s>,
    index: u64,
    req: &Request,
    globals: &mut Globals,
    ddl: &mut Ddl,
    planted: ApplyBugs,
) -> Result<Outcome, Fail> {
    let now = req.timestamp_micros;
    match &req.command {
        Command::Write(w) => write(store, txn, index, w, &globals.limits, planted),
        Command::CreateTenant {
            tenant,
            quotas,
            config,
        } => {
            validate_tenant_id(tenant)?;
            config.validate(tenant)?;
            if load::<TenantRecord>(txn, Cf::Meta, &keys::tenant_record(tenant))?.is_some() {
                return Err(ApplyError::TenantExists {
                    tenant: tenant.clone(),
                }
                .into());
            }
            if globals.tenants >= globals.limits.tenants_max {
                return Err(ApplyError::TooManyTenants {
                    tenant: tenant.clone(),
                    count: globals.tenants,
                    limit: globals.limits.tenants_max,
                }
                .into());
            }
            let rec = TenantRecord {
                id: tenant.clone(),
                quotas: quotas.clone(),
                config: config.clone(),
                enabled: true,
                created_micros: now,
                updated_micros: now,
            };
            let counters = TenantCounters::new();
            save(txn, Cf::Meta, &keys::tenant_record(tenant), &rec)?;
            save(txn, Cf::Meta, &keys::tenant_counters(tenant), &counters)?;
            globals.tenants += 1;
            *ddl = Ddl::Create(tenant.clone());
            Ok(Outcome::Tenant(Box::new(rec.info(&counters))))
        }
        Command::UpdateQuotas { tenant, quotas } => {
            update_tenant(txn, tenant, now, |r| r.quotas = quotas.clone())
        }
        Command::SetRateLimits { tenant, limits } => {
            limits
                .validate()
                .map_err(|(field, reason)| invalid_field(field, reason))?;
            let info = changed_tenant(txn, tenant, now, |_| {})?;
            let key = keys::tenant_rate_limits(tenant);
            if limits.is_unlimited() {
                txn.delete(Cf::Meta, &key)?;
            } else {
                save(txn, Cf::Meta, &key, limits)?;
            }
            Ok(Outcome::RateLimits(info, *limits))
        }
        Command::SetTenantEnabled { tenant, enabled } => {
            update_tenant(txn, tenant, now, |r| r.enabled = *enabled)
        }
        Command::SetTenantConfig { tenant, config } => {
            config.validate(tenant)?;
            update_tenant(txn, tenant, now, |r| r.config = config.clone())
        }
        Command::ResealSecrets { tenant, secrets } => {
            if secrets.len() > RESEALED_MAX {
                return Err(invalid_field(
                    "secrets",
                    format!("{} secrets, at most {RESEALED_MAX}", secrets.len()),
                )
                .into());
            }
            let mut rec = tenant_record(txn, tenant)?;
            let mut replaced = 0;
            for (field, slot) in rec.config.secrets_mut() {
                let found = secrets.iter().find(|r| {
                    r.field == field && matches!(&*slot, Secret::Sealed(s) if *s == r.old)
                });
                if let Some(r) = found {
                    *slot = Secret::Sealed(r.new.clone());
                    replaced += 1;
                }
            }
            // The new ciphertexts are checked like any stored config.
            rec.config.validate(tenant)?;
            if replaced > 0 {
                rec.updated_micros = now;
                save(txn, Cf::Meta, &keys::tenant_record(tenant), &rec)?;
            }
            Ok(Outcome::Resealed(replaced))
        }
        Command::DeleteTenant { tenant } => {
            tenant_record(txn, tenant)?;
            txn.delete(Cf::Meta, &keys::tenant_record(tenant))?;
            txn.delete(Cf::Meta, &keys::tenant_counters(tenant))?;
            txn.delete(Cf::Meta, &keys::tenant_rate_limits(tenant))?;
            // A tenant created later under the same id must not be open to these tokens.
            revoke_tokens_of(txn, tenant)?;
            globals.tenants -= 1;
            *ddl = Ddl::Drop(tenant.clone());
            Ok(Outcome::Deleted)
        }
        Command::SetLimits(limits) => {
            validate_limits(limits)?;
            globals.limits = limits.clone();
            Ok(Outcome::Limits(limits.clone()))
        }
        Command::UpdateLimits(changes) => {
            let limits = changes.applied_to(globals.limits.clone());
            validate_limits(&limits)?;
            globals.limits = limits.clone();
            Ok(Outcome::Limits(limits))
        }
        Command::CreateToken(t) => create_token(txn, t, now),
        Command::RevokeToken { id, tenant } => {
            let rec: Option<TokenRecord> = load(txn, Cf::Meta, &keys::token(*id))?;
            match rec {
                Some(r) if tenant.is_none() || r.scope.tenant() == tenant.as_deref() => {
                    txn.delete(Cf::Meta, &keys::token(*id))?;
                    mark_dead(txn, *id)?;
                    let tokens = count(txn, keys::TOKEN_COUNT)?;
                    set_count(txn, keys::TOKEN_COUNT, tokens.saturating_sub(1))?;
                    Ok(Outcome::Deleted)
                }
                // Another tenant's token answers as a missing one: no oracle.
                _ => Err(ApplyError::TokenNotFound { id: *id }.into()),
            }
        }
    }
}

/// A counter stored as u64 BE under `key` (0 when absent).
fn count(txn: &Txn, key: &[u8]) -> Result<u64, Fail> {
    match txn.get(Cf::Meta, key)? {
        None => Ok(0),
        Some(b) => {
            keys::u64_value(&b).ok_or_else(|| corrupt(format_args!("counter {key:?}: {b:?}")))
        }
    }
}

fn set_count(txn: &mut Txn, key: &[u8], n: u64) -> Result<(), Fail> {
    txn.put(Cf::Meta, key, n.to_be_bytes().to_vec())
}

/// Marks token `id`'s sessions for purging (see [`purge_dead`]).
fn mark_dead(txn: &mut Txn, id: u64) -> Result<(), Fail> {
    let marker = keys::dead_owner(Credential::Token(id));
    if txn.get(Cf::Meta, &marker)?.is_none() {
        txn.put(Cf::Meta, &marker, Vec::new())?;
        let n = count(txn, keys::DEAD_OWNER_COUNT)?;
        set_count(txn, keys::DEAD_OWNER_COUNT, n + 1)?;
    }
    Ok(())
}

fn create_token(txn: &mut Txn, t: &NewToken, now: i64) -> Result<Outcome, Fail> {
    t.scope.validate()?;
    if t.id == 0 {
        return Err(invalid_field("token.id", "0 is not a token id").into());
    }
    if t.last4.len() != 4 || !t.last4.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(invalid_field("token.last4", "not four hex digits").into());
    }
    if let Some(e) = t.expires_micros
        && e <= now
    {
        return Err(invalid_field(
            "token.expires",
            format!("{e} µs is not after the creation time {now} µs"),
        )
        .into());
    }
    if let Scope::Tenant { tenant, .. } = &t.scope {
        tenant_record(txn, tenant.as_str())?;
    }
    if load::<TokenRecord>(txn, Cf::Meta, &keys::token(t.id))?.is_some() {
        return Err(ApplyError::TokenExists { id: t.id }.into());
    }
    let tokens = count(txn, keys::TOKEN_COUNT)?;
    let full = |scope: String, limit| Err(ApplyError::TooManyTokens { scope, limit }.into());
    match &t.scope {
        Scope::Cluster if tokens >= TOKENS_MAX => return full("the cluster".into(), TOKENS_MAX),
        Scope::Cluster => {}
        Scope::Tenant { tenant, .. } => {
            let tenants_max = TOKENS_MAX - CLUSTER_TOKENS_RESERVED;
            if tokens >= tenants_max {
                return full("the cluster's tenants together".into(), tenants_max);
            }
            if tokens_of(txn, tenant)?.len() as u64 >= TOKENS_PER_TENANT_MAX {
                return full(format!("tenant {tenant}"), TOKENS_PER_TENANT_MAX);
            }
        }
    }
    let rec = TokenRecord {
        id: t.id,
        scope: t.scope.clone(),
        hash: t.hash,
        created_micros: now,
        expires_micros: t.expires_micros,
        last4: t.last4.clone(),
    };
    save(txn, Cf::Meta, &keys::token(t.id), &rec)?;
    set_count(txn, keys::TOKEN_COUNT, tokens + 1)?;
    Ok(Outcome::Token(rec.info()))
}

/// The keys of `tenant`'s tokens (at most [`TOKENS_MAX`] records are read).
fn tokens_of(txn: &Txn, tenant: &str) -> Result<Vec<Vec<u8>>, Fail> {
    let mut keys = Vec::new();
    for (k, v) in txn.scan(Cf::Meta, &[keys::TOKEN], TOKENS_MAX as usize)? {
        let rec: TokenRecord = crate::codec::decode(&v)
            .map_err(|e| corrupt(format_args!("token record under {k:?}: {e}")))?;
        if rec.scope.tenant() == Some(tenant) {
            keys.push(k);
        }
    }
    Ok(keys)
}

/// Deletes every token of `tenant`.
fn revoke_tokens_of(txn: &mut Txn, tenant: &str) -> Result<(), Fail> {
    let keys = tokens_of(txn, tenant)?;
    let revoked = keys.len() as u64;
    for k in keys {
        txn.delete(Cf::Meta, &k)?;
        let id = keys::u64_value(k.get(1..).unwrap_or_default())
            .ok_or_else(|| corrupt(format_args!("token key {k:?}")))?;
        mark_dead(txn, id)?;
    }
    if revoked > 0 {
        let tokens = count(txn, keys::TOKEN_COUNT)?;
        set_count(txn, keys::TOKEN_COUNT, tokens.saturating_sub(revoked))?;
    }
    Ok(())
}

fn invalid_field(field: &str, reason: impl Into<String>) -> ApplyError {
    ApplyError::InvalidArgument {
        field: field.into(),
        reason: reason.into(),
    }
}

fn validate_limits(l: &ClusterLimits) -> Result<(), ApplyError> {
    let checks = [
        ("tenants_max", l.tenants_max, 1, 100_000),
        (
            "sessions_per_principal_max",
            l.sessions_per_principal_max,
            1,
            10_000_000,
        ),
        (
            "session_bytes_per_principal_max",
            l.session_bytes_per_principal_max,
            64 << 10,
            1 << 40,
        ),
        ("cascade_edges_max", l.cascade_edges_max, 1, 10_000_000),
        (
            "entry_write_bytes_max",
            l.entry_write_bytes_max,
            1 << 20,
            1 << 30,
        ),
    ];
    for (field, v, lo, hi) in checks {
        if !(lo..=hi).contains(&v) {
            return Err(ApplyError::InvalidArgument {
                field: field.into(),
                reason: format!("{v} outside {lo}..={hi}"),
            });
        }
    }
    Ok(())
}

fn tenant_record(txn: &Txn, tenant: &str) -> Result<TenantRecord, Fail> {
    validate_tenant_id(tenant)?;
    load(txn, Cf::Meta, &keys::tenant_record(tenant))?.ok_or_else(|| {
        Fail::Refused(ApplyError::TenantNotFound {
            tenant: tenant.to_string(),
        })
    })
}

fn tenant_counters(txn: &Txn, tenant: &str) -> Result<TenantCounters, Fail> {
    load(txn, Cf::Meta, &keys::tenant_counters(tenant))?
        .ok_or_else(|| corrupt(format_args!("tenant {tenant}: counters missing")))
}

fn update_tenant(
    txn: &mut Txn,
    tenant: &str,
    now: i64,
    change: impl FnOnce(&mut TenantRecord),
) -> Result<Outcome, Fail> {
    changed_tenant(txn, tenant, now, change).map(Outcome::Tenant)
}

/// `tenant`'s record changed by `change`, its update time stamped, saved: what it shows now.
fn changed_tenant(
    txn: &mut Txn,
    tenant: &str,
    now: i64,
    change: impl FnOnce(&mut TenantRecord),
) -> Result<Box<TenantInfo>, Fail> {
    let mut rec = tenant_record(txn, tenant)?;
    change(&mut rec);
    rec.updated_micros = now;
    save(txn, Cf::Meta, &keys::tenant_record(tenant), &rec)?;
    let counters = tenant_counters(txn, tenant)?;
    Ok(Box::new(rec.info(&counters)))
}

fn write<'s>(
    store: &'s Store,
    txn: &mut Txn<'s>,
    index: u64,
    w: &WriteRequest,
    limits: &ClusterLimits,
    planted: ApplyBugs,
) -> Result<Outcome, Fail> {
    w.validate()?;
    let rec = tenant_record(txn, &w.tenant)?;
    if !rec.enabled {
        return Err(ApplyError::TenantDisabled {
            tenant: w.tenant.clone(),
        }
        .into());
    }
    let before = tenant_counters(txn, &w.tenant)?;
    let cf_name = keys::tenant_cf(&w.tenant);
    let cf = store
        .cf(&cf_name)
        .ok_or_else(|| corrupt(format_args!("tenant {}: column family missing", w.tenant)))?;
    txn.bind(cf_name, cf);
    txn.budget = Some((w.tenant.clone(), limits.entry_write_bytes_max));
    let mut writer = Writer::new(txn, &w.tenant, index, before.clone(), limits);
    let results = writer.run(w)?;
    let mut after = writer.counters;
    let bytes = i128::from(before.usage.storage_bytes) + i128::from(txn.data_bytes);
    after.usage.storage_bytes = u64::try_from(bytes)
        .map_err(|_| corrupt(format_args!("tenant {}: storage bytes {bytes}", w.tenant)))?;
    let mut quotas = rec.quotas;
    if planted.quota_off_by_one {
        quotas.max_nodes = quotas.max_nodes.map(|n| n + 1);
    }
    check_quotas(&w.tenant, &quotas, &before.usage, &after.usage)?;
    save(txn, Cf::Meta, &keys::tenant_counters(&w.tenant), &after)?;
    // The session record that follows is not the request's to pay for (and must not fail).
    txn.budget = None;
    Ok(Outcome::Write(results))
}
