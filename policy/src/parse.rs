//! [`parse_documents`]: a multi-document YAML file to validated resources, all or nothing.

use std::collections::HashMap;

use serde_json::Value;

use crate::error::{PolicyError, Problem, ProblemKind};
use crate::meta::{DEFAULT_NAMESPACE, ResourceKey};
use crate::resource::{Resource, decode_resource, validate};

/// The largest policy file accepted. Far above any hand-written file, and small enough that a
/// whole file fits in one Raft entry.
pub const MAX_FILE_BYTES: usize = 4 * 1024 * 1024;

/// Parse and validate every resource of a YAML file whose documents are separated by `---`.
///
/// All or nothing: if any document has any problem, the result is an error listing every
/// problem of every document (YAML syntax with line and column, unknown kinds, unknown or
/// invalid fields with their paths, duplicate resources), and no resource. Empty documents are
/// skipped; a file with no resource at all is an error. `source` names the text in messages
/// (a file name, or `-` for standard input).
///
/// Never panics, whatever the input.
pub fn parse_documents(text: &str, source: &str) -> Result<Vec<Resource>, PolicyError> {
    if text.len() > MAX_FILE_BYTES {
        return Err(PolicyError::TooLarge {
            file: source.to_owned(),
            size: text.len(),
            limit: MAX_FILE_BYTES,
        });
    }
    let mut resources = Vec::new();
    let mut problems = Vec::new();
    let mut seen: HashMap<ResourceKey, usize> = HashMap::new();
    let mut document = 0;

    for chunk in split_documents(text) {
        let value = match serde_saphyr::from_str::<Option<Value>>(&chunk.text) {
            Ok(Some(value)) => value,
            // Empty documents (only comments, or a stray `---`) are not resources.
            Ok(None) => continue,
            Err(e) => {
                document += 1;
                problems.push(yaml_problem(document, &chunk, &e));
                continue;
            }
        };
        document += 1;
        // Read leniently before decoding, so every problem can say which resource it is about
        // even when the resource itself does not decode.
        let text_at = |pointer: &str| value.pointer(pointer).and_then(Value::as_str);
        let kind = text_at("/kind").map(str::to_owned);
        let name = text_at("/metadata/name").map(str::to_owned);
        let namespace = name.as_ref().map(|_| {
            text_at("/metadata/namespace")
                .unwrap_or(DEFAULT_NAMESPACE)
                .to_owned()
        });
        let line = chunk.start_line();
        let mut report = |detail: ProblemKind| {
            problems.push(Problem {
                document,
                line,
                kind: kind.clone(),
                namespace: namespace.clone(),
                name: name.clone(),
                detail,
            });
        };

        let resource = match decode_resource(value) {
            Ok(r) => r,
            Err(found) => {
                found.into_iter().for_each(&mut report);
                continue;
            }
        };
        if let Err(errors) = validate(&resource) {
            errors
                .into_iter()
                .for_each(|e| report(ProblemKind::Field(e)));
            continue;
        }
        if let Some(first) = seen.get(&resource.key()) {
            report(ProblemKind::Duplicate {
                first_document: *first,
            });
            continue;
        }
        seen.insert(resource.key(), document);
        resources.push(resource);
    }

    if !problems.is_empty() {
        return Err(PolicyError::Invalid {
            file: source.to_owned(),
            problems,
        });
    }
    if resources.is_empty() {
        return Err(PolicyError::NoResources {
            file: source.to_owned(),
        });
    }
    Ok(resources)
}

fn yaml_problem(document: usize, chunk: &Chunk, e: &serde_saphyr::Error) -> Problem {
    let inner = e.without_snippet();
    let (line, column, message) = match inner.location() {
        Some(loc) => {
            let full = inner.to_string();
            // The library appends " at line L, column C" relative to the document; the
            // position is reported separately, relative to the file.
            let suffix = format!(" at line {}, column {}", loc.line(), loc.column());
            let message = full.strip_suffix(&suffix).unwrap_or(&full).to_owned();
            let line = loc
                .line()
                .saturating_add(chunk.first_line as u64)
                .saturating_sub(1);
            (line, loc.column(), message)
        }
        None => (chunk.first_line as u64, 1, inner.to_string()),
    };
    Problem {
        document,
        line: chunk.start_line(),
        kind: None,
        namespace: None,
        name: None,
        detail: ProblemKind::Yaml {
            line,
            column,
            message,
        },
    }
}

/// One document's text, with the line (1-based) of the file it starts on.
#[derive(Debug)]
struct Chunk {
    text: String,
    /// The file line of the first line of `text`; YAML positions are relative to it.
    first_line: usize,
    /// The file line of the document's first content (not `---`, a comment or a blank line),
    /// which is what a user looks for when told "document 3 (line 40)".
    content_line: Option<usize>,
}

impl Chunk {
    fn new(first_line: usize) -> Self {
        Self {
            text: String::new(),
            first_line,
            content_line: None,
        }
    }

    fn start_line(&self) -> usize {
        self.content_line.unwrap_or(self.first_line)
    }
}

/// Split a YAML stream into documents at `---` and `...` markers.
///
/// Done here rather than by the YAML library so that one broken document does not hide the
/// problems of the others, and so document numbers count the documents a user sees. Per the
/// YAML spec a marker at column 0 always ends a document, even inside a block scalar, so a
/// line-based split is exact. The `---` itself is replaced by spaces so content after it on
/// the same line (`--- {a: 1}`) keeps its column.
fn split_documents(text: &str) -> Vec<Chunk> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut chunks = Vec::new();
    let mut current = Chunk::new(1);
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let line_no = index + 1;
        if is_marker(line, "---") {
            chunks.push(std::mem::replace(&mut current, Chunk::new(line_no)));
            current.text.push_str("   ");
            current.text.push_str(&line[3..]);
            if !line[3..].trim().is_empty() {
                current.content_line = Some(line_no);
            }
            continue;
        }
        if is_marker(line, "...") {
            // Lines after `...` and before the next `---` belong to no document; they go to a
            // document of their own, so junk there is still reported.
            chunks.push(std::mem::replace(&mut current, Chunk::new(line_no + 1)));
            continue;
        }
        if current.content_line.is_none() && line.starts_with('%') {
            // A directive (`%YAML 1.2`) before the document's content. Its only effect would
            // be the YAML version, which does not vary here; keep the line count for positions.
            current.text.push('\n');
            continue;
        }
        let trimmed = line.trim_start();
        if current.content_line.is_none() && !trimmed.is_empty() && !trimmed.starts_with('#') {
            current.content_line = Some(line_no);
        }
        current.text.push_str(line);
    }
    chunks.push(current);
    chunks
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t', '\r', '\n']))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_keeps_positions_and_ignores_indented_markers() {
        let text = "a: 1\n---\n# c\nb: |\n  ---\n  text\n--- {c: 3}\n...\n%junk\n";
        let chunks = split_documents(text);
        let starts: Vec<(usize, Option<usize>)> = chunks
            .iter()
            .map(|c| (c.first_line, c.content_line))
            .collect();
        assert_eq!(
            starts,
            vec![(1, Some(1)), (2, Some(4)), (7, Some(7)), (9, None)]
        );
        assert!(chunks[1].text.contains("  ---\n  text\n"));
        assert_eq!(chunks[2].text, "    {c: 3}\n");
        // A directive after `...` is dropped (its line kept for positions), leaving an empty
        // document that parse_documents skips.
        assert_eq!(chunks[3].text, "\n");
    }
}
