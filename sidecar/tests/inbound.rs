//! The inbound listener in-process on loopback, over real mutual TLS, in front of the real demo
//! app: who gets in, what the app sees, what callers get when something is wrong, TCP mode.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::{Http, ZONE, demo_app, tls_connect};
use strait_proto as pb;
use strait_sidecar::inbound::{self, ALPN_H2, ALPN_HTTP1, ALPN_TCP, InboundContext};
use strait_test_support::metrics::metric;
use strait_test_support::pki::{Pki, TD};
use strait_test_support::wait::{PATIENCE, eventually};
use strait_trust::{CredentialStore, TrustStore};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

const WEB: &str = "spiffe://strait.local/ns/frontend/sa/web";

/// An `echo` sidecar's inbound listener in front of `app`, with `config` in force.
struct Sidecar {
    addr: SocketAddr,
    config: watch::Sender<Arc<pb::SidecarConfig>>,
    creds: CredentialStore,
    registry: prometheus::Registry,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Sidecar {
    async fn start(pki: &Pki, app: Option<SocketAddr>, config: pb::SidecarConfig) -> Sidecar {
        let creds = pki.workload(ZONE, "demo", "echo");
        let (config, rx) = watch::channel(Arc::new(config));
        let registry = prometheus::Registry::new();
        let ctx = InboundContext::new(creds.clone(), pki.trust.clone(), rx, &registry).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            inbound::serve(listener, ctx, app, std::future::pending::<()>())
                .await
                .unwrap();
        });
        Sidecar {
            addr,
            config,
            creds,
            registry,
            task,
        }
    }

    fn set_policy(&self, permission: Option<pb::PermissionPolicy>) {
        let mut config = pb::SidecarConfig::clone(&self.config.borrow());
        config.version += 1;
        config.inbound = Some(pb::InboundPolicy {
            tls_mode: pb::MeshTlsMode::Strict as i32,
            permissions: permission.into_iter().collect(),
            ..Default::default()
        });
        self.config.send_replace(Arc::new(config));
    }
}

fn config() -> pb::SidecarConfig {
    pb::SidecarConfig {
        version: 1,
        zone: "a".into(),
        trust_domain: "strait.local".into(),
        inbound: Some(pb::InboundPolicy::default()),
        ..Default::default()
    }
}

async fn client(
    sidecar: &Sidecar,
    creds: &CredentialStore,
    trust: &TrustStore,
    alpn: &[u8],
) -> Http {
    let tls = tls_connect(sidecar.addr, Some(creds), trust, &[alpn])
        .await
        .unwrap();
    Http::over(tls).await.unwrap()
}

#[tokio::test]
async fn the_app_sees_the_verified_caller_not_a_spoofed_header() {
    let pki = Pki::new(&[ZONE]);
    let (app, _app_task) = demo_app("echo", "echo-1").await;
    let sidecar = Sidecar::start(&pki, Some(app), config()).await;
    let web = pki.workload(ZONE, "frontend", "web");

    for alpn in [ALPN_HTTP1, ALPN_H2] {
        let mut http = client(&sidecar, &web, &pki.trust, alpn).await;
        let got = http
            .get(
                "/hello?x=1",
                &[(
                    "x-strait-peer-identity",
                    "spiffe://strait.local/ns/demo/sa/admin",
                )],
            )
            .await
            .unwrap();
        assert_eq!(got.status, 200, "{got:?}");
        let json = got.json();
        assert_eq!(
            json["peer_identity"],
            WEB,
            "over {}",
            String::from_utf8_lossy(alpn)
        );
        assert_eq!(json["service"], "echo");
        assert_eq!(json["instance"], "echo-1");
        // The connection is reused for a second request.
        let again = http.get("/healthz", &[]).await.unwrap();
        assert_eq!(again.status, 200);
    }
    assert_eq!(
        metric(
            &sidecar.registry,
            "strait_sidecar_inbound_requests_total",
            &[("status_class", "2xx")]
        ),
        4.0
    );
    assert_eq!(
        metric(
            &sidecar.registry,
            "strait_sidecar_inbound_request_duration_seconds",
            &[]
        ),
        4.0
    );
}

