//! The end of a process's log, shown under an error.

use std::fmt;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::{LOG_TAIL_BYTES, LOG_TAIL_LINES};

/// The end of a process's log, shown under an error: usually the reason the process failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogTail {
    pub path: PathBuf,
    /// The last [`LOG_TAIL_LINES`] lines, indented.
    pub lines: String,
}

impl LogTail {
    pub(super) fn read(path: &Path) -> Box<Self> {
        Box::new(Self {
            path: path.to_owned(),
            lines: log_tail(path, LOG_TAIL_LINES),
        })
    }
}

impl fmt::Display for LogTail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "last lines of {}:\n{}", self.path.display(), self.lines)
    }
}

/// The last `lines` lines of the log at `path`, indented for showing under an error; a note
/// instead if it cannot be read.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let read = || -> std::io::Result<String> {
        let mut file = File::open(path)?;
        let len = file.metadata()?.len();
        // Only the end of the file matters; a long-running process's log can be large.
        file.seek(SeekFrom::Start(len.saturating_sub(LOG_TAIL_BYTES)))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let all: Vec<&str> = text.lines().collect();
            let tail = &all[all.len().saturating_sub(lines)..];
            if tail.is_empty() {
                "  (the log is empty)".to_owned()
            } else {
                tail.iter()
                    .map(|line| format!("  {line}"))
                    .collect::<Vec<_>>()
                    .join("\n")
            }
        }
        Err(err) => format!("  (cannot read the log: {err})"),
    }
}
