//! The snapshot stream: the logical content of a checkpoint, the same bytes on every replica.
//!
//! Raw SST files differ between replicas with compaction timing, so what travels (and what a
//! replica keeps as its current snapshot) is this stream, read from a checkpoint in key order.
//!
//! ```text
//! header  "RGSNAP\0\0" (8 bytes) | version: u32 LE (= 1)
//! frame   len: u32 LE (payload bytes, <= FRAME_BYTES_MAX) | crc32c(kind ++ payload): u32 LE
//!         | kind: u8 | payload
//! kinds   1 Meta   codec(SnapshotMeta): exactly once, first
//!         2 Cf     column-family name (UTF-8); names strictly increasing, the first is `meta`
//!         3 Pairs  repeated { klen: u32 LE | key | vlen: u32 LE | value }, keys strictly
//!                  increasing within their column family
//!         4 End    pairs: u64 LE | digest: 32 bytes; exactly once, last; then end of file
//! ```
//! The digest is BLAKE3 over every column family and pair as [`StateHasher`] feeds them: the
//! same function the live-state digest uses, so a snapshot's digest equals the state digest of
//! any replica at that applied index.

use std::io::{self, Read, Write};

use super::keys;

pub const MAGIC: &[u8; 8] = b"RGSNAP\0\0";
pub const VERSION: u32 = 1;
/// Largest frame payload accepted; one pair (bounded by `RECORD_BYTES_MAX` and key sizes) always
/// fits.
pub const FRAME_BYTES_MAX: usize = 16 << 20;
/// A `Pairs` frame is closed once it passes this many bytes.
const PAIRS_FRAME_BYTES: usize = 1 << 20;

const KIND_META: u8 = 1;
const KIND_CF: u8 = 2;
const KIND_PAIRS: u8 = 3;
const KIND_END: u8 = 4;

/// BLAKE3 over column families and their pairs, length-prefixed so no two states collide by
/// concatenation.
pub struct StateHasher {
    hasher: blake3::Hasher,
    pairs: u64,
}

impl Default for StateHasher {
    fn default() -> Self {
        StateHasher {
            hasher: blake3::Hasher::new(),
            pairs: 0,
        }
    }
}

impl StateHasher {
    pub fn cf(&mut self, name: &str) {
        self.hasher.update(b"cf");
        self.bytes(name.as_bytes());
    }

    pub fn pair(&mut self, key: &[u8], value: &[u8]) {
        self.bytes(key);
        self.bytes(value);
        self.pairs += 1;
    }

    fn bytes(&mut self, b: &[u8]) {
        self.hasher.update(&(b.len() as u64).to_le_bytes());
        self.hasher.update(b);
    }

    pub fn finish(&self) -> (u64, [u8; 32]) {
        (self.pairs, *self.hasher.finalize().as_bytes())
    }
}

/// Writes a stream; `finish` must be called last.
pub struct StreamWriter<W: Write> {
    out: W,
    hasher: StateHasher,
    buf: Vec<u8>,
}

impl<W: Write> StreamWriter<W> {
    pub fn new(mut out: W, meta: &[u8]) -> io::Result<Self> {
        out.write_all(MAGIC)?;
        out.write_all(&VERSION.to_le_bytes())?;
        let mut w = StreamWriter {
            out,
            hasher: StateHasher::default(),
            buf: Vec::with_capacity(PAIRS_FRAME_BYTES + 4096),
        };
        w.frame(KIND_META, meta)?;
        Ok(w)
    }

    fn frame(&mut self, kind: u8, payload: &[u8]) -> io::Result<()> {
        if payload.len() > FRAME_BYTES_MAX {
            return Err(io::Error::other(format!(
                "snapshot frame of {} bytes exceeds {FRAME_BYTES_MAX}",
                payload.len()
            )));
        }
        let crc = crc32c::crc32c_append(crc32c::crc32c(&[kind]), payload);
        self.out.write_all(&(payload.len() as u32).to_le_bytes())?;
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.write_all(&[kind])?;
        self.out.write_all(payload)
    }

