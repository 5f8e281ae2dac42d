//! Invalidation events: what a write or invalidation tells the other replicas.
//!
//! Every event carries the namespace sequence it took. Within a namespace the sequences are
//! consecutive, so a replica that sees `n` after `m` with `n > m + 1` knows it missed events.

/// One namespace event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub sequence: u64,
    pub kind: EventKind,
}

/// What happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A key was written (`version > 0`) or deleted (`version == 0`).
    KeyChanged { key: String, version: u64 },
    /// Entries carrying any of these tags are hidden from now on.
    TagsInvalidated { tags: Vec<String> },
    /// Every entry of the namespace is hidden from now on.
    Flushed,
    /// Events after `last_sequence` were lost; everything cached for the namespace was cleared.
    Gap { last_sequence: u64 },
}

impl Event {
    /// Encodes the event as published on the namespace channel (text, `\n` separated; keys and tags
    /// cannot hold control characters).
    pub fn encode(&self) -> String {
        match &self.kind {
            EventKind::KeyChanged { key, version } => {
                format!("{}\nK\n{}\n{}", self.sequence, version, key)
            }
            EventKind::TagsInvalidated { tags } => {
                format!("{}\nT\n{}", self.sequence, tags.join("\n"))
            }
            EventKind::Flushed => format!("{}\nF", self.sequence),
            EventKind::Gap { last_sequence } => format!("{}\nG\n{}", self.sequence, last_sequence),
        }
    }

    /// Decodes a published event; `None` for anything malformed.
    pub fn decode(s: &str) -> Option<Event> {
        let mut parts = s.splitn(3, '\n');
        let sequence = parts.next()?.parse().ok()?;
        let kind = match parts.next()? {
            "K" => {
                let rest = parts.next()?;
                let (version, key) = rest.split_once('\n')?;
                EventKind::KeyChanged {
                    key: key.to_string(),
                    version: version.parse().ok()?,
                }
            }
            "T" => EventKind::TagsInvalidated {
                tags: parts.next()?.split('\n').map(str::to_string).collect(),
            },
            "F" => EventKind::Flushed,
            "G" => EventKind::Gap {
                last_sequence: parts.next()?.parse().ok()?,
            },
            _ => return None,
        };
        Some(Event { sequence, kind })
    }

    /// Decodes a message of a namespace's event channel as the Lua scripts publish it:
    /// `<run>\n<event>`, the run of the namespace sequence the event took its number in, then the
    /// event. `None` for anything malformed, invalid UTF-8 included.
    pub fn decode_message(payload: &[u8]) -> Option<(u64, Event)> {
        let (run, event) = std::str::from_utf8(payload).ok()?.split_once('\n')?;
        Some((run.parse().ok()?, Event::decode(event)?))
    }

    /// Encodes the event as a message of run `run` (what [`Event::decode_message`] reads).
    pub fn encode_message(&self, run: u64) -> String {
        format!("{run}\n{}", self.encode())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip() {
        for kind in [
            EventKind::KeyChanged {
                key: "a:b\tc".into(),
                version: 7,
            },
            EventKind::TagsInvalidated {
                tags: vec!["t1".into(), "t 2".into()],
            },
            EventKind::Flushed,
            EventKind::Gap { last_sequence: 3 },
        ] {
            let e = Event { sequence: 42, kind };
            assert_eq!(Event::decode(&e.encode()), Some(e));
        }
        assert_eq!(Event::decode("x\nK\n1\nk"), None);
        assert_eq!(Event::decode("1\nZ"), None);
    }

    #[test]
    fn messages_carry_the_run() {
        let e = Event {
            sequence: 5,
            kind: EventKind::Flushed,
        };
        assert_eq!(e.encode_message(9), "9\n5\nF");
        assert_eq!(Event::decode_message(b"9\n5\nF"), Some((9, e)));
        assert_eq!(Event::decode_message(b"x\n5\nF"), None);
        assert_eq!(Event::decode_message(b"9\n5\n\xffF"), None);
        assert_eq!(Event::decode_message(b"9"), None);
    }
}
