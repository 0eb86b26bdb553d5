//! Checks of the files a `run` command is given — tokens, trust bundles, a root CA — made
//! before the command binds a port or writes its data directory, so a bad file is reported at
//! once and names itself, instead of surfacing later behind a port or network error.
//!
//! They read, never write; none needs the network or a clock.

use std::path::{Path, PathBuf};

use crate::join_token::JoinToken;
use crate::{RootCa, TrustBundle};

/// A file a command was given cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {reason}", path = path.display())]
pub struct PreflightError {
    /// What the file should hold, e.g. `join token file`.
    pub what: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

fn error(what: &'static str, path: &Path, reason: impl ToString) -> PreflightError {
    PreflightError {
        what,
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Reads `path` and returns its trimmed text, refusing an empty file.
fn read_token(what: &'static str, path: &Path) -> Result<String, PreflightError> {
    let text = std::fs::read_to_string(path).map_err(|e| error(what, path, e))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(error(what, path, "the file is empty"));
    }
    Ok(token.to_owned())
}

/// The join token in `path` (`strait zone create`, `strait token node`).
pub fn join_token_file(path: &Path) -> Result<JoinToken, PreflightError> {
    const WHAT: &str = "join token file";
    read_token(WHAT, path)?
        .parse()
        .map_err(|e: crate::join_token::JoinTokenError| error(WHAT, path, e))
}

/// A workload bootstrap token in `path` (`strait token workload`): its shape only; the zone
/// verifies the rest.
pub fn workload_token_file(path: &Path) -> Result<(), PreflightError> {
    const WHAT: &str = "workload token file";
    let token = read_token(WHAT, path)?;
    crate::workload_token::check_format(&token).map_err(|e| error(WHAT, path, e))
}

/// A token file whose format is not Strait's (a Kubernetes service-account token): it must be
/// readable and not empty.
pub fn opaque_token_file(path: &Path) -> Result<(), PreflightError> {
    read_token("token file", path).map(|_| ())
}

/// The trust bundle in `path`: PEM certificates of `trust_domain`'s roots.
pub fn bundle_file(path: &Path, trust_domain: &str) -> Result<TrustBundle, PreflightError> {
    const WHAT: &str = "trust bundle";
    let pem = crate::store::read_cert(path).map_err(|e| error(WHAT, path, e))?;
    TrustBundle::from_pem(trust_domain, &pem).map_err(|e| error(WHAT, path, e))
}

/// The operator's own root CA: a certificate of `trust_domain` and its private key.
pub fn root_ca_files(cert: &Path, key: &Path, trust_domain: &str) -> Result<(), PreflightError> {
    const WHAT: &str = "root CA certificate";
    let cert_pem = crate::store::read_cert(cert).map_err(|e| error(WHAT, cert, e))?;
    let key_pem = crate::store::read_key(key).map_err(|e| error("root CA key", key, e))?;
    RootCa::from_pem(trust_domain, &cert_pem, &key_pem).map_err(|e| error(WHAT, cert, e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;
    use crate::SpiffeId;
    use crate::workload_token::{Claims, WorkloadToken};

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    fn write(dir: &Path, name: &str, text: &str) -> std::io::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, text)?;
        Ok(path)
    }

    #[test]
    fn join_tokens() -> TestResult {
        let dir = tempfile::tempdir()?;
        let root = RootCa::generate("strait.local", Duration::from_secs(3600))?;
        let token = JoinToken::generate(&root.pin())?;
        let good = write(dir.path(), "good", &format!("{token}\n"))?;
        assert_eq!(join_token_file(&good)?, token);
        for (name, text, reason) in [
            ("garbage", "not a token at all", "not a Strait join token"),
            ("empty", "\n", "the file is empty"),
        ] {
            let path = write(dir.path(), name, text)?;
            let err = join_token_file(&path)
                .err()
                .ok_or("a bad join token passed")?;
            let message = err.to_string();
            assert!(message.starts_with("join token file "), "{message}");
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(reason), "{message}");
        }
        let missing = join_token_file(&dir.path().join("missing"))
            .err()
            .ok_or("a missing file passed")?;
        assert!(missing.to_string().contains("missing"), "{missing}");
        Ok(())
    }

    #[test]
    fn workload_tokens_shape_only() -> TestResult {
        let dir = tempfile::tempdir()?;
        let root = RootCa::generate("strait.local", Duration::from_secs(3600))?;
        let id = SpiffeId::workload("strait.local", "demo", "echo")?;
        let claims = Claims::new(id, "a", SystemTime::now(), Duration::from_secs(60));
        let token = WorkloadToken::issue(&root, &claims)?;
        workload_token_file(&write(dir.path(), "good", &token)?)?;
        // A join token is not a workload token.
        let join = JoinToken::generate(&root.pin())?.to_string();
        for text in ["garbage", "stw1.e30.AAAA", join.as_str()] {
            let path = write(dir.path(), "bad", text)?;
            let err = workload_token_file(&path)
                .err()
                .ok_or_else(|| format!("{text:?} passed"))?;
            assert!(err.to_string().contains("workload token file"), "{err}");
        }
        opaque_token_file(&write(dir.path(), "sa", "eyJhbGciOi.x.y")?)?;
        assert!(opaque_token_file(&write(dir.path(), "blank", "  ")?).is_err());
        Ok(())
    }

    #[test]
    fn bundles_and_roots() -> TestResult {
        let dir = tempfile::tempdir()?;
        let root = RootCa::generate("strait.local", Duration::from_secs(3600))?;
        let bundle = write(dir.path(), "bundle.pem", &root.bundle()?.to_pem())?;
        assert_eq!(bundle_file(&bundle, "strait.local")?.roots().len(), 1);
        let garbage = write(dir.path(), "garbage.pem", "not PEM")?;
        let err = bundle_file(&garbage, "strait.local")
            .err()
            .ok_or("garbage bundle passed")?;
        assert!(err.to_string().starts_with("trust bundle "), "{err}");

        let cert = write(dir.path(), "root.crt", &root.cert_pem())?;
        let key = dir.path().join("root.key");
        crate::store::write_key(&key, &root.key_pem())?;
        root_ca_files(&cert, &key, "strait.local")?;
        assert!(root_ca_files(&garbage, &key, "strait.local").is_err());
        assert!(root_ca_files(&cert, &garbage, "strait.local").is_err());
        Ok(())
    }
}
