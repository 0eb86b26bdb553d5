//! A temp directory for the files a component under test reads (tokens, bundles) and writes
//! (its data dir), removed when the test ends.

use std::path::PathBuf;

/// A directory with a token file and room for data.
#[derive(Debug)]
pub struct Files {
    pub dir: tempfile::TempDir,
}

impl Files {
    pub fn new() -> Self {
        Files {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// Writes `contents` to `name` in the directory; its path.
    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }

    /// Where `name` is (or would be) in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

impl Default for Files {
    fn default() -> Self {
        Self::new()
    }
}
