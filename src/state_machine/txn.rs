//! One request's changes, buffered over the database and over the earlier requests of the same
//! entry (a [`Layer`]), so a refused request changes nothing and an entry's accepted requests
//! land in a single `WriteBatch` with the applied log id.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;

use rocksdb::{BoundColumnFamily, Direction, IteratorMode, ReadOptions, WriteBatch};

use super::keys;
use super::store::{MetaCache, Rocks, Store, rocks_err};
use crate::command::ApplyError;

/// An apply failure: deterministic (returned to the client, nothing written) or fatal (I/O or
/// corruption: the member stops rather than diverge).
#[derive(Debug)]
pub(crate) enum Fail {
    Refused(ApplyError),
    Fatal(io::Error),
}

impl<E: Into<ApplyError>> From<E> for Fail {
    fn from(e: E) -> Self {
        Fail::Refused(e.into())
    }
}

pub(crate) fn fatal(e: io::Error) -> Fail {
    Fail::Fatal(e)
}

/// Which column family a key belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Cf {
    Meta,
    Data,
}

type Overlay = BTreeMap<Vec<u8>, Option<Vec<u8>>>;
pub(crate) type Pair = (Vec<u8>, Vec<u8>);

/// The changes of the requests an entry accepted so far, not yet in the database: what the
/// entry's next request reads through, and what the entry finally writes.
#[derive(Debug, Default)]
pub(crate) struct Layer {
    meta: Overlay,
    /// By tenant column family name.
    data: BTreeMap<String, Overlay>,
    /// Bytes the absorbed requests buffered (their `Txn::written_bytes`): what the entry's
    /// later requests are charged on top of.
    written_bytes: u64,
}

impl Layer {
    /// Adds an accepted request's changes (they shadow earlier ones).
    pub fn absorb(&mut self, changes: Changes) {
        let Changes {
            meta,
            data,
            written_bytes,
        } = changes;
        self.written_bytes += written_bytes;
        self.meta.extend(meta);
        if let Some((name, overlay)) = data {
            self.data.entry(name).or_default().extend(overlay);
        }
    }

    /// Moves every change into `batch`. Returns the entry's meta changes, for
    /// [`MetaCache::learn`] once the batch is written.
    pub fn into_batch(self, store: &Store, batch: &mut WriteBatch) -> io::Result<Overlay> {
        let meta = store.meta()?;
        put_all(batch, &meta, &self.meta);
        for (name, overlay) in &self.data {
            let cf = store
                .cf(name)
                .ok_or_else(|| io::Error::other(format!("column family {name} is missing")))?;
            put_all(batch, &cf, overlay);
        }
        Ok(self.meta)
    }
}

fn put_all(batch: &mut WriteBatch, cf: &Arc<BoundColumnFamily<'_>>, overlay: &Overlay) {
    for (k, v) in overlay {
        match v {
            Some(v) => batch.put_cf(cf, k, v),
            None => batch.delete_cf(cf, k),
        }
    }
}

pub(crate) struct Txn<'a> {
    db: &'a Rocks,
    cache: &'a MetaCache,
    base: &'a Layer,
    meta_cf: Arc<BoundColumnFamily<'a>>,
    /// The bound tenant column family and its name.
    data_cf: Option<(String, Arc<BoundColumnFamily<'a>>)>,
    meta: Overlay,
    data: Overlay,
    /// Change in logical bytes (key + value) of the data column family.
    pub data_bytes: i64,
    /// Bytes this transaction has buffered (every put's key + value, every delete's key, over
    /// both column families): what bounds one entry's memory and batch size.
    pub written_bytes: u64,
    /// When set, the tenant and the most bytes this transaction and the entry's earlier
    /// requests may buffer together: a put or delete past it is refused (`RequestTooLarge`,
    /// or `EntryTooLarge` when the earlier requests' share made the difference) before
    /// anything more is buffered. One bound per entry, however many requests it carries.
    pub budget: Option<(String, u64)>,
}

/// One accepted request's changes, for [`Layer::absorb`].
pub(crate) struct Changes {
    meta: Overlay,
    data: Option<(String, Overlay)>,
    written_bytes: u64,
}

