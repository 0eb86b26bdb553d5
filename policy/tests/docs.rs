//! Keeps `docs/policies.md` and the code from drifting apart: every ```yaml example in it must
//! be accepted, every kind must have one, and the documented error output must be exactly what
//! the parser prints for the documented bad file.

use std::collections::BTreeSet;
use std::path::Path;

use strait_policy::{Kind, parse_documents};

struct Block {
    info: String,
    /// 1-based line of the opening fence, for failure messages.
    line: usize,
    text: String,
}

fn blocks() -> Vec<Block> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/policies.md");
    let doc = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let mut blocks = Vec::new();
    let mut open: Option<Block> = None;
    for (i, line) in doc.lines().enumerate() {
        match (&mut open, line.strip_prefix("```")) {
            (None, Some(info)) => {
                open = Some(Block {
                    info: info.trim().to_owned(),
                    line: i + 1,
                    text: String::new(),
                });
            }
            (Some(_), Some(rest)) if rest.trim().is_empty() => blocks.extend(open.take()),
            (Some(block), _) => {
                block.text.push_str(line);
                block.text.push('\n');
            }
            (None, None) => {}
        }
    }
    assert!(open.is_none(), "unclosed code block in docs/policies.md");
    blocks
}

#[test]
fn every_yaml_example_is_accepted_and_every_kind_has_one() {
    let mut kinds = BTreeSet::new();
    let mut examples = 0;
    for block in blocks().iter().filter(|b| b.info == "yaml") {
        let source = format!("docs/policies.md:{}", block.line);
        match parse_documents(&block.text, &source) {
            Ok(resources) => kinds.extend(resources.iter().map(|r| r.kind)),
            Err(e) => panic!("example refused:\n{e}\n---\n{}", block.text),
        }
        examples += 1;
    }
    assert!(examples >= Kind::ALL.len(), "only {examples} examples");
    let missing: Vec<Kind> = Kind::ALL
        .into_iter()
        .filter(|k| !kinds.contains(k))
        .collect();
    assert!(missing.is_empty(), "kinds without an example: {missing:?}");
}

#[test]
fn documented_errors_are_the_real_ones() {
    let all = blocks();
    let refused = all
        .iter()
        .position(|b| b.info == "yaml refused")
        .unwrap_or_else(|| panic!("no ```yaml refused block"));
    let expected = all[refused + 1..]
        .iter()
        .find(|b| b.info == "text")
        .unwrap_or_else(|| panic!("no ```text block after the refused example"));
    let got = match parse_documents(&all[refused].text, "bad.yaml") {
        Ok(r) => panic!("the refused example was accepted: {r:?}"),
        Err(e) => e.to_string(),
    };
    assert_eq!(got.trim_end(), expected.text.trim_end());
}

/// The example files the README points at must be valid too.
#[test]
fn example_files_are_valid() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples");
    let mut seen = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap_or_else(|e| panic!("{e}")).path();
        if path.extension().is_some_and(|e| e == "yaml") {
            let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{e}"));
            if let Err(err) = parse_documents(&text, &path.display().to_string()) {
                panic!("{err}");
            }
            seen += 1;
        }
    }
    assert!(seen > 0, "no example in {}", dir.display());
}
