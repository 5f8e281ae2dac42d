//! The codec of every v1 service: prost, except that a request prost cannot decode is answered
//! `INVALID_ARGUMENT` naming the field at fault (`key`, `keys[2]`, `requests[3].tags[0]`,
//! `set.key` in a pipeline), never `INTERNAL`.
//!
//! Decoding takes the message as one `Bytes` (a zero-copy split of tonic's buffer), so when prost
//! fails, [`malformed`] walks the same bytes against the API's descriptors to find the first field
//! that breaks the wire format or holds invalid UTF-8 in a `string`.

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::OnceLock;

use bytes::Buf;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic::Status;
use tonic_prost::ProstEncoder;

use crate::error::ApiError;

/// The server codec: prost encoding, and decoding that names the malformed field.
#[derive(Debug)]
pub struct ServerCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for ServerCodec<T, U> {
    fn default() -> Self {
        Self { _pd: PhantomData }
    }
}

impl<T, U> Codec for ServerCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ServerDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ServerDecoder { _pd: PhantomData }
    }
}

/// Decodes `U`; a message prost refuses becomes [`ApiError::Malformed`].
#[derive(Debug)]
pub struct ServerDecoder<U> {
    _pd: PhantomData<U>,
}

impl<U: Message + Default> Decoder for ServerDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        match U::decode(bytes.clone()) {
            Ok(m) => Ok(Some(m)),
            Err(e) => Err(malformed(&message_name::<U>(), &bytes, &e.to_string()).into()),
        }
    }
}

/// The protobuf name of a generated message type: `tiercache_proto::v1::SetRequest` →
/// `tiercache.v1.SetRequest` (every request type is top-level in the package).
fn message_name<U>() -> String {
    let rust = std::any::type_name::<U>();
    let last = rust.rsplit("::").next().unwrap_or(rust);
    format!("tiercache.v1.{last}")
}

/// Explains why `bytes` is not a valid `message` (its protobuf full name, without the leading
/// dot): the first field that breaks the wire format or holds invalid UTF-8, or, when no field
/// can be blamed, the message itself with prost's `reason`.
pub fn malformed(message: &str, bytes: &[u8], reason: &str) -> ApiError {
    let (field, description) = match descriptors().get(&format!(".{message}")) {
        Some(d) => match find_fault(d, bytes, "") {
            Some(fault) => fault,
            None => (String::new(), reason.to_string()),
        },
        None => (String::new(), reason.to_string()),
    };
    ApiError::Malformed {
        message: message.to_string(),
        field,
        description,
    }
}

/// Every message of the v1 API (and its imports) by full name (`.tiercache.v1.SetRequest`).
fn descriptors() -> &'static HashMap<String, DescriptorProto> {
    static MAP: OnceLock<HashMap<String, DescriptorProto>> = OnceLock::new();
    MAP.get_or_init(|| {
        let mut map = HashMap::new();
        let Ok(fds) = FileDescriptorSet::decode(tiercache_proto::FILE_DESCRIPTOR_SET) else {
            return map;
        };
        fn add(map: &mut HashMap<String, DescriptorProto>, prefix: &str, d: &DescriptorProto) {
            let name = format!("{prefix}.{}", d.name());
            for nested in &d.nested_type {
                add(map, &name, nested);
            }
            map.insert(name, d.clone());
        }
        for file in &fds.file {
            let prefix = if file.package().is_empty() {
                String::new()
            } else {
                format!(".{}", file.package())
            };
            for d in &file.message_type {
                add(&mut map, &prefix, d);
            }
        }
        map
    })
}