#[tokio::test]
async fn plaintext_and_foreign_certificates_fail_the_handshake() {
    let pki = Pki::new(&[ZONE]);
    let (app, _app_task) = demo_app("echo", "echo-1").await;
    let sidecar = Sidecar::start(&pki, Some(app), config()).await;

    // Plaintext HTTP: no HTTP answer, the connection just ends.
    let mut plain = TcpStream::connect(sidecar.addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: echo\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut buf))
        .await
        .expect("the sidecar closes a plaintext connection");
    assert!(
        !String::from_utf8_lossy(&buf).contains("HTTP/1.1"),
        "a plaintext client got an HTTP answer: {:?}",
        String::from_utf8_lossy(&buf)
    );

    // A refused client: its request never reaches the app. (In TLS 1.3 the client finishes
    // first, so the refusal shows on its first read.)
    async fn refused(
        sidecar: &Sidecar,
        creds: Option<&CredentialStore>,
        trust: &TrustStore,
    ) -> bool {
        let Ok(tls) = tls_connect(sidecar.addr, creds, trust, &[ALPN_HTTP1]).await else {
            return true;
        };
        let Ok(mut http) = Http::over(tls).await else {
            return true;
        };
        http.get("/", &[]).await.is_err()
    }
    // A certificate from another federation's root.
    let other = Pki::new(&[ZONE]);
    let foreign = other.workload(ZONE, "frontend", "web");
    let mut both = pki.root.bundle().unwrap();
    both.add(other.root.cert_der().clone()).unwrap();
    let trusts_both = TrustStore::new(both);
    assert!(
        refused(&sidecar, Some(&foreign), &trusts_both).await,
        "another root"
    );
    // No certificate.
    assert!(
        refused(&sidecar, None, &pki.trust).await,
        "no client certificate"
    );
    // A mesh identity that is not a workload (a zone's control plane).
    assert!(
        refused(&sidecar, Some(&pki.zone_cp(ZONE)), &pki.trust).await,
        "not a workload"
    );

    assert!(
        metric(
            &sidecar.registry,
            "strait_sidecar_inbound_handshake_failures_total",
            &[]
        ) >= 4.0
    );
    assert_eq!(
        metric(
            &sidecar.registry,
            "strait_sidecar_inbound_requests_total",
            &[("status_class", "2xx")]
        ),
        0.0,
        "nothing reached the app"
    );
    // And a proper client still gets in.
    let mut http = client(
        &sidecar,
        &pki.workload(ZONE, "frontend", "web"),
        &pki.trust,
        ALPN_HTTP1,
    )
    .await;
    assert_eq!(http.get("/", &[]).await.unwrap().status, 200);
}

#[tokio::test]
async fn traffic_permission_denies_with_403_and_follows_config_changes() {
    let pki = Pki::new(&[ZONE]);
    let (app, _app_task) = demo_app("echo", "echo-1").await;
    let sidecar = Sidecar::start(&pki, Some(app), config()).await;
    let web = pki.workload(ZONE, "frontend", "web");
    let mut http = client(&sidecar, &web, &pki.trust, ALPN_H2).await;

    // Allow-list that names only demo's service accounts.
    sidecar.set_policy(Some(pb::PermissionPolicy {
        default_deny: true,
        rules: vec![pb::PermissionRule {
            allow: true,
            from: vec!["spiffe://strait.local/ns/demo/sa/*".into()],
            methods: vec![],
            path_prefixes: vec![],
        }],
        ..Default::default()
    }));
    let got = http.get("/", &[]).await.unwrap();
    assert_eq!(got.status, 403);
    assert_eq!(got.headers.get("x-strait-error").unwrap(), "denied");
    assert!(String::from_utf8_lossy(&got.body).contains("forbidden"));
    // A demo caller is allowed.
    let mut batch = client(
        &sidecar,
        &pki.workload(ZONE, "demo", "batch"),
        &pki.trust,
        ALPN_HTTP1,
    )
    .await;
    assert_eq!(batch.get("/", &[]).await.unwrap().status, 200);

    // Deny by path for everyone; the same connection follows the new policy.
    sidecar.set_policy(Some(pb::PermissionPolicy {
        default_deny: false,
        rules: vec![pb::PermissionRule {
            allow: false,
            from: vec![],
            methods: vec![],
            path_prefixes: vec!["/admin".into()],
        }],
        ..Default::default()
    }));
    assert_eq!(http.get("/", &[]).await.unwrap().status, 200);
    assert_eq!(http.get("/admin/users", &[]).await.unwrap().status, 403);
    assert_eq!(
        metric(
            &sidecar.registry,
            "strait_sidecar_inbound_requests_total",
            &[("status_class", "4xx")]
        ),
        2.0
    );
}

