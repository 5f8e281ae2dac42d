//! The Redis key layout of `tiercache_core::keys`: escaping, entry keys, channel names and hash
//! tags. The input is `prefix \xff namespace \xff key` (lossy UTF-8); each piece is also thrown
//! at the parsers as a whole name.

use tiercache_core::keys::{self, ChannelKind, KeySpace};
use tiercache_core::policy::is_valid_namespace;

pub fn run(data: &[u8]) {
    let parts = super::split(data, 3);
    let text = |i: usize| String::from_utf8_lossy(parts.get(i).copied().unwrap_or_default());
    let (prefix, ns, key) = (text(0), text(1), text(2));

    // Escaping: reversible, never leaves a brace, and unescape accepts only what escape makes.
    for s in [&prefix, &ns, &key] {
        let escaped = keys::escape(s);
        assert!(!escaped.contains(['{', '}']), "escaped {s:?} keeps a brace");
        assert_eq!(keys::unescape(&escaped).as_deref(), Some(s.as_ref()));
        if let Some(plain) = keys::unescape(s) {
            assert_eq!(keys::escape(&plain), s.as_ref(), "unescape accepted {s:?}");
        }
        let _ = keys::hash_tag(s);
    }

    // Parsers on arbitrary names: whatever they accept is exactly what the layout produces.
    let space = match keys::validate_key_prefix(&prefix) {
        Ok(()) => KeySpace::new(&prefix, i64::from(data.first().copied().unwrap_or(0))),
        Err(_) => KeySpace::default(),
    };
    for s in [&prefix, &ns, &key] {
        if let Some((name, kind)) = space.parse_channel(s) {
            let names = space.namespace(name);
            let expected = match kind {
                ChannelKind::Events => &names.channel,
                ChannelKind::Leases => &names.lease_channel,
                ChannelKind::Locks => &names.lock_channel,
            };
            assert_eq!(expected, s.as_ref(), "parse_channel accepted {s:?}");
        }
        if let Some((n, k)) = keys::parse_entry_key(space.prefix(), s) {
            let rebuilt = KeySpace::new(space.prefix(), 0).namespace(&n).entry(&k);
            assert_eq!(rebuilt, s.as_ref(), "parse_entry_key accepted {s:?}");
        }
    }

    // Formatting then parsing a valid namespace's names gives the namespace and key back, and
    // a key's entry, lease and lock names share one hash tag (one cluster slot).
    if !is_valid_namespace(&ns) {
        return;
    }
    let names = space.namespace(&ns);
    let entry = names.entry(&key);
    assert_eq!(
        keys::parse_entry_key(space.prefix(), &entry),
        Some((ns.to_string(), key.to_string()))
    );
    let slot = keys::hash_tag(&entry);
    for other in [names.lease(&key), names.lock(&key), names.fence(&key)] {
        assert_eq!(keys::hash_tag(&other), slot, "{other:?} is in another slot");
    }
    for (channel, kind) in [
        (&names.channel, ChannelKind::Events),
        (&names.lease_channel, ChannelKind::Leases),
        (&names.lock_channel, ChannelKind::Locks),
    ] {
        assert_eq!(space.parse_channel(channel), Some((ns.as_ref(), kind)));
    }
    // Another namespace's or another key's entry name never collides with this one.
    let other_key = format!("{key}:");
    assert_ne!(names.entry(&other_key), entry);
}

/// Names of the layout and some near misses: the seed corpus (`(file name, input)`).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    let space = KeySpace::new("app1", 3);
    let names = space.namespace("users");
    [
        ("plain", "tc\u{ff}users\u{ff}user:42".to_string()),
        (
            "escaped",
            "team-a:cache.v2\u{ff}a.b-c_1\u{ff}a{b}%c%7B".to_string(),
        ),
        ("entry-name", names.entry("user:{1}")),
        ("lease-name", format!("app1\u{ff}{}", names.lease("k"))),
        ("channel", format!("app1\u{ff}users\u{ff}{}", names.channel)),
        (
            "lock-channel",
            format!("tc\u{ff}x\u{ff}{}", names.lock_channel),
        ),
        ("tag", format!("tc\u{ff}users\u{ff}{}", names.tag("t%7D"))),
    ]
    .into_iter()
    // U+00FF stands for the 0xff separator byte.
    .map(|(name, s)| {
        let bytes = s
            .chars()
            .flat_map(|c| match c {
                '\u{ff}' => vec![0xff],
                c => c.to_string().into_bytes(),
            })
            .collect();
        (name.to_string(), bytes)
    })
    .collect()
}
