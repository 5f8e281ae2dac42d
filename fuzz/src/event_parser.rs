//! Invalidation events as a replica receives them: a channel name and a payload from Redis
//! pub/sub (input: `channel \xff payload`). The channel goes through the key space's parser;
//! the payload through the event-channel message decoder (`<run>\n<event>`) and, whole, through
//! the bare event decoder. A decoded message must survive encode → decode unchanged.

use tiercache_core::keys::KeySpace;
use tiercache_core::Event;

pub fn run(data: &[u8]) {
    let (channel, payload) = match super::split(data, 2)[..] {
        [channel, payload] => (channel, payload),
        [payload] => (&[][..], payload),
        _ => unreachable!("split gives one or two parts"),
    };
    if let Ok(channel) = std::str::from_utf8(channel) {
        let _ = KeySpace::default().parse_channel(channel);
    }
    if let Some((run, event)) = Event::decode_message(payload) {
        let encoded = event.encode_message(run);
        assert_eq!(
            Event::decode_message(encoded.as_bytes()),
            Some((run, event.clone())),
            "encode → decode is not the identity for {encoded:?}"
        );
    }
    if let Some(event) = std::str::from_utf8(payload).ok().and_then(Event::decode) {
        assert_eq!(Event::decode(&event.encode()), Some(event));
    }
}

/// Messages as the Lua scripts and the local store publish them: the seed corpus
/// (`(file name, input)`).
pub fn seeds() -> Vec<(String, Vec<u8>)> {
    use tiercache_core::EventKind;
    let channel = KeySpace::default().namespace("users").channel;
    let event = |sequence, kind| Event { sequence, kind };
    [
        (
            "key-changed",
            event(
                17,
                EventKind::KeyChanged {
                    key: "user:42".into(),
                    version: 5,
                },
            ),
        ),
        (
            "key-deleted",
            event(
                18,
                EventKind::KeyChanged {
                    key: "a\tb".into(),
                    version: 0,
                },
            ),
        ),
        (
            "tags",
            event(
                19,
                EventKind::TagsInvalidated {
                    tags: vec!["user".into(), "team:7".into()],
                },
            ),
        ),
        ("flushed", event(20, EventKind::Flushed)),
        ("gap", event(21, EventKind::Gap { last_sequence: 16 })),
    ]
    .into_iter()
    .map(|(name, e)| {
        let mut input = channel.clone().into_bytes();
        input.push(0xff);
        input.extend_from_slice(e.encode_message(1_733_000_000_123).as_bytes());
        (name.to_string(), input)
    })
    .collect()
}