#[tokio::test]
async fn an_unreachable_app_is_503_with_the_reason() {
    let pki = Pki::new(&[ZONE]);
    // A port nobody listens on.
    let closed = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let sidecar = Sidecar::start(&pki, Some(closed), config()).await;
    let mut http = client(
        &sidecar,
        &pki.workload(ZONE, "frontend", "web"),
        &pki.trust,
        ALPN_HTTP1,
    )
    .await;
    let got = http.get("/", &[]).await.unwrap();
    assert_eq!(got.status, 503);
    assert_eq!(
        got.headers.get("x-strait-error").unwrap(),
        "app-unavailable"
    );

    // Before a first config the sidecar fails closed.
    let (app, _app_task) = demo_app("echo", "echo-1").await;
    let unconfigured = Sidecar::start(&pki, Some(app), pb::SidecarConfig::default()).await;
    let mut http = client(
        &unconfigured,
        &pki.workload(ZONE, "frontend", "web"),
        &pki.trust,
        ALPN_H2,
    )
    .await;
    let got = http.get("/", &[]).await.unwrap();
    assert_eq!(got.status, 503);
    assert_eq!(got.headers.get("x-strait-error").unwrap(), "no-config");
}

/// A TCP echo server.
async fn tcp_echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn tcp_mode_pipes_bytes_after_authorization() {
    let pki = Pki::new(&[ZONE]);
    let app = tcp_echo().await;
    let sidecar = Sidecar::start(&pki, Some(app), config()).await;
    let web = pki.workload(ZONE, "frontend", "web");

    let mut tls = tls_connect(sidecar.addr, Some(&web), &pki.trust, &[ALPN_TCP])
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(ALPN_TCP));
    let payload = vec![7_u8; 100_000];
    tls.write_all(&payload).await.unwrap();
    let mut back = vec![0_u8; payload.len()];
    tokio::time::timeout(PATIENCE, tls.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, payload);
    drop(tls);
    eventually("the connection gauge back at zero", PATIENCE, async || {
        metric(&sidecar.registry, "strait_sidecar_inbound_connections", &[]) == 0.0
    })
    .await;

    // Denied: closed without a byte reaching the app.
    sidecar.set_policy(Some(pb::PermissionPolicy {
        default_deny: true,
        rules: vec![],
        ..Default::default()
    }));
    let mut tls = tls_connect(sidecar.addr, Some(&web), &pki.trust, &[ALPN_TCP])
        .await
        .unwrap();
    let _ = tls.write_all(b"hello").await;
    let mut buf = [0_u8; 5];
    let read = tokio::time::timeout(PATIENCE, tls.read(&mut buf))
        .await
        .unwrap();
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert_eq!(
        metric(
            &sidecar.registry,
            "strait_sidecar_inbound_tcp_connections_total",
            &[("result", "denied")]
        ),
        1.0
    );
    assert_eq!(
        metric(
            &sidecar.registry,
            "strait_sidecar_inbound_tcp_connections_total",
            &[("result", "forwarded")]
        ),
        1.0
    );
}

