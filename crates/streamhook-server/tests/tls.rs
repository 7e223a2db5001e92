//! TLS for real: a streamhook-server terminating TLS with a generated certificate, and a
//! second one forwarding to it over https with its http sink trusting that certificate.

mod common;

use std::time::Duration;

use common::*;
use streamhook_server::config::TlsConfig;
use streamhook_sinks::SinkConfig;
use streamhook_sinks::http::HttpConfig;

#[tokio::test]
async fn terminates_tls_and_forwards_over_https() {
    let certs = tempfile::tempdir().unwrap();
    let key =
        rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .unwrap();
    let (cert_path, key_path) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    std::fs::write(&cert_path, key.cert.pem()).unwrap();
    std::fs::write(&key_path, key.signing_key.serialize_pem()).unwrap();

    // The receiver terminates TLS.
    let mut receiver = TestServer::start(|c| {
        c.tls = Some(TlsConfig {
            cert: cert_path.clone(),
            key: key_path.clone(),
        })
    })
    .await;
    let https = format!("https://localhost:{}/webhook", receiver.addr.port());
    let _ = rustls::crypto::ring::default_provider().install_default();
    let trusting = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(key.cert.pem().as_bytes()).unwrap())
        .build()
        .unwrap();
    let (status, _) = post(&trusting, &https, fixture("seed/01-stream-started.json")).await;
    assert_eq!(status, 200, "an https request is accepted");
    // Plain http on the TLS port gets nowhere.
    assert!(
        client()
            .post(receiver.url("/webhook"))
            .body("{}")
            .send()
            .await
            .is_err()
    );
    // A client that does not trust the certificate is refused by TLS itself.
    assert!(client().post(&https).body("{}").send().await.is_err());

    // The forwarder's http sink trusts the receiver's certificate through `tls_ca`.
    let mut forward = HttpConfig::new(&https);
    forward.tls_ca = Some(cert_path.clone());
    let mut forwarder = TestServer::start(|c| {
        c.sinks = vec![SinkConfig::Http(forward)];
        c.retry.initial_backoff = Duration::from_millis(20);
    })
    .await;
    let (status, _) = post(
        &client(),
        &forwarder.url("/webhook"),
        fixture("seed/15-video-processed.json"),
    )
    .await;
    assert_eq!(status, 200);
    eventually("forwarded over https", || receiver.archive().len() == 2).await;
    let forwarded = &receiver.archive()[1];
    let original: serde_json::Value =
        serde_json::from_slice(&fixture("seed/15-video-processed.json")).unwrap();
    assert_eq!(forwarded["payload"], original);
    assert_eq!(forwarded["kinds"], serde_json::json!(["video.ready"]));
    forwarder.shutdown().await;
    receiver.shutdown().await;
}
