//! Binary encodings of the redb values. Hand-rolled (not serde) because these sit on
//! the hot write path and the layouts are tiny and fixed.

use crate::error::StoreError;
use crate::types::{EventKind, KeyValue, Revision, WatchEvent};

/// kv table value: `create_rev u64 LE | mod_rev u64 LE | value bytes`.
pub(crate) fn encode_kv(value: &[u8], create_rev: Revision, mod_rev: Revision) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + value.len());
    out.extend_from_slice(&create_rev.to_le_bytes());
    out.extend_from_slice(&mod_rev.to_le_bytes());
    out.extend_from_slice(value);
    out
}

/// Only the revisions, for compares (avoids copying the value).
pub(crate) fn decode_kv_revs(key: &str, bytes: &[u8]) -> Result<(Revision, Revision), StoreError> {
    let mut r = Reader { buf: bytes, key };
    Ok((r.u64()?, r.u64()?))
}

pub(crate) fn decode_kv(key: &str, bytes: &[u8]) -> Result<KeyValue, StoreError> {
    let (create_revision, mod_revision) = decode_kv_revs(key, bytes)?;
    Ok(KeyValue {
        key: key.to_owned(),
        value: bytes[16..].to_vec(),
        create_revision,
        mod_revision,
    })
}

/// change-log value for one revision: repeated
/// `kind u8 | create_rev u64 | key_len u32 | key | value_len u32 | value`.
/// The revision itself is the table key, so it is not repeated per event.
pub(crate) fn encode_events(events: &[WatchEvent]) -> Result<Vec<u8>, StoreError> {
    let size: usize = events
        .iter()
        .map(|e| 17 + e.kv.key.len() + e.kv.value.len())
        .sum();
    let mut out = Vec::with_capacity(size);
    for e in events {
        out.push(match e.kind {
            EventKind::Put => 0,
            EventKind::Delete => 1,
        });
        out.extend_from_slice(&e.kv.create_revision.to_le_bytes());
        put_len(&mut out, e.kv.key.len())?;
        out.extend_from_slice(e.kv.key.as_bytes());
        put_len(&mut out, e.kv.value.len())?;
        out.extend_from_slice(&e.kv.value);
    }
    Ok(out)
}

fn put_len(out: &mut Vec<u8>, len: usize) -> Result<(), StoreError> {
    let len = u32::try_from(len)
        .map_err(|_| StoreError::Invalid(format!("key or value of {len} bytes is too large")))?;
    out.extend_from_slice(&len.to_le_bytes());
    Ok(())
}

/// Decodes one revision's events, keeping only keys under `prefix`.
pub(crate) fn decode_events(
    revision: Revision,
    bytes: &[u8],
    prefix: &str,
    out: &mut Vec<WatchEvent>,
) -> Result<(), StoreError> {
    let label = format!("change log revision {revision}");
    let mut r = Reader {
        buf: bytes,
        key: &label,
    };
    while !r.buf.is_empty() {
        let kind = match r.u8()? {
            0 => EventKind::Put,
            1 => EventKind::Delete,
            k => return Err(StoreError::Codec(format!("{label}: bad event kind {k}"))),
        };
        let create_revision = r.u64()?;
        let key_len = r.u32()? as usize;
        let key = r.take(key_len)?;
        let val_len = r.u32()? as usize;
        let value = r.take(val_len)?;
        if !key.starts_with(prefix.as_bytes()) {
            continue;
        }
        let key = std::str::from_utf8(key)
            .map_err(|e| StoreError::Codec(format!("{label}: key not UTF-8: {e}")))?;
        out.push(WatchEvent {
            kind,
            kv: KeyValue {
                key: key.to_owned(),
                value: value.to_vec(),
                create_revision,
                mod_revision: revision,
            },
        });
    }
    Ok(())
}

struct Reader<'a> {
    buf: &'a [u8],
    key: &'a str,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StoreError> {
        if self.buf.len() < n {
            return Err(StoreError::Codec(format!("{}: truncated record", self.key)));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, StoreError> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32, StoreError> {
        let mut b = [0u8; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_le_bytes(b))
    }
    fn u64(&mut self) -> Result<u64, StoreError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kv_roundtrip_and_truncation() {
        let enc = encode_kv(b"hello", 3, 7);
        let kv = decode_kv("k", &enc).unwrap();
        assert_eq!(
            (kv.value.as_slice(), kv.create_revision, kv.mod_revision),
            (&b"hello"[..], 3, 7)
        );
        assert!(matches!(
            decode_kv("k", &enc[..10]),
            Err(StoreError::Codec(_))
        ));
    }

    #[test]
    fn events_roundtrip_with_prefix_filter() {
        let ev = |kind, key: &str, value: &[u8], c| WatchEvent {
            kind,
            kv: KeyValue {
                key: key.into(),
                value: value.to_vec(),
                create_revision: c,
                mod_revision: 9,
            },
        };
        let events = vec![
            ev(EventKind::Put, "a/1", b"x", 2),
            ev(EventKind::Delete, "b/1", b"", 0),
            ev(EventKind::Put, "a/2", b"", 9),
        ];
        let enc = encode_events(&events).unwrap();
        let mut all = Vec::new();
        decode_events(9, &enc, "", &mut all).unwrap();
        assert_eq!(all, events);
        let mut a = Vec::new();
        decode_events(9, &enc, "a/", &mut a).unwrap();
        assert_eq!(a, vec![events[0].clone(), events[2].clone()]);
        let mut bad = Vec::new();
        assert!(decode_events(9, &enc[..enc.len() - 1], "", &mut bad).is_err());
    }
}