impl<'a> Txn<'a> {
    pub fn new(store: &'a Store, meta_cf: Arc<BoundColumnFamily<'a>>, base: &'a Layer) -> Self {
        Txn {
            db: store.db(),
            cache: &store.meta_cache,
            base,
            meta_cf,
            data_cf: None,
            meta: Overlay::new(),
            data: Overlay::new(),
            data_bytes: 0,
            written_bytes: 0,
            budget: None,
        }
    }

    /// Binds the tenant column family (named `name`) the data keys go to.
    pub fn bind(&mut self, name: String, cf: Arc<BoundColumnFamily<'a>>) {
        self.data_cf = Some((name, cf));
    }

    /// The column family, this request's changes to it, and the entry's earlier ones.
    fn parts(&self, which: Cf) -> (&Arc<BoundColumnFamily<'a>>, &Overlay, Option<&Overlay>) {
        match which {
            Cf::Meta => (&self.meta_cf, &self.meta, Some(&self.base.meta)),
            Cf::Data => {
                let (name, cf) = self
                    .data_cf
                    .as_ref()
                    .expect("data keys are used after bind");
                (cf, &self.data, self.base.data.get(name))
            }
        }
    }

    /// The value this request or the entry's earlier ones left under `key`, if they touched it.
    fn buffered(&self, which: Cf, key: &[u8]) -> Option<&Option<Vec<u8>>> {
        let (_, overlay, base) = self.parts(which);
        overlay.get(key).or_else(|| base.and_then(|b| b.get(key)))
    }

    pub fn get(&self, which: Cf, key: &[u8]) -> Result<Option<Vec<u8>>, Fail> {
        if let Some(v) = self.buffered(which, key) {
            return Ok(v.clone());
        }
        let (cf, _, _) = self.parts(which);
        if which == Cf::Meta
            && let Some(v) = self.cache.get(key)
        {
            debug_assert_eq!(
                v,
                self.db.get_cf(cf, key).ok().flatten(),
                "the meta cache disagrees with the database under {key:?}"
            );
            return Ok(v);
        }
        let v = self
            .db
            .get_cf(cf, key)
            .map_err(|e| fatal(rocks_err("read", e)))?;
        if which == Cf::Meta {
            // The database does not change before this entry's batch is written, and the cache
            // learns that batch's changes after it is.
            self.cache.learn([(key.to_vec(), v.clone())]);
        }
        Ok(v)
    }

    pub fn put(&mut self, which: Cf, key: &[u8], value: Vec<u8>) -> Result<(), Fail> {
        let old = match which {
            Cf::Data => self.get(which, key)?.map_or(0, |v| key.len() + v.len()),
            Cf::Meta => 0,
        };
        self.insert(which, key, value, old)
    }

    /// [`Txn::put`] of a key the database has never held (one made from an id just taken from
    /// a tenant's counters, which only grow): the old value, if any, can only be in this
    /// entry's changes, so the database is not read for it. Debug builds check that claim.
    pub fn put_new(&mut self, which: Cf, key: &[u8], value: Vec<u8>) -> Result<(), Fail> {
        let old = match self.buffered(which, key) {
            Some(v) => v.as_ref().map_or(0, |v| key.len() + v.len()),
            None => {
                debug_assert_eq!(
                    self.db.get_cf(self.parts(which).0, key).ok().flatten(),
                    None,
                    "put_new of a key the database holds: {key:?}"
                );
                0
            }
        };
        self.insert(which, key, value, old)
    }

    /// Buffers a put over a value of `old` bytes (key + value; 0 when absent).
    fn insert(&mut self, which: Cf, key: &[u8], value: Vec<u8>, old: usize) -> Result<(), Fail> {
        if which == Cf::Data {
            self.data_bytes += (key.len() + value.len()) as i64 - old as i64;
        }
        self.charge((key.len() + value.len()) as u64)?;
        self.overlay(which).insert(key.to_vec(), Some(value));
        Ok(())
    }

    pub fn delete(&mut self, which: Cf, key: &[u8]) -> Result<(), Fail> {
        if which == Cf::Data
            && let Some(v) = self.get(which, key)?
        {
            self.data_bytes -= (key.len() + v.len()) as i64;
        }
        self.charge(key.len() as u64)?;
        self.overlay(which).insert(key.to_vec(), None);
        Ok(())
    }

