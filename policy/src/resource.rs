//! [`Resource`]: the envelope (`apiVersion`, `kind`, `metadata`, `spec`) around a spec, how it
//! is read from a generic value, written as JSON or YAML, and validated.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::Value;

use crate::check::Checker;
use crate::error::{FieldError, PolicyError, ProblemKind};
use crate::kind::Kind;
use crate::meta::{Metadata, ResourceKey};
use crate::spec::{Spec, decode_at};

/// The only `apiVersion` this version reads and writes.
pub const API_VERSION: &str = "strait.dev/v1alpha1";

const TOP_LEVEL_FIELDS: [&str; 4] = ["apiVersion", "kind", "metadata", "spec"];

/// One policy resource.
///
/// `kind` is kept next to `spec` because that is how users read and write resources; the two
/// must agree, which [`validate`] checks. [`Resource::new`] fills both from the spec.
///
/// Serde: writes the YAML/JSON envelope; reading checks structure, types and unknown fields
/// (so stored resources written by this version always load), not the semantic rules of
/// [`validate`], which [`crate::parse_documents`] applies on the way in.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    pub api_version: String,
    pub kind: Kind,
    pub metadata: Metadata,
    pub spec: Spec,
}

impl Resource {
    /// A resource of the current `apiVersion`, with the kind of `spec`.
    pub fn new(metadata: Metadata, spec: Spec) -> Self {
        Self {
            api_version: API_VERSION.to_owned(),
            kind: spec.kind(),
            metadata,
            spec,
        }
    }

    /// What identifies this resource in the store.
    pub fn key(&self) -> ResourceKey {
        ResourceKey {
            kind: self.kind,
            namespace: self.metadata.namespace.clone(),
            name: self.metadata.name.clone(),
        }
    }

    /// Compact JSON, as stored in Raft.
    pub fn to_json(&self) -> Result<String, PolicyError> {
        serde_json::to_string(self).map_err(|e| PolicyError::Encode {
            what: self.key().to_string(),
            format: "JSON",
            message: e.to_string(),
        })
    }

    /// Read a resource written by [`Resource::to_json`].
    pub fn from_json(json: &str) -> Result<Resource, PolicyError> {
        serde_json::from_str(json).map_err(|e| PolicyError::Decode {
            message: e.to_string(),
        })
    }

    /// One YAML document (without `---`), as `strait get -o yaml` prints it.
    pub fn to_yaml(&self) -> Result<String, PolicyError> {
        serde_saphyr::to_string(self).map_err(|e| PolicyError::Encode {
            what: self.key().to_string(),
            format: "YAML",
            message: e.to_string(),
        })
    }
}

/// Several resources as one YAML stream, documents separated by `---`; what
/// [`crate::parse_documents`] reads back to the same resources.
pub fn to_yaml_documents(resources: &[Resource]) -> Result<String, PolicyError> {
    let mut out = String::new();
    for (i, r) in resources.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        let doc = r.to_yaml()?;
        out.push_str(&doc);
        if !doc.ends_with('\n') {
            out.push('\n');
        }
    }
    Ok(out)
}

/// Check every rule a resource must follow beyond its structure: names, ranges, consistency
/// between fields. Returns every problem, each with its field path.
pub fn validate(resource: &Resource) -> Result<(), Vec<FieldError>> {
    let mut c = Checker::default();
    if resource.api_version != API_VERSION {
        c.err(
            "apiVersion",
            format!(
                "unsupported apiVersion {:?}; expected {API_VERSION}",
                resource.api_version
            ),
        );
    }
    if resource.kind != resource.spec.kind() {
        c.err(
            "kind",
            format!(
                "kind {} does not match a spec of kind {}",
                resource.kind,
                resource.spec.kind()
            ),
        );
    }
    resource.metadata.check(&mut c);
    resource.spec.check(&mut c);
    if c.errors.is_empty() {
        Ok(())
    } else {
        Err(c.errors)
    }
}

#[derive(Serialize)]
struct Envelope<'a> {
    #[serde(rename = "apiVersion")]
    api_version: &'a str,
    kind: Kind,
    metadata: &'a Metadata,
    spec: &'a Spec,
}