    fn flush_pairs(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            let buf = std::mem::take(&mut self.buf);
            self.frame(KIND_PAIRS, &buf)?;
            self.buf = buf;
            self.buf.clear();
        }
        Ok(())
    }

    pub fn cf(&mut self, name: &str) -> io::Result<()> {
        self.flush_pairs()?;
        self.hasher.cf(name);
        self.frame(KIND_CF, name.as_bytes())
    }

    pub fn pair(&mut self, key: &[u8], value: &[u8]) -> io::Result<()> {
        if !self.buf.is_empty() && self.buf.len() + key.len() + value.len() + 8 > PAIRS_FRAME_BYTES
        {
            self.flush_pairs()?;
        }
        self.hasher.pair(key, value);
        self.buf
            .extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(key);
        self.buf
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(value);
        Ok(())
    }

    /// Writes the end frame; returns the writer and the digest.
    pub fn finish(mut self) -> io::Result<(W, [u8; 32])> {
        self.flush_pairs()?;
        let (pairs, digest) = self.hasher.finish();
        let mut end = pairs.to_le_bytes().to_vec();
        end.extend_from_slice(&digest);
        self.frame(KIND_END, &end)?;
        self.out.flush()?;
        Ok((self.out, digest))
    }
}

/// Receives a stream's content as it is verified.
pub trait StreamSink {
    fn cf(&mut self, name: &str) -> io::Result<()>;
    fn pair(&mut self, key: &[u8], value: &[u8]) -> io::Result<()>;
}

/// Reads and verifies a whole stream, feeding `sink`. Returns the encoded meta and the digest.
/// Every length is checked before anything is allocated for it.
pub fn read_stream<R: Read>(r: R, sink: &mut dyn StreamSink) -> io::Result<(Vec<u8>, [u8; 32])> {
    let mut rd = Reader {
        r,
        offset: 0,
        buf: Vec::new(),
    };
    let mut header = [0u8; 12];
    rd.exact(&mut header)?;
    if &header[..8] != MAGIC {
        return Err(rd.bad("not a snapshot stream (bad magic)"));
    }
    let version = u32::from_le_bytes(header[8..].try_into().expect("4 bytes"));
    if version != VERSION {
        return Err(rd.bad(&format!("unknown stream version {version}")));
    }
    let Some(KIND_META) = rd.frame()? else {
        return Err(rd.bad("first frame is not the meta frame"));
    };
    let meta = rd.buf.clone();
    let mut hasher = StateHasher::default();
    let mut last_cf: Option<String> = None;
    let mut last_key: Option<Vec<u8>> = None;
    loop {
        match rd.frame()? {
            Some(KIND_CF) => {
                let name = std::str::from_utf8(&rd.buf)
                    .map_err(|_| rd.bad("column-family name is not UTF-8"))?
                    .to_string();
                check_cf_name(&name, last_cf.as_deref()).map_err(|m| rd.bad(&m))?;
                hasher.cf(&name);
                sink.cf(&name)?;
                last_cf = Some(name);
                last_key = None;
            }
            Some(KIND_PAIRS) if last_cf.is_some() => {
                let buf = std::mem::take(&mut rd.buf);
                let res = pairs(&buf, &mut last_key, &mut hasher, sink);
                rd.buf = buf;
                res.map_err(|m| rd.bad(&m))?;
            }
            Some(KIND_END) => {
                if rd.buf.len() != 40 {
                    return Err(rd.bad("end frame is not 40 bytes"));
                }
                let count = u64::from_le_bytes(rd.buf[..8].try_into().expect("8 bytes"));
                let (pairs, digest) = hasher.finish();
                if count != pairs || rd.buf[8..] != digest {
                    return Err(rd.bad("content does not match the end frame's count and digest"));
                }
                let mut extra = [0u8; 1];
                if rd.r.read(&mut extra)? != 0 {
                    return Err(rd.bad("bytes after the end frame"));
                }
                return Ok((meta, digest));
            }
            Some(kind) => return Err(rd.bad(&format!("unexpected frame kind {kind}"))),
            None => return Err(rd.bad("stream ends before its end frame")),
        }
    }
}

