//! The errors of `strait-trust`: one variant per thing that can go wrong, each carrying the
//! context an operator needs (which file, which identity, why it was refused).

use std::path::PathBuf;

/// Why a string is not a valid SPIFFE ID (see the SPIFFE ID specification).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpiffeIdError {
    #[error("empty SPIFFE ID")]
    Empty,
    #[error("SPIFFE ID is {len} bytes long, the maximum is 2048")]
    TooLong { len: usize },
    #[error("scheme must be `spiffe://`")]
    WrongScheme,
    #[error("trust domain is missing")]
    MissingTrustDomain,
    #[error("trust domain is {len} bytes long, the maximum is 255")]
    TrustDomainTooLong { len: usize },
    #[error(
        "trust domain contains {found:?}: only lowercase letters, digits, `.`, `-` and `_` are allowed"
    )]
    BadTrustDomainChar { found: char },
    #[error("a SPIFFE ID must not contain a port")]
    HasPort,
    #[error("a SPIFFE ID must not contain user info")]
    HasUserInfo,
    #[error("a SPIFFE ID must not contain a query")]
    HasQuery,
    #[error("a SPIFFE ID must not contain a fragment")]
    HasFragment,
    #[error("path has an empty segment (`//` or a trailing `/`)")]
    EmptySegment,
    #[error("path has a `.` or `..` segment")]
    DotSegment,
    #[error(
        "path contains {found:?}: only letters, digits, `.`, `-` and `_` are allowed in a segment"
    )]
    BadPathChar { found: char },
}

/// Everything that can go wrong in this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid SPIFFE ID {input:?}: {source}")]
    InvalidSpiffeId {
        input: String,
        #[source]
        source: SpiffeIdError,
    },

    // --- keys and PEM ---
    #[error("could not generate a key pair: {0}")]
    KeyGeneration(#[source] rcgen::Error),
    #[error("could not parse the private key PEM: {0}")]
    InvalidPrivateKey(String),
    #[error("could not build a certificate signing request for {what}: {source}")]
    CsrCreation {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("no certificate found in the PEM input ({what})")]
    NoCertificate { what: String },
    #[error("could not parse PEM ({what}): {reason}")]
    InvalidPem { what: String, reason: String },
    #[error("could not parse the certificate ({what}): {reason}")]
    InvalidCertificate { what: String, reason: String },

    // --- CA material ---
    #[error("{what} is not a CA certificate (basicConstraints CA:TRUE is missing)")]
    NotACa { what: String },
    #[error("{what} may not sign certificates (keyUsage lacks keyCertSign)")]
    CaCannotSign { what: String },
    #[error("the private key does not match the public key of {what}")]
    KeyMismatch { what: String },
    #[error(
        "{what} carries no zone CA identity (expected one URI SAN spiffe://TD/zone/ZONE/ca): {reason}"
    )]
    NotAZoneCa { what: String, reason: String },
    #[error("{what} has expired or is not yet valid; nothing can be signed with it")]
    IssuerNotValid { what: String },
    #[error("could not sign the certificate for {subject}: {source}")]
    Signing {
        subject: String,
        #[source]
        source: rcgen::Error,
    },

    // --- CSR checks ---
    #[error("the certificate signing request could not be parsed: {reason}")]
    CsrUnparsable { reason: String },
    #[error("the certificate signing request's signature does not verify")]
    CsrBadSignature,
    #[error(
        "the certificate signing request uses an unsupported key ({found}); Strait needs ECDSA P-256"
    )]
    CsrUnsupportedKey { found: String },
    #[error(
        "the certificate signing request asks for a CA certificate; only leaf certificates are issued here"
    )]
    CsrRequestsCa,
    #[error("the certificate signing request must carry exactly one URI SAN, it has {count}")]
    CsrUriSanCount { count: usize },
    #[error(
        "the certificate signing request carries a non-URI subject alternative name ({found}); SPIFFE certificates carry the URI SAN only"
    )]
    CsrUnexpectedSan { found: String },
    #[error(
        "the certificate signing request asks for {requested} but the caller is authorized for {authorized}"
    )]
    CsrIdentityMismatch {
        requested: String,
        authorized: String,
    },
    #[error("identity {id} is in trust domain {found:?}, this CA serves {expected:?}")]
    ForeignTrustDomain {
        id: String,
        found: String,
        expected: String,
    },
    #[error("{issuer} may not issue {id}: {reason}")]
    OutsideIssuerScope {
        issuer: String,
        id: String,
        reason: &'static str,
    },

    // --- trust bundle ---
    #[error("a trust bundle needs at least one root certificate")]
    EmptyBundle,
    #[error("{what} can not be used as a trust anchor: {reason}")]
    BadTrustAnchor { what: String, reason: String },
    #[error("invalid pin {pin:?}: expected `sha256:` followed by 64 lowercase hex digits")]
    InvalidPin { pin: String },

    // --- peer verification ---
    #[error("the peer presented no certificate")]
    NoPeerCertificate,
    #[error("the peer certificate must carry exactly one URI SAN, it has {count}")]
    PeerUriSanCount { count: usize },
    #[error("the peer certificate's URI SAN {uri:?} is not a SPIFFE ID: {source}")]
    PeerNotSpiffe {
        uri: String,
        #[source]
        source: SpiffeIdError,
    },
    #[error("peer {id} was issued by {issuer}, which may not issue it: {reason}")]
    IssuerNotAllowed {
        id: String,
        issuer: String,
        reason: &'static str,
    },
    #[error("peer {id} is not authorized: {reason}")]
    Unauthorized { id: String, reason: String },
    #[error("no certificate in the server's chain matches pin {pin}")]
    PinMismatch { pin: String },
    #[error("invalid certificate validity: {reason}")]
    InvalidValidity { reason: String },
    #[error("the system random number generator failed")]
    Random,
    #[error("root CA {what} has pathLen 0 and so can not sign zone intermediate CAs")]
    RootPathLenZero { what: String },
    #[error("building the TLS configuration failed: {0}")]
    Tls(#[from] rustls::Error),

    // --- files ---
    #[error("could not {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "key file {path} has mode {mode:04o}, which lets other users read it; run `chmod 600 {path}`"
    )]
    KeyFileTooOpen { path: PathBuf, mode: u32 },
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: std::io::Error) -> Self {
        Error::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}