#[tokio::test]
async fn a_renewed_certificate_serves_new_connections_and_old_ones_keep_going() {
    let pki = Pki::new(&[ZONE]);
    let (app, _app_task) = demo_app("echo", "echo-1").await;
    let sidecar = Sidecar::start(&pki, Some(app), config()).await;
    let web = pki.workload(ZONE, "frontend", "web");

    let tls = tls_connect(sidecar.addr, Some(&web), &pki.trust, &[ALPN_H2])
        .await
        .unwrap();
    let old_cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    let mut old = Http::over(tls).await.unwrap();
    assert_eq!(old.get("/", &[]).await.unwrap().status, 200);

    // What renewal does: swap a new certificate into the same store.
    let id = strait_trust::SpiffeId::workload(TD, "demo", "echo").unwrap();
    let key = strait_trust::KeyPair::generate().unwrap();
    let issued = pki
        .zone(ZONE)
        .ca
        .sign_leaf(&key.leaf_csr(&id).unwrap(), &id, Duration::from_secs(3600))
        .unwrap();
    sidecar
        .creds
        .replace_pem(&issued.chain_pem, &key.to_pem())
        .unwrap();

    let tls = tls_connect(sidecar.addr, Some(&web), &pki.trust, &[ALPN_H2])
        .await
        .unwrap();
    let new_cert = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
    assert_ne!(
        new_cert, old_cert,
        "a new connection sees the renewed certificate"
    );
    assert_eq!(new_cert, issued.cert_der);
    let mut new = Http::over(tls).await.unwrap();
    assert_eq!(new.get("/", &[]).await.unwrap().status, 200);
    // The connection made before the renewal was not dropped.
    assert_eq!(old.get("/", &[]).await.unwrap().status, 200);
}

impl Sidecar {
    /// Sets `MeshTLS` (and `TrafficPermission`) as a new config version.
    fn set_mode(&self, mode: pb::MeshTlsMode, permission: Option<pb::PermissionPolicy>) {
        let mut config = pb::SidecarConfig::clone(&self.config.borrow());
        config.version += 1;
        config.inbound = Some(pb::InboundPolicy {
            tls_mode: mode as i32,
            permissions: permission.into_iter().collect(),
            ..Default::default()
        });
        self.config.send_replace(Arc::new(config));
    }
}

/// A plaintext HTTP/1.1 (or, with `h2`, HTTP/2 prior knowledge) client on a fresh
/// connection.
async fn plaintext_http(addr: SocketAddr, h2: bool) -> Result<Http, hyper::Error> {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let io = hyper_util::rt::TokioIo::new(tcp);
    if h2 {
        let (send, conn) =
            hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await?;
        tokio::spawn(conn);
        Ok(Http::Two(send))
    } else {
        let (send, conn) = hyper::client::conn::http1::handshake(io).await?;
        tokio::spawn(conn);
        Ok(Http::One(send))
    }
}