    fn charge(&mut self, bytes: u64) -> Result<(), Fail> {
        self.written_bytes += bytes;
        let earlier = self.base.written_bytes;
        match &self.budget {
            Some((tenant, limit)) if self.written_bytes > *limit => {
                Err(Fail::Refused(ApplyError::RequestTooLarge {
                    tenant: tenant.clone(),
                    written: self.written_bytes,
                    limit: *limit,
                }))
            }
            Some((tenant, limit)) if earlier.saturating_add(self.written_bytes) > *limit => {
                Err(Fail::Refused(ApplyError::EntryTooLarge {
                    tenant: tenant.clone(),
                    earlier,
                    written: self.written_bytes,
                    limit: *limit,
                }))
            }
            _ => Ok(()),
        }
    }

    fn overlay(&mut self, which: Cf) -> &mut Overlay {
        match which {
            Cf::Meta => &mut self.meta,
            Cf::Data => &mut self.data,
        }
    }

    /// Up to `limit` pairs whose keys start with `prefix`, in key order, as this transaction
    /// sees them (its own puts and deletes over the database).
    pub fn scan(&self, which: Cf, prefix: &[u8], limit: usize) -> Result<Vec<Pair>, Fail> {
        self.scan_from(which, prefix, prefix, limit)
    }

    /// [`Txn::scan`] from the first key at or after `from` (which starts with `prefix`). The
    /// iterator is positioned there directly, so deleted keys before it cost nothing, where a
    /// scan from `prefix` steps over every one RocksDB has not compacted away yet.
    pub fn scan_from(
        &self,
        which: Cf,
        prefix: &[u8],
        from: &[u8],
        limit: usize,
    ) -> Result<Vec<Pair>, Fail> {
        debug_assert!(from.starts_with(prefix), "{from:?} is outside {prefix:?}");
        let (cf, own, base) = self.parts(which);
        // This request's changes shadow the entry's earlier ones, which shadow the database.
        fn in_prefix<'o>(
            o: &'o Overlay,
            prefix: &'o [u8],
            from: &[u8],
        ) -> impl Iterator<Item = (&'o Vec<u8>, &'o Option<Vec<u8>>)> {
            o.range(from.to_vec()..)
                .take_while(move |(k, _)| k.starts_with(prefix))
        }
        let mut merged: BTreeMap<&Vec<u8>, &Option<Vec<u8>>> = BTreeMap::new();
        if let Some(b) = base {
            merged.extend(in_prefix(b, prefix, from));
        }
        merged.extend(in_prefix(own, prefix, from));
        let mut opts = ReadOptions::default();
        if let Some(end) = keys::prefix_end(prefix) {
            opts.set_iterate_upper_bound(end);
        }
        let mut db_iter =
            self.db
                .iterator_cf_opt(cf, opts, IteratorMode::From(from, Direction::Forward));
        let mut ov = merged.into_iter().peekable();
        let mut next_db = || -> Result<Option<Pair>, Fail> {
            match db_iter.next() {
                None => Ok(None),
                Some(Err(e)) => Err(fatal(rocks_err("scan", e))),
                Some(Ok((k, v))) => Ok(Some((k.into_vec(), v.into_vec()))),
            }
        };
        let mut db_head = next_db()?;
        let mut out = Vec::new();
        while out.len() < limit {
            let take_overlay = match (&db_head, ov.peek()) {
                (None, None) => break,
                (Some(_), None) => false,
                (None, Some(_)) => true,
                (Some((dk, _)), Some((ok, _))) => ok.as_slice() <= dk.as_slice(),
            };
            if take_overlay {
                let (k, v) = ov.next().expect("peeked");
                if db_head.as_ref().is_some_and(|(dk, _)| dk == k) {
                    db_head = next_db()?; // the overlay shadows this database key
                }
                if let Some(v) = v {
                    out.push((k.clone(), v.clone()));
                }
            } else {
                out.push(db_head.take().expect("checked"));
                db_head = next_db()?;
            }
        }
        Ok(out)
    }

    /// This request's changes, for [`Layer::absorb`]: the meta column family's, and the bound
    /// tenant's with its column family name.
    pub fn into_changes(self) -> Changes {
        Changes {
            data: self.data_cf.map(|(name, _)| (name, self.data)),
            meta: self.meta,
            written_bytes: self.written_bytes,
        }
    }
}
