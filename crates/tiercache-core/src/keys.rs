//! Redis key encoding.
//!
//! Layout (readable in `redis-cli`, cluster-shaped), with `tc` standing for the deployment's
//! `redis.key_prefix` and `<db>` for the Redis database number:
//!
//! | key | holds |
//! |---|---|
//! | `tc:{<ns>:<key>}:e` | the entry (see [`crate::codec`]) |
//! | `tc:{<ns>:<key>}:l` | the lease on the key |
//! | `tc:{<ns>:<name>}:lock`, `…:fence` | a lock and its fencing counter |
//! | `tc:{<ns>}:seq` | the namespace sequence |
//! | `tc:{<ns>}:run` | the id of the sequence's current run (new whenever `seq` starts over) |
//! | `tc:{<ns>}:flush` | the namespace flush mark |
//! | `tc:{<ns>}:tag:<tag>` | a tag's invalidation mark |
//! | channel `tc:<db>:{<ns>}:events` | the namespace's invalidation events (sequenced) |
//! | channels `tc:<db>:{<ns>}:leases`, `…:locks` | release wake-ups (unsequenced) |
//!
//! Pub/sub ignores the database number, so channel names carry it: deployments on `/0` and `/1`
//! of one Redis never hear each other. Deployments sharing a database keep apart by prefix.
//!
//! An entry, its lease and its lock keys share a hash tag, so per-key scripts stay in one slot.
//! Keys and tags are escaped (`%` → `%25`, `{` → `%7B`, `}` → `%7D`) so a key can never end the
//! hash tag early; namespace names cannot hold `:`, `{` or `}`. Together that makes the encoding
//! injective: `("a:b", "c")` and `("a", "b:c")` cannot collide.

use std::borrow::Cow;

/// Escapes the characters that would break the hash tag or the escaping itself.
pub fn escape(s: &str) -> Cow<'_, str> {
    if !s.bytes().any(|b| matches!(b, b'%' | b'{' | b'}')) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '{' => out.push_str("%7B"),
            '}' => out.push_str("%7D"),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Reverses [`escape`]. Returns `None` for text that `escape` cannot produce.
pub fn unescape(s: &str) -> Option<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find(['%', '{', '}']) {
        out.push_str(&rest[..i]);
        let code = rest.get(i..i + 3)?;
        out.push(match code {
            "%25" => '%',
            "%7B" => '{',
            "%7D" => '}',
            _ => return None,
        });
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Some(out)
}

/// The default `redis.key_prefix`.
pub const DEFAULT_KEY_PREFIX: &str = "tc";
/// The longest `redis.key_prefix` accepted.
pub const MAX_KEY_PREFIX_LEN: usize = 64;

/// Checks a key prefix: non-empty, at most [`MAX_KEY_PREFIX_LEN`] bytes of ASCII letters, digits,
/// `_`, `-`, `.` and `:` (no braces, which would break the hash tags, and no glob characters,
/// which would break the `PSUBSCRIBE` patterns). Returns why it is refused.
pub fn validate_key_prefix(prefix: &str) -> Result<(), String> {
    if prefix.is_empty() {
        return Err("must not be empty".into());
    }
    if prefix.len() > MAX_KEY_PREFIX_LEN {
        return Err(format!("must be at most {MAX_KEY_PREFIX_LEN} bytes"));
    }
    if let Some(c) = prefix
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':')))
    {
        return Err(format!(
            "may hold only ASCII letters, digits, '_', '-', '.' and ':' (found {c:?})"
        ));
    }
    Ok(())
}

/// Which of a namespace's channels a message came on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChannelKind {
    Events,
    Leases,
    Locks,
}

/// The names one deployment uses in one Redis database: its key prefix and the database number
/// (which channel names carry, since pub/sub ignores databases).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySpace {
    prefix: String,
    db: i64,
}

impl Default for KeySpace {
    fn default() -> Self {
        Self::new(DEFAULT_KEY_PREFIX, 0)
    }
}

impl KeySpace {
    /// Returns the names under `prefix` (assumed valid, see [`validate_key_prefix`]) in database
    /// `db`.
    pub fn new(prefix: &str, db: i64) -> Self {
        Self {
            prefix: prefix.to_string(),
            db,
        }
    }

    /// The key prefix.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Returns the names of namespace `ns` (assumed valid).
    pub fn namespace(&self, ns: &str) -> NamespaceKeys {
        NamespaceKeys::new(self, ns)
    }

