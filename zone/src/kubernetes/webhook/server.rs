//! The injector's HTTPS listener: [`serve`] answers `AdmissionReview`s with [`super::mutate`],
//! over TLS from a certificate that is re-read when its files change ([`tls_config`]).
//!
//! Kept apart from the pure mutation so that the golden-tested part reads without the IO
//! around it.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;
use kube::core::admission::{AdmissionResponse, AdmissionReview};

#[cfg(test)]
use super::tests_settings;
use super::{InjectSettings, mutate};

/// Why the webhook cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    #[error("reading the webhook's {what} {path}: {reason}")]
    Tls {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
}

/// The webhook's certificate and key files, re-read when they change (cert-manager renews
/// them in place).
#[derive(Debug)]
struct ReloadingCert {
    cert: PathBuf,
    key: PathBuf,
    current: std::sync::RwLock<(
        Option<std::time::SystemTime>,
        Arc<rustls::sign::CertifiedKey>,
    )>,
}

fn load_certified_key(
    cert: &Path,
    key: &Path,
) -> Result<Arc<rustls::sign::CertifiedKey>, WebhookError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let err = |what: &'static str, path: &Path, reason: String| WebhookError::Tls {
        what,
        path: path.to_owned(),
        reason,
    };
    let chain = CertificateDer::pem_file_iter(cert)
        .map_err(|e| err("certificate", cert, e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err("certificate", cert, e.to_string()))?;
    if chain.is_empty() {
        return Err(err("certificate", cert, "no certificate in it".into()));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| err("key", key, e.to_string()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key_der)
        .map_err(|e| err("key", key, e.to_string()))?;
    let certified = rustls::sign::CertifiedKey::new(chain, signing);
    // A renewal caught between writing the certificate and writing the key would otherwise be
    // served, and every handshake would fail until the next change.
    certified.keys_match().map_err(|e| {
        err(
            "key",
            key,
            format!(
                "it does not belong to the certificate {}: {e}",
                cert.display()
            ),
        )
    })?;
    Ok(Arc::new(certified))
}

fn modified(path: &Path) -> Option<std::time::SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

impl ReloadingCert {
    fn load(cert: PathBuf, key: PathBuf) -> Result<Self, WebhookError> {
        let loaded = load_certified_key(&cert, &key)?;
        let stamp = modified(&cert);
        Ok(Self {
            cert,
            key,
            current: std::sync::RwLock::new((stamp, loaded)),
        })
    }

    /// Re-reads the files if the certificate changed; keeps the old pair on a failed read
    /// (a half-written renewal).
    fn refresh(&self) {
        let stamp = modified(&self.cert);
        let unchanged = self.current.read().map(|c| c.0 == stamp).unwrap_or(false);
        if unchanged {
            return;
        }
        match load_certified_key(&self.cert, &self.key) {
            Ok(loaded) => {
                if let Ok(mut current) = self.current.write() {
                    *current = (stamp, loaded);
                }
                tracing::info!(cert = %self.cert.display(), "webhook certificate reloaded");
            }
            Err(err) => {
                tracing::warn!(%err, "webhook certificate not reloaded; keeping the old one")
            }
        }
    }
}

impl rustls::server::ResolvesServerCert for ReloadingCert {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        self.current.read().ok().map(|c| c.1.clone())
    }
}

/// How often the webhook's certificate files are checked for a change.
const CERT_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);

/// The TLS config of the webhook listener: the API server verifies it against the
/// `caBundle` of the webhook configuration; no client certificate is asked for. The files are
/// re-read when the certificate changes (checked every 30 s), so a renewed certificate is
/// served to new connections without a restart.
pub fn tls_config(cert: PathBuf, key: PathBuf) -> Result<Arc<rustls::ServerConfig>, WebhookError> {
    tls_config_checking_every(cert, key, CERT_CHECK_INTERVAL).map(|(config, _)| config)
}