fn varint(buf: &mut &[u8]) -> Option<u64> {
    prost::encoding::decode_varint(buf).ok()
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

/// Walks `bytes` as a `d` and returns the first fault: `(field path, description)`.
fn find_fault(d: &DescriptorProto, mut buf: &[u8], path: &str) -> Option<(String, String)> {
    let mut seen: HashMap<i32, usize> = HashMap::new();
    while !buf.is_empty() {
        let Some(key) = varint(&mut buf) else {
            return Some((path.to_string(), "truncated field key".into()));
        };
        let (number, wire) = ((key >> 3) as i32, key & 7);
        let field = d.field.iter().find(|f| f.number() == number);
        let name = match field {
            Some(f) if f.label() == Label::Repeated => {
                let i = seen.entry(number).or_default();
                *i += 1;
                format!("{}[{}]", f.name(), *i - 1)
            }
            Some(f) => f.name().to_string(),
            None => format!("#{number}"),
        };
        let here = join(path, &name);
        if number == 0 {
            return Some((path.to_string(), "field number 0 is invalid".into()));
        }
        match wire {
            0 => {
                if varint(&mut buf).is_none() {
                    return Some((here, "truncated varint".into()));
                }
                if field.is_some_and(|f| matches!(f.r#type(), Type::String | Type::Message)) {
                    return Some((here, "wrong wire type (varint)".into()));
                }
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                if buf.len() < n {
                    return Some((here, "truncated fixed-width value".into()));
                }
                buf = &buf[n..];
            }
            2 => {
                let Some(len) = varint(&mut buf) else {
                    return Some((here, "truncated length".into()));
                };
                let len = usize::try_from(len).unwrap_or(usize::MAX);
                if len > buf.len() {
                    return Some((here, "length runs past the end of the message".into()));
                }
                let (data, rest) = buf.split_at(len);
                buf = rest;
                match field.map(|f| f.r#type()) {
                    Some(Type::String) if std::str::from_utf8(data).is_err() => {
                        return Some((here, "must be valid UTF-8".into()));
                    }
                    Some(Type::Message) => {
                        let nested = field.and_then(|f| descriptors().get(f.type_name()));
                        if let Some(fault) = nested.and_then(|n| find_fault(n, data, &here)) {
                            return Some(fault);
                        }
                    }
                    _ => {}
                }
            }
            3 | 4 => return Some((here, "groups are not supported".into())),
            _ => return Some((here, format!("invalid wire type {wire}"))),
        }
    }
    None
}

/// Reads field 1 (a varint: the `id` of a `PipelineRequest`) from a message that may be
/// malformed later on.
pub fn leading_id(mut buf: &[u8]) -> Option<u64> {
    while !buf.is_empty() {
        let key = varint(&mut buf)?;
        let (number, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let v = varint(&mut buf)?;
                if number == 1 {
                    return Some(v);
                }
            }
            1 | 5 => {
                let n = if wire == 1 { 8 } else { 4 };
                buf = buf.get(n..)?;
            }
            2 => {
                let len = usize::try_from(varint(&mut buf)?).ok()?;
                buf = buf.get(len..)?;
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use tiercache_proto::v1 as pb;

    fn fault(message: &str, bytes: &[u8]) -> (String, String) {
        match malformed(message, bytes, "prost") {
            ApiError::Malformed {
                field, description, ..
            } => (field, description),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn invalid_utf8_key_is_named() {
        let bytes = [
            0x0a, 0x02, 0x68, 0x37, 0x12, 0x09, 0x62, 0x61, 0x64, 0xff, 0xfe, 0xc0, 0x6b, 0x65,
            0x79, 0x1a, 0x01, 0x76,
        ];
        assert!(pb::SetRequest::decode(&bytes[..]).is_err());
        let (field, description) = fault("tiercache.v1.SetRequest", &bytes);
        assert_eq!(field, "key");
        assert!(description.contains("UTF-8"), "{description}");
    }

    #[test]
    fn repeated_and_nested_fields_are_indexed() {
        let ok = pb::GetManyRequest {
            namespace: "default".into(),
            keys: vec!["a".into(), "b".into(), "c".into()],
            ..Default::default()
        }
        .encode_to_vec();
        let mut bad = ok.clone();
        let at = bad.iter().rposition(|&b| b == b'c').unwrap();
        bad[at] = 0xff;
        assert_eq!(fault("tiercache.v1.GetManyRequest", &bad).0, "keys[2]");

        let set = pb::SetRequest {
            namespace: "default".into(),
            key: "kk".into(),
            ..Default::default()
        };
        let mut bytes = pb::PipelineRequest {
            id: 42,
            operation: Some(pb::pipeline_request::Operation::Set(set)),
        }
        .encode_to_vec();
        let at = bytes.iter().rposition(|&b| b == b'k').unwrap();
        bytes[at] = 0xc0;
        assert_eq!(fault("tiercache.v1.PipelineRequest", &bytes).0, "set.key");
        assert_eq!(leading_id(&bytes), Some(42));
    }

    #[test]
    fn truncated_message_names_the_field() {
        let mut bytes = pb::GetRequest {
            namespace: "default".into(),
            key: "abcdef".into(),
            ..Default::default()
        }
        .encode_to_vec();
        bytes.truncate(bytes.len() - 2);
        let (field, description) = fault("tiercache.v1.GetRequest", &bytes);
        assert_eq!(field, "key");
        assert!(description.contains("past the end"), "{description}");
    }
}
