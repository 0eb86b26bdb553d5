//! Compiles the `.proto` files with protox (a pure-Rust protobuf compiler), so building Strait
//! needs no system `protoc`.
//!
//! Every generated type also derives `serde::Serialize`, for JSON views of what a component
//! runs (the sidecar's `/config`): field names as in the `.proto` files, enum fields by their
//! value names (`PROTOCOL_HTTP`, see `src/json.rs`), a oneof's chosen case as a field of its
//! message (`{"name": "x-canary", "exact": "1"}`). The attributes that need are derived from
//! the descriptors here, so a new field or message needs nothing written by hand.

use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};
use std::fmt::Write as _;
use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "proto/strait/v1/common.proto",
    "proto/strait/v1/admin.proto",
    "proto/strait/v1/zonesync.proto",
    "proto/strait/v1/identity.proto",
    "proto/strait/v1/discovery.proto",
    "proto/strait/v1/tunnel.proto",
    "proto/strait/v1/raft.proto",
];

/// The demo workload's API (package `strait.demo.v1`): compiled on its own, without the serde
/// attributes of Strait's wire APIs (nothing shows it as JSON).
const DEMO_PROTOS: &[&str] = &["proto/strait/demo/v1/greeter.proto"];

/// The one package, and the Rust module it is generated into (`src/lib.rs`).
const PACKAGE: &str = ".strait.v1";
const MODULE: &str = "crate::v1";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let descriptors = protox::compile(PROTOS, ["proto"])?;
    // Kept for reflection and tooling; `compile_fds` does not write it for us.
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("strait_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;
    let mut serde = Serde::default();
    serde.walk(&descriptors)?;
    std::fs::write(out.join("serde_enums.rs"), &serde.enum_impls)?;
    let mut config =
        tonic_prost_build::configure().type_attribute(PACKAGE, "#[derive(serde::Serialize)]");
    for (path, attribute) in serde.types {
        config = config.type_attribute(path, attribute);
    }
    for (path, attribute) in serde.fields {
        // Without the leading dot the path only matches this field as a suffix: as a
        // fully-qualified path it would also be a prefix of a oneof's cases, which are fields
        // of `Message.oneof` to prost.
        config = config.field_attribute(path.trim_start_matches('.'), attribute);
    }
    config.compile_fds(descriptors)?;

    for proto in DEMO_PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    tonic_prost_build::configure().compile_fds(protox::compile(DEMO_PROTOS, ["proto"])?)?;
    Ok(())
}

/// The serde attributes of the generated code, found in the descriptors.
#[derive(Default)]
struct Serde {
    types: Vec<(String, String)>,
    fields: Vec<(String, String)>,
    /// `impl ProtoEnum for ...` of every enum (included by `src/json.rs`).
    enum_impls: String,
}

impl Serde {
    fn walk(&mut self, set: &FileDescriptorSet) -> Result<(), Box<dyn std::error::Error>> {
        for file in &set.file {
            let package = format!(".{}", file.package());
            if package != PACKAGE {
                return Err(format!("{}: package {package}, not {PACKAGE}", file.name()).into());
            }
            for e in &file.enum_type {
                self.enum_impl(&format!("{package}.{}", e.name()))?;
            }
            for message in &file.message_type {
                self.message(&package, message)?;
            }
        }
        Ok(())
    }

    fn message(
        &mut self,
        parent: &str,
        message: &DescriptorProto,
    ) -> Result<(), Box<dyn std::error::Error>> {
        let path = format!("{parent}.{}", message.name());
        for e in &message.enum_type {
            self.enum_impl(&format!("{path}.{}", e.name()))?;
        }
        for field in &message.field {
            // An enum as a case of a oneof stays a number: prost makes it a tuple variant.
            let oneof_case = field.oneof_index.is_some() && !field.proto3_optional();
            if field.r#type() != Type::Enum || oneof_case {
                continue;
            }
            let with = if field.label() == Label::Repeated {
                "enum_names"
            } else if field.proto3_optional() {
                "optional_enum_name"
            } else {
                "enum_name"
            };
            self.fields.push((
                format!("{path}.{}", field.name()),
                format!(
                    "#[serde(serialize_with = \"crate::json::{with}::<{}, _>\")]",
                    rust_path(field.type_name())?
                ),
            ));
        }
        // Real oneofs (not the synthetic ones of proto3 `optional` fields): the chosen case
        // as a field of the message.
        for (index, oneof) in message.oneof_decl.iter().enumerate() {
            let synthetic = message.field.iter().any(|f| {
                f.proto3_optional()
                    && f.oneof_index.and_then(|i| usize::try_from(i).ok()) == Some(index)
            });
            if synthetic {
                continue;
            }
            let oneof_path = format!("{path}.{}", oneof.name());
            self.fields
                .push((oneof_path.clone(), "#[serde(flatten)]".to_owned()));
            self.types.push((
                oneof_path,
                "#[serde(rename_all = \"snake_case\")]".to_owned(),
            ));
        }
        for nested in &message.nested_type {
            if nested.options.as_ref().is_some_and(|o| o.map_entry()) {
                continue;
            }
            self.message(&path, nested)?;
        }
        Ok(())
    }

    fn enum_impl(&mut self, proto_path: &str) -> Result<(), Box<dyn std::error::Error>> {
        writeln!(
            self.enum_impls,
            "impl ProtoEnum for {} {{ fn proto_name(&self) -> &'static str {{ self.as_str_name() }} }}",
            rust_path(proto_path)?
        )?;
        Ok(())
    }
}

/// `.strait.v1.Protocol` → `crate::v1::Protocol`; a nested `.strait.v1.Foo.Bar` →
/// `crate::v1::foo::Bar` (prost's module per message).
fn rust_path(proto_path: &str) -> Result<String, Box<dyn std::error::Error>> {
    let rest = proto_path
        .strip_prefix(PACKAGE)
        .and_then(|r| r.strip_prefix('.'))
        .ok_or_else(|| format!("{proto_path} is not in {PACKAGE}"))?;
    let mut parts: Vec<&str> = rest.split('.').collect();
    let name = parts.pop().unwrap_or_default();
    let mut path = MODULE.to_owned();
    for module in parts {
        path.push_str("::");
        path.push_str(&snake_case(module));
    }
    path.push_str("::");
    path.push_str(name);
    Ok(path)
}

/// `LocalityGroup` → `locality_group`, as prost names a message's module.
fn snake_case(name: &str) -> String {
    let mut out = String::new();
    let mut previous_lower = false;
    for c in name.chars() {
        if c.is_ascii_uppercase() {
            if previous_lower {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
            previous_lower = false;
        } else {
            out.push(c);
            previous_lower = c.is_ascii_lowercase() || c.is_ascii_digit();
        }
    }
    out
}
