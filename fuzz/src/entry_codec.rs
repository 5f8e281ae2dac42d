//! Arbitrary bytes → the entry decoder (what a corrupt or foreign Redis value meets). A value
//! that decodes must survive encode → decode unchanged, and its encoding must be stable.

use bytes::Bytes;
use tiercache_core::codec;

pub fn run(data: &[u8]) {
    let Ok(entry) = codec::decode(Bytes::copy_from_slice(data)) else {
        return;
    };
    let encoded = codec::encode(&entry);
    let again = codec::decode(encoded.clone()).expect("an encoded entry decodes");
    assert_eq!(again, entry, "encode → decode is not the identity");
    assert_eq!(codec::encode(&again), encoded, "the encoding is not stable");
    // The canonical encoding of the input is the input less unknown flag bits.
    let mut canonical = data.to_vec();
    canonical[1] &= 1;
    assert_eq!(
        encoded.as_ref(),
        canonical.as_slice(),
        "decode dropped or invented bytes"
    );
}

/// Valid encoded entries: the seed corpus (`(file name, input)`).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    use std::time::Duration;
    use tiercache_core::codec::EntryData;
    let entry = |value: &'static [u8], tags: &[&str], absent: bool, stale_ms: u64| EntryData {
        value: Bytes::from_static(value),
        version: 7,
        born: 42,
        tags: tags
            .iter()
            .map(|t| t.to_string())
            .collect::<Vec<_>>()
            .into(),
        absent,
        stale_window: Duration::from_millis(stale_ms),
    };
    [
        ("plain", entry(b"{\"name\":\"ada\"}", &[], false, 0)),
        (
            "tagged",
            entry(b"v", &["user", "team:7", "\u{e9}"], false, 30_000),
        ),
        ("absent", entry(b"", &["t"], true, 0)),
        ("empty", entry(b"", &[], false, u64::MAX)),
    ]
    .into_iter()
    .map(|(name, e)| (name.to_string(), codec::encode(&e).to_vec()))
    .collect()
}