/// [`tls_config`] checking every `interval`; also the reloading certificate itself.
fn tls_config_checking_every(
    cert: PathBuf,
    key: PathBuf,
    interval: std::time::Duration,
) -> Result<(Arc<rustls::ServerConfig>, Arc<ReloadingCert>), WebhookError> {
    let resolver = Arc::new(ReloadingCert::load(cert, key)?);
    let refresher = Arc::downgrade(&resolver);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(interval);
        loop {
            tick.tick().await;
            let Some(resolver) = refresher.upgrade() else {
                return;
            };
            resolver.refresh();
        }
    });
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| WebhookError::Tls {
        what: "TLS settings",
        path: PathBuf::new(),
        reason: e.to_string(),
    })?
    .with_no_client_auth()
    .with_cert_resolver(resolver.clone());
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok((Arc::new(config), resolver))
}

/// Serves the injector on `listener` (HTTPS, any path: `POST` an `AdmissionReview`) until
/// `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Arc<rustls::ServerConfig>,
    settings: Arc<InjectSettings>,
    shutdown: impl Future,
) {
    use http_body_util::{BodyExt, Full};
    use hyper::body::{Bytes, Incoming};
    use hyper::{Request, Response, StatusCode};

    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut shutdown = std::pin::pin!(shutdown);
    tracing::info!(addr = ?listener.local_addr().ok(), "sidecar injector serving");
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(%err, "webhook accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let settings = settings.clone();
        tokio::spawn(async move {
            let tls = match tokio::time::timeout(
                std::time::Duration::from_secs(10),
                acceptor.accept(tcp),
            )
            .await
            {
                Ok(Ok(tls)) => tls,
                Ok(Err(err)) => {
                    tracing::debug!(%peer, %err, "webhook TLS handshake failed");
                    return;
                }
                Err(_) => return,
            };
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let settings = settings.clone();
                async move {
                    let reply = |status: StatusCode, body: Vec<u8>| {
                        Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body)))
                    };
                    if request.method() != hyper::Method::POST {
                        return reply(StatusCode::METHOD_NOT_ALLOWED, b"{}".to_vec());
                    }
                    let body = match http_body_util::Limited::new(request.into_body(), 4 << 20)
                        .collect()
                        .await
                    {
                        Ok(body) => body.to_bytes(),
                        Err(_) => return reply(StatusCode::PAYLOAD_TOO_LARGE, b"{}".to_vec()),
                    };
                    // The API server never sends these; whoever did gets a 400 that says why,
                    // in an AdmissionReview all the same.
                    let bad_request = |reason: String| {
                        let mut response = AdmissionResponse::invalid(reason);
                        response.result.code = StatusCode::BAD_REQUEST.as_u16();
                        (StatusCode::BAD_REQUEST, response)
                    };
                    let (status, response) =
                        match serde_json::from_slice::<AdmissionReview<Pod>>(&body) {
                            Ok(review) if review.request.is_some() => {
                                (StatusCode::OK, mutate(review, &settings))
                            }
                            Ok(_) => bad_request("an AdmissionReview without a request".into()),
                            Err(e) => bad_request(format!("not an AdmissionReview: {e}")),
                        };
                    let patched = response.patch.is_some();
                    let out = serde_json::to_vec(&response.into_review()).unwrap_or_default();
                    tracing::debug!(%status, patched, "admission review answered");
                    reply(status, out)
                }
            });
            let builder =
                hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(err) = builder
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer, %err, "webhook connection ended with an error");
            }
        });
    }
}