fn check_cf_name(name: &str, last: Option<&str>) -> Result<(), String> {
    match last {
        None if name != keys::META_CF => Err(format!("first column family is {name:?}, not meta")),
        Some(l) if name <= l => Err(format!("column family {name:?} out of order after {l:?}")),
        _ if name == keys::META_CF => Ok(()),
        _ => match keys::tenant_of_cf(name) {
            Some(t) if crate::tenant::validate_tenant_id(t).is_ok() => Ok(()),
            _ => Err(format!("invalid column-family name {name:?}")),
        },
    }
}

fn pairs(
    mut buf: &[u8],
    last_key: &mut Option<Vec<u8>>,
    hasher: &mut StateHasher,
    sink: &mut dyn StreamSink,
) -> Result<(), String> {
    let take = |buf: &mut &[u8]| -> Result<Vec<u8>, String> {
        let len = buf
            .get(..4)
            .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")) as usize)
            .ok_or("truncated pair length")?;
        let bytes = buf.get(4..4 + len).ok_or("pair length past the frame")?;
        let out = bytes.to_vec();
        *buf = &buf[4 + len..];
        Ok(out)
    };
    while !buf.is_empty() {
        let key = take(&mut buf)?;
        let value = take(&mut buf)?;
        if last_key.as_ref().is_some_and(|l| key <= *l) {
            return Err("keys out of order".into());
        }
        hasher.pair(&key, &value);
        sink.pair(&key, &value).map_err(|e| e.to_string())?;
        *last_key = Some(key);
    }
    Ok(())
}

struct Reader<R> {
    r: R,
    offset: u64,
    buf: Vec<u8>,
}