/// Whether a plaintext HTTP/1.1 request gets no HTTP answer (the connection just ends).
async fn plaintext_refused(addr: SocketAddr) -> bool {
    let mut plain = TcpStream::connect(addr).await.unwrap();
    plain
        .write_all(b"GET / HTTP/1.1\r\nhost: echo\r\n\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(PATIENCE, plain.read_to_end(&mut buf))
        .await
        .expect("the sidecar closes a plaintext connection");
    !String::from_utf8_lossy(&buf).contains("HTTP/1.1")
}

#[tokio::test]
async fn mesh_tls_permissive_serves_plaintext_without_an_identity_and_strict_refuses_it() {
    let pki = Pki::new(&[ZONE]);
    let (app, _app_task) = demo_app("echo", "echo-1").await;
    let sidecar = Sidecar::start(&pki, Some(app), config()).await;
    let web = pki.workload(ZONE, "frontend", "web");
    let spoof = [(
        "x-strait-peer-identity",
        "spiffe://strait.local/ns/demo/sa/admin",
    )];

    // STRICT (the default): plaintext refused, mutual TLS served with the identity.
    assert!(plaintext_refused(sidecar.addr).await, "STRICT");
    let mut mtls = client(&sidecar, &web, &pki.trust, ALPN_H2).await;
    assert_eq!(
        mtls.get("/", &spoof).await.unwrap().json()["peer_identity"],
        WEB
    );

    // PERMISSIVE: plaintext HTTP/1.1 and HTTP/2 served, with no identity (a spoofed one is
    // removed); mutual TLS, on the open connection and a new one, still with the identity.
    sidecar.set_mode(pb::MeshTlsMode::Permissive, None);
    let mut plain = plaintext_http(sidecar.addr, false).await.unwrap();
    for mut http in [
        plaintext_http(sidecar.addr, true).await.unwrap(),
        plaintext_http(sidecar.addr, false).await.unwrap(),
    ] {
        let got = http.get("/x", &spoof).await.unwrap();
        assert_eq!(got.status, 200, "{got:?}");
        assert!(got.json()["peer_identity"].is_null(), "{got:?}");
        assert_eq!(got.json()["instance"], "echo-1");
    }
    assert!(plain.get("/", &spoof).await.unwrap().json()["peer_identity"].is_null());
    assert_eq!(
        mtls.get("/", &spoof).await.unwrap().json()["peer_identity"],
        WEB
    );
    let mut mtls1 = client(&sidecar, &web, &pki.trust, ALPN_HTTP1).await;
    assert_eq!(
        mtls1.get("/", &spoof).await.unwrap().json()["peer_identity"],
        WEB
    );
    assert_eq!(
        metric(
            &sidecar.registry,
            "strait_sidecar_inbound_plaintext_connections_total",
            &[("protocol", "http")]
        ),
        3.0
    );

    // A rule naming identities does not match a plaintext caller: default-deny denies it.
    sidecar.set_mode(
        pb::MeshTlsMode::Permissive,
        Some(pb::PermissionPolicy {
            default_deny: true,
            rules: vec![pb::PermissionRule {
                allow: true,
                from: vec!["spiffe://strait.local/ns/*/sa/web".into()],
                methods: vec![],
                path_prefixes: vec![],
            }],
            ..Default::default()
        }),
    );
    let got = plain.get("/", &[]).await.unwrap();
    assert_eq!(got.status, 403, "{got:?}");
    assert_eq!(got.headers.get("x-strait-error").unwrap(), "denied");
    assert_eq!(mtls.get("/", &[]).await.unwrap().status, 200);

    // Back to STRICT: the open plaintext connection is refused (and closed), new ones fail
    // as before; mutual TLS carries on.
    sidecar.set_mode(pb::MeshTlsMode::Strict, None);
    let got = plain.get("/", &[]).await.unwrap();
    assert_eq!(got.status, 403, "{got:?}");
    assert_eq!(
        got.headers.get("x-strait-error").unwrap(),
        "plaintext-refused"
    );
    assert!(plaintext_refused(sidecar.addr).await, "STRICT again");
    assert_eq!(
        mtls.get("/", &[]).await.unwrap().json()["peer_identity"],
        WEB
    );
}

#[tokio::test]
async fn mesh_tls_permissive_pipes_plaintext_tcp() {
    let pki = Pki::new(&[ZONE]);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = listener.local_addr().unwrap();
    let _echo = tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    let sidecar = Sidecar::start(&pki, Some(app), config()).await;
    let addr = sidecar.addr;
    // What comes back for `first`, or `None` when the sidecar closes the connection.
    let echo = |first: &'static [u8]| async move {
        let mut s = TcpStream::connect(addr).await.unwrap();
        let _ = s.write_all(first).await;
        let mut back = vec![0; first.len()];
        tokio::time::timeout(PATIENCE, s.read_exact(&mut back))
            .await
            .expect("an answer or a close")
            .ok()
            .map(|_| back)
    };

    // STRICT: the bytes go nowhere.
    assert_eq!(echo(b"hello, plain tcp\n").await, None);
    sidecar.set_mode(pb::MeshTlsMode::Permissive, None);
    assert_eq!(
        echo(b"hello, plain tcp\n").await.as_deref(),
        Some(&b"hello, plain tcp\n"[..])
    );
    // A server-first client that sends nothing is TCP too (after the sniff wait).
    let mut quiet = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    quiet.write_all(b"late\n").await.unwrap();
    let mut back = [0_u8; 5];
    tokio::time::timeout(PATIENCE, quiet.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"late\n");
    assert_eq!(
        metric(
            &sidecar.registry,
            "strait_sidecar_inbound_plaintext_connections_total",
            &[("protocol", "tcp")]
        ),
        2.0
    );
}
