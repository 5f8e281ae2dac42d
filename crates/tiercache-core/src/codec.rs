//! The entry codec: how an entry is stored as one Redis string.
//!
//! ```text
//! offset  size  field
//! 0       1     format (1)
//! 1       1     flags (bit 0: absent)
//! 2       8     version, big-endian
//! 10      8     born sequence, big-endian
//! 18      8     stale window in milliseconds, big-endian
//! 26      2     tag count, big-endian
//! 28      …     tags: 2-byte big-endian length + UTF-8 bytes, each
//! …       …     value bytes (the rest)
//! ```
//!
//! The Lua scripts in [`crate::l2`] read the version, born sequence and tags at these offsets and
//! splice a new version and born sequence into bytes 2..18; keep them in step.

use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};

/// The current format byte.
pub const FORMAT_V1: u8 = 1;
const FLAG_ABSENT: u8 = 1;
/// The length of the fixed header.
pub const HEADER_LEN: usize = 28;

/// The stored part of an entry: everything but its remaining lifetime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryData {
    pub value: Bytes,
    pub version: u64,
    pub born: u64,
    pub tags: Arc<[String]>,
    pub absent: bool,
    /// The length of the stale window that follows the fresh period.
    pub stale_window: Duration,
}

/// An entry that cannot be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("entry is truncated")]
    Truncated,
    #[error("unknown entry format {0}")]
    UnknownFormat(u8),
    #[error("entry tag is not utf-8")]
    BadTag,
}

/// Encodes an entry.
pub fn encode(e: &EntryData) -> Bytes {
    let tags_len: usize = e.tags.iter().map(|t| 2 + t.len()).sum();
    let mut b = BytesMut::with_capacity(HEADER_LEN + tags_len + e.value.len());
    b.put_u8(FORMAT_V1);
    b.put_u8(if e.absent { FLAG_ABSENT } else { 0 });
    b.put_u64(e.version);
    b.put_u64(e.born);
    b.put_u64(u64::try_from(e.stale_window.as_millis()).unwrap_or(u64::MAX));
    b.put_u16(e.tags.len() as u16);
    for t in e.tags.iter() {
        b.put_u16(t.len() as u16);
        b.put_slice(t.as_bytes());
    }
    b.put_slice(&e.value);
    b.freeze()
}

/// Decodes an entry. The value shares `raw`'s buffer.
pub fn decode(raw: Bytes) -> Result<EntryData, DecodeError> {
    let header = raw.get(..HEADER_LEN).ok_or(DecodeError::Truncated)?;
    if header[0] != FORMAT_V1 {
        return Err(DecodeError::UnknownFormat(header[0]));
    }
    let u64_at = |i: usize| u64::from_be_bytes(header[i..i + 8].try_into().expect("8 bytes"));
    let flags = header[1];
    let version = u64_at(2);
    let born = u64_at(10);
    let stale_ms = u64_at(18);
    let ntags = u16::from_be_bytes([header[26], header[27]]) as usize;
    let mut pos = HEADER_LEN;
    let mut tags = Vec::with_capacity(ntags);
    for _ in 0..ntags {
        let len = raw.get(pos..pos + 2).ok_or(DecodeError::Truncated)?;
        let len = u16::from_be_bytes([len[0], len[1]]) as usize;
        let bytes = raw
            .get(pos + 2..pos + 2 + len)
            .ok_or(DecodeError::Truncated)?;
        tags.push(
            std::str::from_utf8(bytes)
                .map_err(|_| DecodeError::BadTag)?
                .to_string(),
        );
        pos += 2 + len;
    }
    Ok(EntryData {
        value: raw.slice(pos..),
        version,
        born,
        tags: tags.into(),
        absent: flags & FLAG_ABSENT != 0,
        stale_window: Duration::from_millis(stale_ms),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(
            value in proptest::collection::vec(any::<u8>(), 0..256),
            version in any::<u64>(), born in any::<u64>(),
            tags in proptest::collection::vec("\\PC{0,20}", 0..5),
            absent in any::<bool>(), stale_ms in 0u64..u64::MAX / 2,
        ) {
            let e = EntryData {
                value: Bytes::from(value), version, born, tags: tags.into(), absent,
                stale_window: Duration::from_millis(stale_ms),
            };
            let raw = encode(&e);
            prop_assert_eq!(raw[0], FORMAT_V1);
            prop_assert_eq!(decode(raw).unwrap(), e);
        }

        #[test]
        fn garbage_never_panics(raw in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode(Bytes::from(raw));
        }
    }

    #[test]
    fn rejects_unknown_format_and_truncation() {
        assert_eq!(
            decode(Bytes::from_static(&[9; 40])),
            Err(DecodeError::UnknownFormat(9))
        );
        assert_eq!(
            decode(Bytes::from_static(&[1; 5])),
            Err(DecodeError::Truncated)
        );
    }
}