impl<R: Read> Reader<R> {
    fn bad(&self, msg: &str) -> io::Error {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("snapshot stream at byte {}: {msg}", self.offset),
        )
    }

    fn exact(&mut self, out: &mut [u8]) -> io::Result<()> {
        self.r.read_exact(out).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                self.bad("truncated")
            } else {
                e
            }
        })?;
        self.offset += out.len() as u64;
        Ok(())
    }

    /// Reads the next frame into `buf`; None at a clean end of input.
    fn frame(&mut self) -> io::Result<Option<u8>> {
        let mut head = [0u8; 9];
        let n = self.r.read(&mut head[..1])?;
        if n == 0 {
            return Ok(None);
        }
        self.offset += 1;
        self.exact(&mut head[1..])?;
        let len = u32::from_le_bytes(head[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(head[4..8].try_into().expect("4 bytes"));
        let kind = head[8];
        if len > FRAME_BYTES_MAX {
            return Err(self.bad(&format!("frame of {len} bytes exceeds {FRAME_BYTES_MAX}")));
        }
        let mut buf = std::mem::take(&mut self.buf);
        buf.resize(len, 0);
        self.exact(&mut buf)?;
        if crc32c::crc32c_append(crc32c::crc32c(&[kind]), &buf) != crc {
            return Err(self.bad("frame checksum mismatch"));
        }
        self.buf = buf;
        Ok(Some(kind))
    }
}

/// Reads only the header and the meta frame of a stream (to list snapshots on open).
pub fn read_meta<R: Read>(r: R) -> io::Result<Vec<u8>> {
    let mut rd = Reader {
        r,
        offset: 0,
        buf: Vec::new(),
    };
    let mut header = [0u8; 12];
    rd.exact(&mut header)?;
    if &header[..8] != MAGIC || header[8..] != VERSION.to_le_bytes() {
        return Err(rd.bad("not a version-1 snapshot stream"));
    }
    match rd.frame()? {
        Some(KIND_META) => Ok(rd.buf),
        _ => Err(rd.bad("first frame is not the meta frame")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Collect(Vec<(String, Vec<u8>, Vec<u8>)>, Option<String>);

    impl StreamSink for Collect {
        fn cf(&mut self, name: &str) -> io::Result<()> {
            self.1 = Some(name.to_string());
            Ok(())
        }
        fn pair(&mut self, k: &[u8], v: &[u8]) -> io::Result<()> {
            self.0
                .push((self.1.clone().unwrap(), k.to_vec(), v.to_vec()));
            Ok(())
        }
    }

    fn sample() -> Vec<u8> {
        let mut w = StreamWriter::new(Vec::new(), b"meta!").unwrap();
        w.cf("meta").unwrap();
        w.pair(b"a", b"1").unwrap();
        w.pair(b"b", &vec![7u8; 700_000]).unwrap();
        w.pair(b"c", &vec![8u8; 700_000]).unwrap();
        w.cf("tenant.t").unwrap();
        w.pair(b"n", b"").unwrap();
        w.finish().unwrap().0
    }

    #[test]
    fn a_stream_round_trips_and_matches_its_digest() {
        let bytes = sample();
        let mut sink = Collect::default();
        let (meta, digest) = read_stream(&bytes[..], &mut sink).unwrap();
        assert_eq!(meta, b"meta!");
        assert_eq!(sink.0.len(), 4);
        assert_eq!(sink.0[3].0, "tenant.t");
        let mut h = StateHasher::default();
        h.cf("meta");
        for (k, v) in [
            (b"a".to_vec(), b"1".to_vec()),
            (b"b".to_vec(), vec![7u8; 700_000]),
        ] {
            h.pair(&k, &v);
        }
        h.pair(b"c", &[8u8; 700_000]);
        h.cf("tenant.t");
        h.pair(b"n", b"");
        assert_eq!(h.finish().1, digest);
    }

    #[test]
    fn every_cut_and_every_flipped_byte_is_refused() {
        let bytes = sample();
        // Cuts at every offset near the frame boundaries and a spread of others.
        let step = (bytes.len() / 400).max(1);
        for cut in (0..bytes.len()).step_by(step).chain(0..64) {
            let e = read_stream(&bytes[..cut], &mut Collect::default()).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "cut {cut}: {e}");
        }
        for at in (0..bytes.len()).step_by(step).chain(0..64) {
            let mut b = bytes.clone();
            b[at] ^= 0x10;
            assert!(
                read_stream(&b[..], &mut Collect::default()).is_err(),
                "flip at {at}"
            );
        }
        let mut b = bytes.clone();
        b.push(0);
        assert!(
            read_stream(&b[..], &mut Collect::default()).is_err(),
            "trailing byte"
        );
    }

    #[test]
    fn order_and_names_are_checked() {
        let bad = |f: &dyn Fn(&mut StreamWriter<Vec<u8>>)| {
            let mut w = StreamWriter::new(Vec::new(), b"m").unwrap();
            f(&mut w);
            let bytes = w.finish().unwrap().0;
            read_stream(&bytes[..], &mut Collect::default())
                .unwrap_err()
                .to_string()
        };
        assert!(bad(&|w| w.cf("tenant.t").unwrap()).contains("not meta"));
        let e = bad(&|w| {
            w.cf("meta").unwrap();
            w.pair(b"b", b"").unwrap();
            w.pair(b"a", b"").unwrap();
        });
        assert!(e.contains("out of order"), "{e}");
        let e = bad(&|w| {
            w.cf("meta").unwrap();
            w.cf("tenant.T!").unwrap();
        });
        assert!(e.contains("invalid column-family name"), "{e}");
    }
}