/// The listener over real sockets: [`serve`] with [`tls_config`], as the API server calls it.
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod https_tests {
    use std::net::SocketAddr;
    use std::time::Duration;

    use http_body_util::{BodyExt, Full};
    use hyper::body::Bytes;
    use hyper::{Method, Request, StatusCode};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
        KeyUsagePurpose,
    };
    use rustls::pki_types::{CertificateDer, ServerName};
    use serde_json::Value;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// A CA of the test's own, as cert-manager's would be.
    struct Ca(CertifiedIssuer<'static, KeyPair>);

    /// A serving certificate: PEM files' contents and the DER the client should see.
    struct Serving {
        cert_pem: String,
        key_pem: String,
        der: CertificateDer<'static>,
    }

    impl Ca {
        fn new() -> Self {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(DnType::CommonName, "strait-webhook-test-ca");
            params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
        }

        /// The webhook's certificate, for the names the API server dials.
        fn serving(&self) -> Serving {
            let key = KeyPair::generate().unwrap();
            let params =
                CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
                    .unwrap();
            let cert = params.signed_by(&key, &self.0).unwrap();
            Serving {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                der: cert.der().clone(),
            }
        }

        /// A client that trusts this CA only (the webhook configuration's `caBundle`).
        fn client(&self, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(self.0.der().clone()).unwrap();
            let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
            config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
            Arc::new(config)
        }
    }

    /// A running webhook on 127.0.0.1:0 with its files in a directory of its own.
    struct Webhook {
        addr: SocketAddr,
        dir: tempfile::TempDir,
        cert: Arc<ReloadingCert>,
        _stop: tokio::sync::oneshot::Sender<()>,
    }

    impl Webhook {
        async fn start(serving: &Serving, check_every: Duration) -> Self {
            let dir = tempfile::tempdir().unwrap();
            let webhook_dir = dir.path().to_owned();
            write_pair(&webhook_dir, serving);
            let (tls, cert) = tls_config_checking_every(
                webhook_dir.join("tls.crt"),
                webhook_dir.join("tls.key"),
                check_every,
            )
            .unwrap();
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            tokio::spawn(serve(
                listener,
                tls,
                Arc::new(super::tests_settings()),
                async move {
                    let _ = stopped.await;
                },
            ));
            Self {
                addr,
                dir,
                cert,
                _stop: stop,
            }
        }
    }

    /// Writes a file the way the kubelet updates a Secret volume: a new file renamed into
    /// place, with a modification time of its own.
    fn replace_file(path: &Path, contents: &str, mtime: std::time::SystemTime) {
        let next = path.with_extension("next");
        std::fs::write(&next, contents).unwrap();
        std::fs::File::options()
            .write(true)
            .open(&next)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        std::fs::rename(&next, path).unwrap();
    }

    fn write_pair(dir: &Path, serving: &Serving) {
        let now = std::time::SystemTime::now();
        replace_file(&dir.join("tls.key"), &serving.key_pem, now);
        replace_file(&dir.join("tls.crt"), &serving.cert_pem, now);
    }

    /// What one HTTPS exchange gave.
    struct Exchange {
        status: StatusCode,
        body: Bytes,
        /// The server's certificate as the client saw it.
        served: CertificateDer<'static>,
        /// The negotiated protocol.
        h2: bool,
    }

    /// One request on a new connection, over HTTP/2 when the server agrees to `alpn`.
    async fn request(
        addr: SocketAddr,
        client: Arc<rustls::ClientConfig>,
        method: Method,
        body: Vec<u8>,
    ) -> Result<Exchange, String> {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(client)
            .connect(ServerName::try_from("localhost").unwrap(), tcp)
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        let (_, session) = tls.get_ref();
        let served = session
            .peer_certificates()
            .and_then(|c| c.first())
            .cloned()
            .ok_or("no server certificate")?;
        let h2 = session.alpn_protocol() == Some(b"h2".as_slice());
        let builder = Request::builder()
            .method(method)
            .header("content-type", "application/json");
        let response = if h2 {
            let request = builder
                .uri("https://localhost/inject")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let (mut sender, conn) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                    .await
                    .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            sender.send_request(request).await
        } else {
            let request = builder
                .uri("/inject")
                .header("host", "localhost")
                .body(Full::new(Bytes::from(body)))
                .unwrap();
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
            tokio::spawn(conn);
            sender.send_request(request).await
        }
        .map_err(|e| format!("request: {e}"))?;
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        Ok(Exchange {
            status,
            body,
            served,
            h2,
        })
    }

    fn fixture(name: &str) -> String {
        std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("tests/fixtures/webhook/{name}")),
        )
        .unwrap()
    }

    /// The `response` of an AdmissionReview answer.
    fn admission_response(body: &[u8]) -> AdmissionResponse {
        let review: AdmissionReview<kube::core::DynamicObject> =
            serde_json::from_slice(body).expect("an AdmissionReview");
        let raw: Value = serde_json::from_slice(body).unwrap();
        assert_eq!(raw["apiVersion"], "admission.k8s.io/v1", "{raw}");
        assert_eq!(raw["kind"], "AdmissionReview", "{raw}");
        review.response.expect("a response")
    }

    #[tokio::test]
    async fn a_pod_review_over_https_gets_the_sidecar_patch() {
        let ca = Ca::new();
        let serving = ca.serving();
        let webhook = Webhook::start(&serving, CERT_CHECK_INTERVAL).await;
        let review = fixture("minimal.review.json");
        // As the API server calls it: HTTP/2 when offered, else HTTP/1.1.
        for alpn in [&[b"h2".as_slice(), b"http/1.1"][..], &[b"http/1.1"]] {
            let exchange = request(
                webhook.addr,
                ca.client(alpn),
                Method::POST,
                review.clone().into_bytes(),
            )
            .await
            .unwrap();
            assert_eq!(exchange.h2, alpn[0] == b"h2");
            assert_eq!(exchange.served, serving.der);
            assert_eq!(exchange.status, StatusCode::OK);
            let response = admission_response(&exchange.body);
            let request: Value = serde_json::from_str(&review).unwrap();
            assert_eq!(response.uid, request["request"]["uid"]);
            assert!(response.allowed, "{:?}", response.result);
            let raw: Value = serde_json::from_slice(&exchange.body).unwrap();
            assert_eq!(raw["response"]["patchType"], "JSONPatch");
            let patch: Value = serde_json::from_slice(&response.patch.unwrap()).unwrap();
            let expected: Value = serde_json::from_str(&fixture("minimal.patch.json")).unwrap();
            assert_eq!(patch, expected);
        }
    }

    #[tokio::test]
    async fn a_malformed_or_oversized_request_gets_an_error_and_the_server_keeps_serving() {
        let ca = Ca::new();
        let webhook = Webhook::start(&ca.serving(), CERT_CHECK_INTERVAL).await;
        let client = ca.client(&[b"http/1.1"]);

        let exchange = request(
            webhook.addr,
            client.clone(),
            Method::POST,
            b"{not json".to_vec(),
        )
        .await
        .unwrap();
        assert_eq!(exchange.status, StatusCode::BAD_REQUEST);
        let response = admission_response(&exchange.body);
        assert!(!response.allowed);
        assert_eq!(response.result.code, 400, "{:?}", response.result);
        assert!(
            response.result.message.contains("not an AdmissionReview"),
            "{:?}",
            response.result
        );
        assert!(response.patch.is_none());

        // JSON, but an AdmissionReview without a request.
        let empty = br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#;
        let exchange = request(webhook.addr, client.clone(), Method::POST, empty.to_vec())
            .await
            .unwrap();
        assert_eq!(exchange.status, StatusCode::BAD_REQUEST);
        let response = admission_response(&exchange.body);
        assert!(!response.allowed);
        assert!(
            response.result.message.contains("without a request"),
            "{:?}",
            response.result
        );

        let exchange = request(webhook.addr, client.clone(), Method::GET, Vec::new())
            .await
            .unwrap();
        assert_eq!(exchange.status, StatusCode::METHOD_NOT_ALLOWED);

        let huge = vec![b' '; (4 << 20) + 1];
        let exchange = request(webhook.addr, client.clone(), Method::POST, huge)
            .await
            .unwrap();
        assert_eq!(exchange.status, StatusCode::PAYLOAD_TOO_LARGE);

        // Still serving.
        let exchange = request(
            webhook.addr,
            client,
            Method::POST,
            fixture("minimal.review.json").into_bytes(),
        )
        .await
        .unwrap();
        assert!(admission_response(&exchange.body).patch.is_some());
    }

    #[tokio::test]
    async fn plaintext_http_is_refused() {
        let ca = Ca::new();
        let webhook = Webhook::start(&ca.serving(), CERT_CHECK_INTERVAL).await;
        let review = fixture("minimal.review.json");
        let mut tcp = TcpStream::connect(webhook.addr).await.unwrap();
        let request = format!(
            "POST /inject HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{review}",
            review.len()
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        // The server hangs up (at most with a TLS alert): never an HTTP answer, never a patch.
        let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer))
            .await
            .expect("the server closes a plaintext connection");
        assert!(read.is_ok() || !answer.is_empty(), "{read:?}");
        assert!(
            !answer.starts_with(b"HTTP/"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
        assert!(
            !String::from_utf8_lossy(&answer).contains("patch"),
            "{:?}",
            String::from_utf8_lossy(&answer)
        );
        // And a client that does not trust the CA gets no answer either.
        let stranger = Ca::new();
        let refused =
            request_err(request_once(webhook.addr, stranger.client(&[b"http/1.1"])).await);
        assert!(refused.contains("handshake"), "{refused}");
    }

    async fn request_once(
        addr: SocketAddr,
        client: Arc<rustls::ClientConfig>,
    ) -> Result<Exchange, String> {
        request(
            addr,
            client,
            Method::POST,
            fixture("minimal.review.json").into_bytes(),
        )
        .await
    }

    fn request_err(result: Result<Exchange, String>) -> String {
        match result {
            Ok(e) => panic!("expected a failure, got {}", e.status),
            Err(e) => e,
        }
    }

    /// Polls new connections until one is served `want`.
    async fn served_eventually(webhook: &Webhook, ca: &Ca, want: &CertificateDer<'static>) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            let exchange = request_once(webhook.addr, ca.client(&[b"h2"]))
                .await
                .unwrap();
            assert_eq!(exchange.status, StatusCode::OK);
            if exchange.served == *want {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the new certificate was not served within 5s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_renewed_certificate_is_served_to_new_connections() {
        let ca = Ca::new();
        let first = ca.serving();
        let webhook = Webhook::start(&first, Duration::from_millis(50)).await;
        let exchange = request_once(webhook.addr, ca.client(&[b"h2"]))
            .await
            .unwrap();
        assert_eq!(exchange.served, first.der);

        // cert-manager renews the Secret: both files change at once.
        let second = ca.serving();
        write_pair(webhook.dir.path(), &second);
        served_eventually(&webhook, &ca, &second.der).await;

        // A renewal caught half-way (a new certificate, the old key) is not taken: the current
        // pair keeps being served until the key arrives too.
        let third = ca.serving();
        let later = std::time::SystemTime::now() + Duration::from_secs(5);
        replace_file(&webhook.dir.path().join("tls.crt"), &third.cert_pem, later);
        // Looked at now rather than at the next periodic check, so that the assertion below
        // follows a refusal for certain.
        webhook.cert.refresh();
        let exchange = request_once(webhook.addr, ca.client(&[b"h2"]))
            .await
            .unwrap();
        assert_eq!(exchange.served, second.der, "a mismatched pair was served");
        replace_file(&webhook.dir.path().join("tls.key"), &third.key_pem, later);
        served_eventually(&webhook, &ca, &third.der).await;
    }
}
