//! Certificates and private keys on disk (Unix).
//!
//! Writes are atomic: the content goes to a temporary file in the same directory, is synced,
//! then renamed over the target, so a crash leaves the old file or the new one, never half of
//! one. Key files are created with mode 0600 from the first byte (the mode is given to
//! `open(2)`, not applied afterwards), so a key is never readable by others even briefly.
//! Certificates are written 0644.
//!
//! Reading a key checks its mode: a key file readable or writable by *other* users (any of
//! `0o007`) is refused, as ssh does. A *group*-readable key only logs a warning, because
//! Kubernetes makes secret volumes group-readable when a pod sets `fsGroup`; the group is then
//! the pod's own.
//!
//! Every error names the file.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustls_pki_types::CertificateDer;

use crate::error::{Error, Result};
use crate::keys::KeyPair;

/// Mode of private key files.
pub const KEY_FILE_MODE: u32 = 0o600;
/// Mode of certificate and bundle files.
pub const CERT_FILE_MODE: u32 = 0o644;

/// Writes a certificate (or chain, or bundle) PEM atomically with mode 0644.
pub fn write_cert(path: &Path, pem: &str) -> Result<()> {
    write_atomic(path, pem.as_bytes(), CERT_FILE_MODE)
}

/// Writes a private key PEM atomically; the file has mode 0600 from its creation.
pub fn write_key(path: &Path, pem: &str) -> Result<()> {
    write_atomic(path, pem.as_bytes(), KEY_FILE_MODE)
}

/// Reads a certificate PEM file as text.
pub fn read_cert(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io("read", path, e))
}

/// Reads and parses a certificate chain (PEM) file.
pub fn read_cert_chain(path: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let pem = read_cert(path)?;
    crate::pem::parse_certs(&pem, &path.display().to_string())
}

/// Reads a private key PEM file after checking its mode (see the module docs).
pub fn read_key(path: &Path) -> Result<String> {
    let file = File::open(path).map_err(|e| Error::io("open", path, e))?;
    // Checked on the open file, not the path, so the file read is the file checked.
    let meta = file.metadata().map_err(|e| Error::io("stat", path, e))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(Error::KeyFileTooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    if mode & 0o070 != 0 {
        tracing::warn!(
            path = %path.display(),
            mode = format_args!("{mode:04o}"),
            "private key file is readable by its group; expected 0600"
        );
    }
    std::io::read_to_string(file).map_err(|e| Error::io("read", path, e))
}

/// Reads and parses a private key file (see [`read_key`]).
pub fn read_key_pair(path: &Path) -> Result<KeyPair> {
    let pem = read_key(path)?;
    KeyPair::from_pem(&pem).map_err(|e| match e {
        Error::InvalidPrivateKey(reason) => {
            Error::InvalidPrivateKey(format!("{}: {reason}", path.display()))
        }
        other => other,
    })
}

fn write_atomic(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let file_name = path.file_name().ok_or_else(|| {
        Error::io(
            "write",
            path,
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path"),
        )
    })?;
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    // Same directory as the target: rename(2) is only atomic within one file system.
    let tmp = dir.join(format!(
        ".{}.tmp-{}-{}",
        file_name.to_string_lossy(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
            .map_err(|e| Error::io("create", &tmp, e))?;
        // The umask may have removed bits from `mode` (never added any); set it exactly so a
        // certificate is 0644 whatever the umask.
        f.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(|e| Error::io("chmod", &tmp, e))?;
        f.write_all(contents)
            .map_err(|e| Error::io("write", &tmp, e))?;
        f.sync_all().map_err(|e| Error::io("sync", &tmp, e))?;
        fs::rename(&tmp, path).map_err(|e| Error::io("rename into place", path, e))
    })();
    if result.is_err() {
        // Best effort: the error that matters is already in `result`.
        let _ = fs::remove_file(&tmp);
        return result;
    }
    // Persist the rename itself; without this a crash can bring the old file back.
    File::open(&dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| Error::io("sync directory", &dir, e))
}

/// Creates `dir` and its missing parents with mode 0700 (never briefly wider), and tightens an
/// existing `dir` to 0700: directories that hold private keys or the replicated root key.
/// Returns the plain IO error; callers add which directory and why.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    fn mode_of(p: &Path) -> u32 {
        fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn key_file_is_0600_and_roundtrips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("zone.key");
        let key = KeyPair::generate().unwrap();
        write_key(&path, &key.to_pem()).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        let back = read_key_pair(&path).unwrap();
        assert_eq!(back.public_key_raw(), key.public_key_raw());

        // Overwriting an existing, too-open file leaves a 0600 file behind.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        write_key(&path, &key.to_pem()).unwrap();
        assert_eq!(mode_of(&path), 0o600);
        // No temporary files left behind.
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn cert_file_is_0644() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        write_cert(&path, "hello").unwrap();
        assert_eq!(mode_of(&path), 0o644);
        assert_eq!(read_cert(&path).unwrap(), "hello");
        // Not PEM: the error names the file.
        let err = read_cert_chain(&path).unwrap_err().to_string();
        assert!(err.contains("ca.pem"), "{err}");
    }

    #[test]
    fn refuses_world_readable_key_and_warns_on_group() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.pem");
        let key = KeyPair::generate().unwrap();
        write_key(&path, &key.to_pem()).unwrap();

        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let err = read_key(&path).unwrap_err();
        assert!(
            matches!(&err, Error::KeyFileTooOpen { mode: 0o644, path: p } if p == &path),
            "{err}"
        );
        assert!(err.to_string().contains("k.pem"));

        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        assert!(read_key(&path).is_ok(), "group-readable is a warning only");
    }

    #[test]
    fn errors_name_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.key");
        let err = read_key(&missing).unwrap_err().to_string();
        assert!(err.contains("nope.key"), "{err}");
        let err = write_key(&dir.path().join("no/such/dir/k"), "x")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no/such/dir"), "{err}");

        let garbage = dir.path().join("bad.key");
        write_key(&garbage, "garbage").unwrap();
        let err = read_key_pair(&garbage).unwrap_err().to_string();
        assert!(err.contains("bad.key"), "{err}");
    }
}
