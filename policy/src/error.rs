//! Errors of the policy crate: what a user sees when `strait apply -f` refuses a file.
//!
//! Every problem names where it is (document, resource, field path) and why it is wrong, so a
//! user can fix a file with several mistakes in one edit instead of one run per mistake.

use std::fmt;

use crate::kind::Kind;

/// One thing wrong with one field of a resource.
///
/// `path` is the field path from the top of the document, as a user would write it
/// (`spec.rules[0].split[1].weight`); it is empty when the problem is the document as a whole.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render_field(path, reason))]
pub struct FieldError {
    /// Where: `spec.request`, `metadata.name`, `spec.rules[0].matches[1].path`.
    pub path: String,
    /// Why, in words a user can act on.
    pub reason: String,
}

fn render_field(path: &str, reason: &str) -> String {
    if path.is_empty() {
        reason.to_owned()
    } else {
        format!("{path}: {reason}")
    }
}

impl FieldError {
    /// A problem at `path` (empty for the whole document).
    pub fn new(path: impl Into<String>, reason: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            reason: reason.into(),
        }
    }
}

/// What is wrong with one document of a file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProblemKind {
    /// The text is not YAML. `line` and `column` are 1-based and count from the start of the
    /// file, not of the document.
    #[error("invalid YAML at line {line}, column {column}: {message}")]
    Yaml {
        line: u64,
        column: u64,
        message: String,
    },
    /// The document is YAML, but a scalar or a list where a resource (a mapping) belongs.
    #[error(
        "a resource must be a mapping with apiVersion, kind, metadata and spec, but this document is {found}"
    )]
    NotAMapping { found: &'static str },
    /// `kind` names no kind this version knows.
    #[error("{}", render_unknown_kind(kind, suggestion))]
    UnknownKind {
        kind: String,
        /// The kind the user probably meant (same letters, other case).
        suggestion: Option<Kind>,
    },
    /// A field is missing, unknown, of the wrong type or out of range.
    #[error(transparent)]
    Field(#[from] FieldError),
    /// The same (kind, namespace, name) was already defined earlier in the same file: applying
    /// both would make the result depend on document order.
    #[error(
        "duplicate resource: document {first_document} already defines the same kind, namespace and name"
    )]
    Duplicate { first_document: usize },
}

fn render_unknown_kind(kind: &str, suggestion: &Option<Kind>) -> String {
    let valid = Kind::ALL.map(Kind::as_str).join(", ");
    match suggestion {
        Some(s) => format!("unknown kind {kind:?} (did you mean {s}?); valid kinds: {valid}"),
        None => format!("unknown kind {kind:?}; valid kinds: {valid}"),
    }
}

/// A problem together with where it is in the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// 1-based index of the document among the non-empty documents of the file.
    pub document: usize,
    /// 1-based line of the file where the document starts.
    pub line: usize,
    /// The document's `kind`, when it has one (even an unknown one).
    pub kind: Option<String>,
    /// The document's namespace, when known (`default` when `metadata` leaves it out).
    pub namespace: Option<String>,
    /// The document's `metadata.name`, when known.
    pub name: Option<String>,
    /// What is wrong.
    pub detail: ProblemKind,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {} (line {}", self.document, self.line)?;
        if let Some(kind) = &self.kind {
            write!(f, ", {kind}")?;
            if let Some(name) = &self.name {
                let ns = self
                    .namespace
                    .as_deref()
                    .unwrap_or(crate::DEFAULT_NAMESPACE);
                write!(f, " {ns}/{name}")?;
            }
        }
        write!(f, "): {}", self.detail)
    }
}

/// Why a file or a resource was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// One or more documents are invalid; nothing in the file may be applied.
    #[error("{}", render_invalid(file, problems))]
    Invalid {
        /// Where the text came from (a file name, `-` for standard input).
        file: String,
        /// Every problem found, in document order.
        problems: Vec<Problem>,
    },
    /// The file holds no resource at all (empty, or only comments and `---`).
    #[error("{file}: no resources found (the file is empty or holds only comments)")]
    NoResources { file: String },
    /// The file is larger than a policy file can reasonably be; refused before parsing so a
    /// mistaken `apply -f` of a huge file cannot exhaust memory or a Raft entry.
    #[error("{file}: {size} bytes is more than the limit of {limit} bytes for a policy file")]
    TooLarge {
        file: String,
        size: usize,
        limit: usize,
    },
    /// A resource could not be written as JSON or YAML.
    #[error("cannot encode {what} as {format}: {message}")]
    Encode {
        what: String,
        format: &'static str,
        message: String,
    },
    /// Stored JSON could not be read back into a resource.
    #[error("cannot decode a stored resource: {message}")]
    Decode { message: String },
}

fn render_invalid(file: &str, problems: &[Problem]) -> String {
    let noun = if problems.len() == 1 {
        "problem"
    } else {
        "problems"
    };
    let mut out = format!("{file}: {} {noun}, nothing was accepted:", problems.len());
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&p.to_string());
    }
    out
}

impl PolicyError {
    /// The problems of an [`PolicyError::Invalid`] error; empty for the other variants.
    pub fn problems(&self) -> &[Problem] {
        match self {
            PolicyError::Invalid { problems, .. } => problems,
            _ => &[],
        }
    }
}

/// A kind name the CLI could not map to a [`Kind`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind {given:?}; valid kinds: {}", Kind::ALL.map(Kind::as_str).join(", "))]
pub struct UnknownKindError {
    pub given: String,
}
