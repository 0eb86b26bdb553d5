//! How the generated types serialize (`serde::Serialize`, derived in `build.rs`): enum fields,
//! which prost stores as `i32`, by their `.proto` value names. A value this build does not know
//! (a newer peer's) stays a number.

use serde::Serializer;

/// An enum of the API, by its `.proto` value names. Implemented for every enum by `build.rs`.
pub trait ProtoEnum: TryFrom<i32> {
    /// The `.proto` name of this value, e.g. `PROTOCOL_HTTP`.
    fn proto_name(&self) -> &'static str;
}

include!(concat!(env!("OUT_DIR"), "/serde_enums.rs"));

/// One enum field.
pub(crate) fn enum_name<E: ProtoEnum, S: Serializer>(
    value: &i32,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match E::try_from(*value) {
        Ok(known) => serializer.serialize_str(known.proto_name()),
        Err(_) => serializer.serialize_i32(*value),
    }
}

/// A proto3 `optional` enum field.
#[allow(dead_code)]
pub(crate) fn optional_enum_name<E: ProtoEnum, S: Serializer>(
    value: &Option<i32>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    match value {
        Some(value) => enum_name::<E, S>(value, serializer),
        None => serializer.serialize_none(),
    }
}

/// A repeated enum field.
#[allow(dead_code)]
pub(crate) fn enum_names<E: ProtoEnum, S: Serializer>(
    values: &[i32],
    serializer: S,
) -> Result<S::Ok, S::Error> {
    use serde::ser::SerializeSeq;
    let mut seq = serializer.serialize_seq(Some(values.len()))?;
    for value in values {
        seq.serialize_element(&Named::<E>(*value, std::marker::PhantomData))?;
    }
    seq.end()
}

struct Named<E>(i32, std::marker::PhantomData<E>);

impl<E: ProtoEnum> serde::Serialize for Named<E> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        enum_name::<E, S>(&self.0, serializer)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use crate::v1::*;

    #[test]
    fn messages_serialize_with_proto_names() {
        let port = Port {
            name: "http".into(),
            port: 8080,
            protocol: Protocol::Http as i32,
        };
        assert_eq!(
            serde_json::to_value(&port).unwrap(),
            serde_json::json!({"name": "http", "port": 8080, "protocol": "PROTOCOL_HTTP"})
        );
        // A value from a newer peer stays a number.
        let newer = Port {
            protocol: 99,
            ..port
        };
        assert_eq!(serde_json::to_value(&newer).unwrap()["protocol"], 99);
        // A oneof's case is a field of its message; an empty one is left out.
        let header = HeaderMatch {
            name: "x-canary".into(),
            r#match: Some(header_match::Match::Exact("1".into())),
        };
        assert_eq!(
            serde_json::to_value(&header).unwrap(),
            serde_json::json!({"name": "x-canary", "exact": "1"})
        );
        let any = HeaderMatch {
            name: "x".into(),
            r#match: None,
        };
        assert_eq!(
            serde_json::to_value(&any).unwrap(),
            serde_json::json!({"name": "x"})
        );
    }
}