    /// `<prefix>:<db>:{`, the start of every channel name of this deployment.
    fn channel_start(&self) -> String {
        format!("{}:{}:{{", self.prefix, self.db)
    }

    /// The `PSUBSCRIBE` pattern that covers every namespace's event, lease and lock channels:
    /// `<prefix>:*`, literally the channel rule `&<prefix>:*` of a Redis ACL user limited to the
    /// prefix (Redis matches a subscribed pattern against the ACL's patterns literally, so a
    /// narrower pattern would be refused). Channels of other databases under the same prefix
    /// also arrive; [`KeySpace::parse_channel`] drops them.
    pub fn patterns(&self) -> [String; 1] {
        [format!("{}:*", self.prefix)]
    }

    /// Parses a channel name of this deployment into its namespace and kind.
    pub fn parse_channel<'a>(&self, channel: &'a str) -> Option<(&'a str, ChannelKind)> {
        let rest = channel.strip_prefix(self.channel_start().as_str())?;
        let (name, kind) = if let Some(n) = rest.strip_suffix("}:events") {
            (n, ChannelKind::Events)
        } else if let Some(n) = rest.strip_suffix("}:leases") {
            (n, ChannelKind::Leases)
        } else {
            (rest.strip_suffix("}:locks")?, ChannelKind::Locks)
        };
        // Namespace names hold no braces; anything else is not ours.
        (!name.contains(['{', '}'])).then_some((name, kind))
    }
}

/// The Redis names of one namespace.
#[derive(Debug, Clone)]
pub struct NamespaceKeys {
    /// `tc:{<ns>`, the start of every per-key name (the hash tag is closed after the key).
    key_start: String,
    /// `tc:{<ns>}:` — the prefix of the namespace's own keys, also used by the Lua scripts.
    pub meta_prefix: String,
    /// `tc:{<ns>}:seq`
    pub seq: String,
    /// `tc:{<ns>}:run`: the id of the current run of `seq` (see `docs/architecture.md`).
    pub run: String,
    /// `tc:{<ns>}:flush`
    pub flush: String,
    /// `tc:<db>:{<ns>}:events`
    pub channel: String,
    /// `tc:<db>:{<ns>}:leases`: unsequenced "lease released" wake-ups for GetOrSet waiters.
    pub lease_channel: String,
    /// `tc:<db>:{<ns>}:locks`: unsequenced "lock released" wake-ups for lock waiters.
    pub lock_channel: String,
}

impl NamespaceKeys {
    /// Returns the names for namespace `ns` (assumed valid) in `space`.
    pub fn new(space: &KeySpace, ns: &str) -> Self {
        let p = &space.prefix;
        let meta_prefix = format!("{p}:{{{ns}}}:");
        let channel_prefix = format!("{}{ns}}}:", space.channel_start());
        Self {
            key_start: format!("{p}:{{{ns}"),
            seq: format!("{meta_prefix}seq"),
            run: format!("{meta_prefix}run"),
            flush: format!("{meta_prefix}flush"),
            channel: format!("{channel_prefix}events"),
            lease_channel: format!("{channel_prefix}leases"),
            lock_channel: format!("{channel_prefix}locks"),
            meta_prefix,
        }
    }

    /// `tc:{<ns>:<key>}:e`
    pub fn entry(&self, key: &str) -> String {
        format!("{}:{}}}:e", self.key_start, escape(key))
    }

    /// `tc:{<ns>:<key>}:l`
    pub fn lease(&self, key: &str) -> String {
        format!("{}:{}}}:l", self.key_start, escape(key))
    }

    /// `tc:{<ns>:<name>}:lock`
    pub fn lock(&self, name: &str) -> String {
        format!("{}:{}}}:lock", self.key_start, escape(name))
    }

    /// `tc:{<ns>:<name>}:fence`
    pub fn fence(&self, name: &str) -> String {
        format!("{}:{}}}:fence", self.key_start, escape(name))
    }

    /// `tc:{<ns>}:life`: the longest entry lifetime (ms) written in the namespace.
    pub fn lifetime(&self) -> String {
        format!("{}life", self.meta_prefix)
    }

    /// `tc:{<ns>}:tag:<tag>`
    pub fn tag(&self, tag: &str) -> String {
        format!("{}tag:{}", self.meta_prefix, escape(tag))
    }
}

