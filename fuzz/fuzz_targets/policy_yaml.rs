//! Policy YAML (`strait_policy::parse_documents`): what `strait apply -f` reads from a user,
//! and the JSON form (`Resource::from_json`) zones read from global's snapshot.
//!
//! Invariants: no panic; whatever parses prints back (`to_yaml_documents`) to YAML that parses
//! to the same resources; whatever JSON decodes re-encodes to JSON that decodes to the same.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_policy::{Resource, parse_documents, to_yaml_documents};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(resources) = parse_documents(text, "fuzz.yaml") {
        assert!(!resources.is_empty(), "a file with no resource is an error");
        let yaml = to_yaml_documents(&resources)
            .unwrap_or_else(|e| panic!("a parsed resource does not print: {e}"));
        let again = parse_documents(&yaml, "printed.yaml")
            .unwrap_or_else(|e| panic!("printed YAML does not parse: {e}\n{yaml}"));
        assert!(
            again == resources,
            "YAML round trip changed the resources:\n{yaml}"
        );
    }
    if let Ok(resource) = Resource::from_json(text) {
        let json = resource
            .to_json()
            .unwrap_or_else(|e| panic!("a decoded resource does not encode: {e}"));
        let again = Resource::from_json(&json)
            .unwrap_or_else(|e| panic!("encoded JSON does not decode: {e}\n{json}"));
        assert!(
            again == resource,
            "JSON round trip changed the resource:\n{json}"
        );
    }
});
