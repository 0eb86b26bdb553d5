//! [`IdentityArgs`]: the identity flags `strait sidecar run` and `strait gateway run` share
//! (flattened into both), so they are spelled and documented once.

use std::path::PathBuf;

/// Where the zone control plane is, and the files a certificate is bootstrapped and kept with.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct IdentityArgs {
    /// The zone control plane's gRPC address (host:port): certificates and config, over TLS.
    #[arg(long)]
    pub zone_cp: String,
    /// The zone this instance runs in (the control plane must be spiffe://TD/zone/ZONE/cp).
    #[arg(long)]
    pub zone: String,
    /// Bootstrap token (`strait token workload`; a sidecar with `--token-kind
    /// service-account` reads the pod's projected token here), read only when there is no
    /// usable certificate.
    #[arg(long)]
    pub token_file: PathBuf,
    /// The federation's trust domain.
    #[arg(long, default_value = strait_trust::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// Trust bundle to verify the zone with (recommended; otherwise trust on first use).
    #[arg(long)]
    pub bundle_file: Option<PathBuf>,
    /// Where to keep the key, certificate and bundle across restarts.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Command {
        #[command(flatten)]
        identity: IdentityArgs,
    }

    #[test]
    fn flags_and_defaults() {
        let args = Command::try_parse_from([
            "x",
            "--zone-cp",
            "127.0.0.1:7500",
            "--zone",
            "a",
            "--token-file",
            "/t",
        ])
        .unwrap()
        .identity;
        assert_eq!(
            args,
            IdentityArgs {
                zone_cp: "127.0.0.1:7500".into(),
                zone: "a".into(),
                token_file: "/t".into(),
                trust_domain: "strait.local".into(),
                bundle_file: None,
                data_dir: None,
            }
        );
        let args = Command::try_parse_from([
            "x",
            "--zone-cp=z:1",
            "--zone=b",
            "--token-file=/t",
            "--trust-domain=example.org",
            "--bundle-file=/b.pem",
            "--data-dir=/d",
        ])
        .unwrap()
        .identity;
        assert_eq!(args.trust_domain, "example.org");
        assert_eq!(args.bundle_file, Some("/b.pem".into()));
        assert_eq!(args.data_dir, Some("/d".into()));
        // The zone and its control plane are required.
        let err = Command::try_parse_from(["x", "--zone=a", "--token-file=/t"]).unwrap_err();
        assert!(err.to_string().contains("--zone-cp"), "{err}");
    }
}
