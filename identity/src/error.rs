//! [`IdentityError`]: why a component has no certificate, or could not renew it.

use std::path::PathBuf;

use crate::settings::SettingsError;

/// Why the component has no certificate, or could not renew it.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error("cannot read the bootstrap token {}: {source}", path.display())]
    TokenFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the bootstrap token file {} is empty", path.display())]
    EmptyToken { path: PathBuf },
    #[error("cannot load the trust bundle {}: {source}", path.display())]
    BundleFile {
        path: PathBuf,
        source: strait_trust::Error,
    },
    #[error(
        "the zone control plane at {zone_cp} refused the certificate request ({code:?}): {message}"
    )]
    Refused {
        zone_cp: String,
        code: tonic::Code,
        message: String,
    },
    #[error("the zone control plane at {zone_cp} is not reachable: {message}")]
    Unreachable { zone_cp: String, message: String },
    #[error("the server at {zone_cp} is not trusted as {expected}: {reason}")]
    UntrustedZone {
        zone_cp: String,
        expected: String,
        reason: String,
    },
    #[error("the zone control plane at {zone_cp} returned an unusable certificate: {reason}")]
    BadResponse { zone_cp: String, reason: String },
    #[error("TLS or certificate handling failed: {0}")]
    Trust(#[from] strait_trust::Error),
    #[error("cannot {action} {}: {source}", path.display())]
    DataDir {
        action: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("registering the identity metrics failed: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl IdentityError {
    /// Whether trying again later may help (the zone was unreachable or could not sign now),
    /// as opposed to a refusal or a local problem.
    pub fn is_transient(&self) -> bool {
        match self {
            IdentityError::Unreachable { .. } => true,
            IdentityError::Refused { code, .. } => matches!(
                code,
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::ResourceExhausted
                    | tonic::Code::Aborted
                    | tonic::Code::Internal
            ),
            _ => false,
        }
    }

    /// A failed call as the error a user reads: transport failures are "unreachable", answers
    /// from the zone are refusals with its message.
    pub(crate) fn from_status(zone_cp: &str, status: &tonic::Status) -> IdentityError {
        use std::error::Error as _;
        // tonic reports connection failures as Unavailable/Unknown with a transport error
        // source.
        let transport = status
            .source()
            .is_some_and(|s| s.downcast_ref::<tonic::transport::Error>().is_some())
            || (status.code() == tonic::Code::Unavailable
                && status.message().contains("transport"))
            || status.code() == tonic::Code::Cancelled;
        if transport {
            let mut message = status.message().to_owned();
            let mut source = status.source();
            while let Some(s) = source {
                message.push_str(": ");
                message.push_str(&s.to_string());
                source = s.source();
            }
            return IdentityError::Unreachable {
                zone_cp: zone_cp.to_owned(),
                message,
            };
        }
        IdentityError::Refused {
            zone_cp: zone_cp.to_owned(),
            code: status.code(),
            message: status.message().to_owned(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transient_errors() {
        let unreachable = IdentityError::Unreachable {
            zone_cp: "z".into(),
            message: "m".into(),
        };
        assert!(unreachable.is_transient());
        let refused = IdentityError::Refused {
            zone_cp: "z".into(),
            code: tonic::Code::Unauthenticated,
            message: "bad token".into(),
        };
        assert!(!refused.is_transient());
        let busy = IdentityError::Refused {
            zone_cp: "z".into(),
            code: tonic::Code::Unavailable,
            message: "this zone can not sign right now".into(),
        };
        assert!(busy.is_transient());
    }
}