impl Serialize for Resource {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        Envelope {
            api_version: &self.api_version,
            kind: self.kind,
            metadata: &self.metadata,
            spec: &self.spec,
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = Value::deserialize(deserializer)?;
        decode_resource(value).map_err(|problems| {
            let text: Vec<String> = problems.iter().map(ToString::to_string).collect();
            serde::de::Error::custom(text.join("; "))
        })
    }
}

fn describe(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Read the envelope and the typed spec from a generic value. Reports a problem for each of
/// `apiVersion`, `kind`, `metadata` and `spec` independently, so one run shows them all.
pub(crate) fn decode_resource(value: Value) -> Result<Resource, Vec<ProblemKind>> {
    let Value::Object(mut map) = value else {
        return Err(vec![ProblemKind::NotAMapping {
            found: describe(&value),
        }]);
    };
    let mut problems: Vec<ProblemKind> = Vec::new();
    let expected = TOP_LEVEL_FIELDS.map(|f| format!("`{f}`")).join(", ");
    for key in map.keys() {
        if !TOP_LEVEL_FIELDS.contains(&key.as_str()) {
            problems.push(field(
                key,
                format!("unknown field `{key}`, expected one of {expected}"),
            ));
        }
    }

    let api_version = match map.remove("apiVersion") {
        Some(Value::String(v)) if v == API_VERSION => Some(v),
        Some(Value::String(v)) => {
            problems.push(field(
                "apiVersion",
                format!("unsupported apiVersion {v:?}; expected {API_VERSION}"),
            ));
            None
        }
        Some(other) => {
            problems.push(field(
                "apiVersion",
                format!(
                    "expected the string {API_VERSION}, found {}",
                    describe(&other)
                ),
            ));
            None
        }
        None => {
            problems.push(field(
                "apiVersion",
                format!("missing field `apiVersion` (use {API_VERSION})"),
            ));
            None
        }
    };

    let kind = match map.remove("kind") {
        Some(Value::String(k)) => match k.parse::<Kind>() {
            Ok(kind) => Some(kind),
            Err(_) => {
                problems.push(ProblemKind::UnknownKind {
                    suggestion: Kind::from_str_case_insensitive(&k).ok(),
                    kind: k,
                });
                None
            }
        },
        Some(other) => {
            problems.push(field(
                "kind",
                format!("expected a kind name, found {}", describe(&other)),
            ));
            None
        }
        None => {
            problems.push(field("kind", "missing field `kind`".to_owned()));
            None
        }
    };

    let metadata = match map.remove("metadata") {
        Some(v @ Value::Object(_)) => match decode_at::<Metadata>("metadata", v) {
            Ok(m) => Some(m),
            Err(e) => {
                problems.push(ProblemKind::Field(e));
                None
            }
        },
        Some(other) => {
            problems.push(field(
                "metadata",
                format!(
                    "expected a mapping with name and namespace, found {}",
                    describe(&other)
                ),
            ));
            None
        }
        None => {
            problems.push(field("metadata", "missing field `metadata`".to_owned()));
            None
        }
    };

    let spec = match (map.remove("spec"), kind) {
        (Some(v @ Value::Object(_)), Some(kind)) => match Spec::decode(kind, v) {
            Ok(s) => Some(s),
            Err(e) => {
                problems.push(ProblemKind::Field(e));
                None
            }
        },
        // Without a known kind there is no schema to read the spec with.
        (Some(Value::Object(_)), None) => None,
        (Some(other), _) => {
            problems.push(field(
                "spec",
                format!("expected a mapping, found {}", describe(&other)),
            ));
            None
        }
        (None, _) => {
            problems.push(field("spec", "missing field `spec`".to_owned()));
            None
        }
    };

    match (api_version, kind, metadata, spec) {
        (Some(api_version), Some(kind), Some(metadata), Some(spec)) if problems.is_empty() => {
            Ok(Resource {
                api_version,
                kind,
                metadata,
                spec,
            })
        }
        _ => Err(problems),
    }
}

fn field(path: &str, reason: impl Into<String>) -> ProblemKind {
    ProblemKind::Field(FieldError::new(path, reason))
}