/// Parses an entry key under `prefix` back into `(namespace, key)`; used by tests and tooling.
pub fn parse_entry_key(prefix: &str, k: &str) -> Option<(String, String)> {
    let inner = k
        .strip_prefix(prefix)?
        .strip_prefix(":{")?
        .strip_suffix("}:e")?;
    let (ns, key) = inner.split_once(':')?;
    if key.contains('}') {
        return None;
    }
    Some((ns.to_string(), unescape(key)?))
}

/// Returns the Redis Cluster hash tag of a key: the part between the first `{` and the next `}`.
pub fn hash_tag(k: &str) -> &str {
    if let Some(open) = k.find('{') {
        if let Some(len) = k[open + 1..].find('}') {
            if len > 0 {
                return &k[open + 1..open + 1 + len];
            }
        }
    }
    k
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn readable_layout() {
        let k = KeySpace::default().namespace("users");
        assert_eq!(k.entry("user:42"), "tc:{users:user:42}:e");
        assert_eq!(k.lease("user:42"), "tc:{users:user:42}:l");
        assert_eq!(k.entry("a{b}%"), "tc:{users:a%7Bb%7D%25}:e");
        assert_eq!(k.seq, "tc:{users}:seq");
        assert_eq!(k.tag("t{1}"), "tc:{users}:tag:t%7B1%7D");
        assert_eq!(k.channel, "tc:0:{users}:events");
    }

    #[test]
    fn prefix_and_db_keep_deployments_apart() {
        let a = KeySpace::new("app1", 0);
        let b = KeySpace::new("app2", 0);
        let c = KeySpace::new("app1", 1);
        let ka = a.namespace("users");
        assert_eq!(ka.entry("k"), "app1:{users:k}:e");
        assert_eq!(ka.lock_channel, "app1:0:{users}:locks");
        assert_ne!(ka.entry("k"), b.namespace("users").entry("k"));
        assert_ne!(ka.channel, c.namespace("users").channel);
        assert_eq!(
            a.parse_channel(&ka.channel),
            Some(("users", ChannelKind::Events))
        );
        assert_eq!(a.parse_channel(&b.namespace("users").channel), None);
        assert_eq!(a.parse_channel(&c.namespace("users").channel), None);
        assert_eq!(a.patterns(), ["app1:*".to_string()]);
        assert_eq!(
            parse_entry_key("app1", &ka.entry("a:b")),
            Some(("users".into(), "a:b".into()))
        );
    }

    #[test]
    fn key_prefix_validation_names_the_problem() {
        assert!(validate_key_prefix("tc").is_ok());
        assert!(validate_key_prefix("team-a:cache.v2").is_ok());
        assert!(validate_key_prefix("").unwrap_err().contains("empty"));
        assert!(validate_key_prefix("a{b").is_err());
        assert!(validate_key_prefix("a*").is_err());
        assert!(validate_key_prefix(&"x".repeat(65)).is_err());
    }

    #[test]
    fn no_colon_collision() {
        let a = KeySpace::default().namespace("a").entry("b:c");
        let b = KeySpace::default().namespace("ab").entry("c");
        assert_ne!(a, b);
        assert_eq!(parse_entry_key("tc", &a), Some(("a".into(), "b:c".into())));
    }

    proptest! {
        #[test]
        fn escape_roundtrips(s in "\\PC*") {
            let escaped = escape(&s).into_owned();
            prop_assert!(!escaped.contains(['{', '}']), "escaped text keeps no braces");
            prop_assert_eq!(unescape(&escaped), Some(s));
        }

        #[test]
        fn entry_keys_are_injective(
            ns1 in "[a-z0-9][a-z0-9_.-]{0,8}", k1 in "[a-z:{}%]{0,12}",
            ns2 in "[a-z0-9][a-z0-9_.-]{0,8}", k2 in "[a-z:{}%]{0,12}",
        ) {
            let e1 = KeySpace::default().namespace(&ns1).entry(&k1);
            let e2 = KeySpace::default().namespace(&ns2).entry(&k2);
            prop_assert_eq!(e1 == e2, ns1 == ns2 && k1 == k2);
            prop_assert_eq!(parse_entry_key("tc", &e1), Some((ns1, k1)));
        }

        #[test]
        fn entry_lease_and_lock_share_a_slot(ns in "[a-z0-9][a-z0-9_.-]{0,8}", k in "\\PC{0,16}") {
            let keys = KeySpace::default().namespace(&ns);
            let t = hash_tag(&keys.entry(&k)).to_string();
            for other in [keys.lease(&k), keys.lock(&k), keys.fence(&k)] {
                prop_assert_eq!(hash_tag(&other), t.as_str());
            }
        }
    }
}
