//! Redis key encoding.
//!
//! Layout (readable in `redis-cli`, cluster-shaped):
//!
//! | key | holds |
//! |---|---|
//! | `tc:{<ns>:<key>}:e` | the entry (see [`crate::codec`]) |
//! | `tc:{<ns>:<key>}:l` | the lease on the key |
//! | `tc:{<ns>:<name>}:lock`, `…:fence` | a lock and its fencing counter |
//! | `tc:{<ns>}:seq` | the namespace sequence |
//! | `tc:{<ns>}:flush` | the namespace flush mark |
//! | `tc:{<ns>}:tag:<tag>` | a tag's invalidation mark |
//! | channel `tc:{<ns>}:events` | the namespace's invalidation events (sequenced) |
//! | channels `tc:{<ns>}:leases`, `tc:{<ns>}:locks` | release wake-ups (unsequenced) |
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

/// The Redis names of one namespace.
#[derive(Debug, Clone)]
pub struct NamespaceKeys {
    ns: String,
    /// `tc:{<ns>}:` — the prefix of the namespace's own keys, also used by the Lua scripts.
    pub meta_prefix: String,
    /// `tc:{<ns>}:seq`
    pub seq: String,
    /// `tc:{<ns>}:flush`
    pub flush: String,
    /// `tc:{<ns>}:events`
    pub channel: String,
    /// `tc:{<ns>}:leases`: unsequenced "lease released" wake-ups for GetOrSet waiters.
    pub lease_channel: String,
    /// `tc:{<ns>}:locks`: unsequenced "lock released" wake-ups for lock waiters.
    pub lock_channel: String,
}

impl NamespaceKeys {
    /// Returns the names for namespace `ns` (assumed valid).
    pub fn new(ns: &str) -> Self {
        let meta_prefix = format!("tc:{{{ns}}}:");
        Self {
            ns: ns.to_string(),
            seq: format!("{meta_prefix}seq"),
            flush: format!("{meta_prefix}flush"),
            channel: format!("{meta_prefix}events"),
            lease_channel: format!("{meta_prefix}leases"),
            lock_channel: format!("{meta_prefix}locks"),
            meta_prefix,
        }
    }

    /// `tc:{<ns>:<key>}:e`
    pub fn entry(&self, key: &str) -> String {
        format!("tc:{{{}:{}}}:e", self.ns, escape(key))
    }

    /// `tc:{<ns>:<key>}:l`
    pub fn lease(&self, key: &str) -> String {
        format!("tc:{{{}:{}}}:l", self.ns, escape(key))
    }

    /// `tc:{<ns>:<name>}:lock`
    pub fn lock(&self, name: &str) -> String {
        format!("tc:{{{}:{}}}:lock", self.ns, escape(name))
    }

    /// `tc:{<ns>:<name>}:fence`
    pub fn fence(&self, name: &str) -> String {
        format!("tc:{{{}:{}}}:fence", self.ns, escape(name))
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

/// Parses an entry key back into `(namespace, key)`; used by tests and tooling.
pub fn parse_entry_key(k: &str) -> Option<(String, String)> {
    let inner = k.strip_prefix("tc:{")?.strip_suffix("}:e")?;
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
        let k = NamespaceKeys::new("users");
        assert_eq!(k.entry("user:42"), "tc:{users:user:42}:e");
        assert_eq!(k.lease("user:42"), "tc:{users:user:42}:l");
        assert_eq!(k.entry("a{b}%"), "tc:{users:a%7Bb%7D%25}:e");
        assert_eq!(k.seq, "tc:{users}:seq");
        assert_eq!(k.tag("t{1}"), "tc:{users}:tag:t%7B1%7D");
    }

    #[test]
    fn no_colon_collision() {
        let a = NamespaceKeys::new("a").entry("b:c");
        let b = NamespaceKeys::new("ab").entry("c");
        assert_ne!(a, b);
        assert_eq!(parse_entry_key(&a), Some(("a".into(), "b:c".into())));
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
            let e1 = NamespaceKeys::new(&ns1).entry(&k1);
            let e2 = NamespaceKeys::new(&ns2).entry(&k2);
            prop_assert_eq!(e1 == e2, ns1 == ns2 && k1 == k2);
            prop_assert_eq!(parse_entry_key(&e1), Some((ns1, k1)));
        }

        #[test]
        fn entry_lease_and_lock_share_a_slot(ns in "[a-z0-9][a-z0-9_.-]{0,8}", k in "\\PC{0,16}") {
            let keys = NamespaceKeys::new(&ns);
            let t = hash_tag(&keys.entry(&k)).to_string();
            for other in [keys.lease(&k), keys.lock(&k), keys.fence(&k)] {
                prop_assert_eq!(hash_tag(&other), t.as_str());
            }
        }
    }
}
