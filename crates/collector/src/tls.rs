//! TLS as the reference collector's `configtls` sets it up, with rustls (ring): the `tls`
//! settings of the OTLP exporters ([`TlsClientConfig`]) and of the OTLP receivers
//! ([`TlsServerConfig`]), read from PEM files (or inline PEM) into rustls configurations, and
//! the accept loop that completes the servers' handshakes.
//!
//! Every error names the key it comes from, relative to the component (`tls.ca_file: cannot
//! read /x: No such file or directory (os error 2)`), so that the service can prefix it with the
//! component's path.

use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme, SupportedProtocolVersion};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// How long a client may take to complete its TLS handshake with a receiver.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// `tls` of a client (the `otlp` and `otlphttp` exporters): configtls `ClientConfig`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsClientConfig {
    /// No TLS at all (gRPC: plain HTTP/2). For `otlphttp` the URL's scheme decides.
    pub insecure: bool,
    /// TLS without checking the server's certificate (chain nor name).
    pub insecure_skip_verify: bool,
    /// The CA that signs the server's certificate; replaces the system roots unless
    /// `include_system_ca_certs_pool`.
    pub ca_file: Option<String>,
    /// `ca_file`'s content inline.
    pub ca_pem: Option<String>,
    /// Also trust the system roots (the webpki roots bundled in the binary) with `ca_file`.
    pub include_system_ca_certs_pool: bool,
    /// Client certificate (mTLS), with `key_file`.
    pub cert_file: Option<String>,
    pub cert_pem: Option<String>,
    pub key_file: Option<String>,
    pub key_pem: Option<String>,
    /// The name the server's certificate is checked against (and sent as SNI).
    pub server_name_override: Option<String>,
    /// `"1.2"` (the default) or `"1.3"`.
    pub min_version: Option<String>,
    /// `"1.2"` or `"1.3"` (the default).
    pub max_version: Option<String>,
}

/// `tls` of a server (`receivers.otlp.protocols.grpc|http.tls`): configtls `ServerConfig`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TlsServerConfig {
    pub cert_file: Option<String>,
    pub cert_pem: Option<String>,
    pub key_file: Option<String>,
    pub key_pem: Option<String>,
    /// Require client certificates signed by this CA (mTLS).
    pub client_ca_file: Option<String>,
    /// Refused for a server: it is meaningless there (the reference ignores it); the CA of
    /// client certificates is `client_ca_file`.
    pub ca_file: Option<String>,
    pub min_version: Option<String>,
    pub max_version: Option<String>,
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn read(key: &str, path: &str) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{key}: cannot read {path}: {e}"))
}

/// The certificates of a PEM file (`key` names the setting for errors).
pub fn read_certs(key: &str, path: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let bytes = read(key, path)?;
    parse_certs(key, path, &bytes)
}

fn parse_certs(
    key: &str,
    what: &str,
    bytes: &[u8],
) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{key}: {what} is not valid PEM: {e}"))?;
    if certs.is_empty() {
        return Err(format!("{key}: {what} holds no PEM certificate"));
    }
    Ok(certs)
}

/// The private key of a PEM file (PKCS#8, PKCS#1 or SEC1).
pub fn read_key(key: &str, path: &str) -> Result<PrivateKeyDer<'static>, String> {
    let bytes = read(key, path)?;
    parse_key(key, path, &bytes)
}

fn parse_key(key: &str, what: &str, bytes: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(bytes)
        .map_err(|e| format!("{key}: {what} holds no PEM private key: {e}"))
}

/// Certificates from `<name>_file` or `<name>_pem` (not both).
fn certs_of(
    name: &str,
    file: &Option<String>,
    pem: &Option<String>,
) -> Result<Option<Vec<CertificateDer<'static>>>, String> {
    match (file, pem) {
        (Some(_), Some(_)) => Err(format!(
            "tls.{name}_pem: cannot be set together with tls.{name}_file"
        )),
        (Some(path), None) => read_certs(&format!("tls.{name}_file"), path).map(Some),
        (None, Some(pem)) => {
            parse_certs(&format!("tls.{name}_pem"), "the inline PEM", pem.as_bytes()).map(Some)
        }
        (None, None) => Ok(None),
    }
}

/// The certificate chain and key of `cert_*`/`key_*`: both or neither.
fn identity(
    cert_file: &Option<String>,
    cert_pem: &Option<String>,
    key_file: &Option<String>,
    key_pem: &Option<String>,
) -> Result<Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>, String> {
    let certs = certs_of("cert", cert_file, cert_pem)?;
    let key = match (key_file, key_pem) {
        (Some(_), Some(_)) => {
            return Err("tls.key_pem: cannot be set together with tls.key_file".into())
        }
        (Some(path), None) => Some(read_key("tls.key_file", path)?),
        (None, Some(pem)) => Some(parse_key("tls.key_pem", "the inline PEM", pem.as_bytes())?),
        (None, None) => None,
    };
    match (certs, key) {
        (Some(c), Some(k)) => Ok(Some((c, k))),
        (None, None) => Ok(None),
        (Some(_), None) => Err("tls.key_file: must be set with tls.cert_file".into()),
        (None, Some(_)) => Err("tls.cert_file: must be set with tls.key_file".into()),
    }
}

fn version_of(key: &str, v: &str) -> Result<u8, String> {
    match v.trim() {
        "1.2" => Ok(2),
        "1.3" => Ok(3),
        "1.0" | "1.1" => Err(format!(
            "{key}: TLS {v} is not supported (insecure): use \"1.2\" or \"1.3\""
        )),
        other => Err(format!(
            "{key}: {other:?} is not a TLS version: use \"1.2\" or \"1.3\""
        )),
    }
}

/// The protocol versions between `min_version` (default 1.2) and `max_version` (default 1.3).
fn versions(
    min: &Option<String>,
    max: &Option<String>,
) -> Result<&'static [&'static SupportedProtocolVersion], String> {
    static BOTH: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13, &rustls::version::TLS12];
    static V12: &[&SupportedProtocolVersion] = &[&rustls::version::TLS12];
    static V13: &[&SupportedProtocolVersion] = &[&rustls::version::TLS13];
    let lo = match min.as_deref() {
        None | Some("") => 2,
        Some(v) => version_of("tls.min_version", v)?,
    };
    let hi = match max.as_deref() {
        None | Some("") => 3,
        Some(v) => version_of("tls.max_version", v)?,
    };
    match (lo, hi) {
        (2, 3) => Ok(BOTH),
        (2, 2) => Ok(V12),
        (3, 3) => Ok(V13),
        _ => Err("tls.max_version: is lower than tls.min_version".into()),
    }
}

/// The rustls client configuration of `tls` (roots, client certificate, versions, ALPN).
/// Errors name the key (`tls.ca_file: ...`).
pub fn client_config(
    tls: &TlsClientConfig,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, String> {
    let provider = provider();
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(&tls.min_version, &tls.max_version)?)
        .map_err(|e| format!("tls.min_version: {e}"))?;
    let ca = certs_of("ca", &tls.ca_file, &tls.ca_pem)?;
    let builder = if tls.insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(SkipVerify(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        let system = match ca {
            Some(certs) => {
                let key = if tls.ca_file.is_some() {
                    "tls.ca_file"
                } else {
                    "tls.ca_pem"
                };
                for c in certs {
                    roots
                        .add(c)
                        .map_err(|e| format!("{key}: not a usable CA certificate: {e}"))?;
                }
                tls.include_system_ca_certs_pool
            }
            None => true,
        };
        if system {
            roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        }
        match tls.server_name_override.as_deref() {
            Some(n) if !n.is_empty() => {
                let name = server_name(tls, n)?;
                let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| format!("tls.ca_file: {e}"))?;
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(OverrideName { inner, name }))
            }
            _ => builder.with_root_certificates(roots),
        }
    };
    let mut config = match identity(&tls.cert_file, &tls.cert_pem, &tls.key_file, &tls.key_pem)? {
        Some((certs, key)) => builder
            .with_client_auth_cert(certs, key)
            .map_err(|e| format!("tls.key_file: does not go with tls.cert_file: {e}"))?,
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(config)
}

/// The name to check the server's certificate against: `server_name_override`, else `host`.
pub fn server_name(tls: &TlsClientConfig, host: &str) -> Result<ServerName<'static>, String> {
    match tls.server_name_override.as_deref() {
        Some(n) if !n.is_empty() => ServerName::try_from(n.to_string()).map_err(|e| {
            format!("tls.server_name_override: {n:?} is not a valid server name: {e}")
        }),
        _ => {
            let host = host.trim_start_matches('[').trim_end_matches(']');
            ServerName::try_from(host.to_string())
                .map_err(|e| format!("endpoint: {host:?} is not a valid server name: {e}"))
        }
    }
}

/// The rustls server configuration of `tls` (certificate, client CA, versions, ALPN).
pub fn server_config(
    tls: &TlsServerConfig,
    alpn: &[&[u8]],
) -> Result<Arc<rustls::ServerConfig>, String> {
    if tls.ca_file.is_some() {
        return Err(
            "tls.ca_file: is not used by a server: set tls.client_ca_file to require \
                    client certificates signed by that CA"
                .into(),
        );
    }
    let provider = provider();
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(&tls.min_version, &tls.max_version)?)
        .map_err(|e| format!("tls.min_version: {e}"))?;
    let (certs, key) = identity(&tls.cert_file, &tls.cert_pem, &tls.key_file, &tls.key_pem)?
        .ok_or("tls.cert_file: must be set (with tls.key_file) for a TLS server")?;
    let builder = match &tls.client_ca_file {
        Some(path) => {
            let mut roots = RootCertStore::empty();
            for c in read_certs("tls.client_ca_file", path)? {
                roots.add(c).map_err(|e| {
                    format!("tls.client_ca_file: {path} is not a usable CA certificate: {e}")
                })?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| format!("tls.client_ca_file: {path}: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| format!("tls.key_file: does not go with tls.cert_file: {e}"))?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// `server_name_override`: the server's certificate is checked against the override, whatever
/// name the client connected with (reqwest names the server after the URL's host).
#[derive(Debug)]
struct OverrideName {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for OverrideName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecure_skip_verify`: accepts any certificate, but still checks that the handshake is
/// signed by the key of the certificate presented.
#[derive(Debug)]
struct SkipVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for SkipVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Accepts connections on `listener` and completes their TLS handshakes concurrently (each
/// within [`HANDSHAKE_TIMEOUT`]); the connections that made it come out of the returned
/// channel. A failed handshake is logged and closed. Accepting stops when the receiver is
/// dropped. Must run inside a tokio runtime.
pub fn accept_tls(
    listener: TcpListener,
    config: Arc<rustls::ServerConfig>,
    component: &'static str,
) -> mpsc::Receiver<TlsStream<TcpStream>> {
    let (tx, rx) = mpsc::channel(64);
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => break,
                a = listener.accept() => a,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: wait instead of spinning.
                    tracing::warn!(receiver = component, error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = tx.send(stream).await;
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(receiver = component, %peer, error = %e, "TLS handshake failed");
                    }
                    Err(_) => {
                        tracing::debug!(receiver = component, %peer, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    rx
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};

    /// A CA, a server certificate for localhost/127.0.0.1 and a client certificate, written
    /// as PEM files into a temporary directory (removed when dropped).
    pub(crate) struct TestPki {
        pub dir: tempfile::TempDir,
    }

    impl TestPki {
        pub(crate) fn new() -> Self {
            let dir = tempfile::tempdir().unwrap();
            let write = |name: &str, text: String| {
                std::fs::write(dir.path().join(name), text).unwrap();
            };
            let ca_key = KeyPair::generate().unwrap();
            let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
            ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            let ca = ca_params.self_signed(&ca_key).unwrap();
            write("ca.pem", ca.pem());
            let issuer = Issuer::new(ca_params, ca_key);
            let server_key = KeyPair::generate().unwrap();
            let server = CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
                .unwrap()
                .signed_by(&server_key, &issuer)
                .unwrap();
            write("server.pem", server.pem());
            write("server.key", server_key.serialize_pem());
            let client_key = KeyPair::generate().unwrap();
            let client = CertificateParams::new(vec!["client".into()])
                .unwrap()
                .signed_by(&client_key, &issuer)
                .unwrap();
            write("client.pem", client.pem());
            write("client.key", client_key.serialize_pem());
            // Another CA, that signed nothing here.
            let other_key = KeyPair::generate().unwrap();
            let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
            other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            write("other-ca.pem", other.self_signed(&other_key).unwrap().pem());
            Self { dir }
        }

        pub(crate) fn path(&self, name: &str) -> String {
            self.dir.path().join(name).to_string_lossy().into_owned()
        }

        /// Server settings; with `mtls`, client certificates signed by the CA are required.
        pub(crate) fn server(&self, mtls: bool) -> TlsServerConfig {
            TlsServerConfig {
                cert_file: Some(self.path("server.pem")),
                key_file: Some(self.path("server.key")),
                client_ca_file: mtls.then(|| self.path("ca.pem")),
                ..Default::default()
            }
        }

        /// Client settings trusting `ca` ("ca.pem" or "other-ca.pem"), with the client
        /// certificate when `cert`.
        pub(crate) fn client(&self, ca: &str, cert: bool) -> TlsClientConfig {
            TlsClientConfig {
                ca_file: Some(self.path(ca)),
                cert_file: cert.then(|| self.path("client.pem")),
                key_file: cert.then(|| self.path("client.key")),
                ..Default::default()
            }
        }
    }

    #[test]
    fn bad_files_are_named_with_their_key() {
        let pki = TestPki::new();
        let missing = TlsClientConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        };
        let e = client_config(&missing, &[]).unwrap_err();
        assert!(
            e.starts_with("tls.ca_file: cannot read /nonexistent/ca.pem: "),
            "{e}"
        );
        let garbage = pki.path("garbage.pem");
        std::fs::write(&garbage, "not pem at all").unwrap();
        let bad = TlsClientConfig {
            ca_file: Some(garbage.clone()),
            ..Default::default()
        };
        let e = client_config(&bad, &[]).unwrap_err();
        assert!(
            e.starts_with("tls.ca_file: ") && e.contains("no PEM certificate"),
            "{e}"
        );
        let cert_only = TlsClientConfig {
            cert_file: Some(pki.path("client.pem")),
            ..Default::default()
        };
        assert!(client_config(&cert_only, &[])
            .unwrap_err()
            .starts_with("tls.key_file: must be set"));
        let key_is_cert = TlsClientConfig {
            cert_file: Some(pki.path("client.pem")),
            key_file: Some(pki.path("client.pem")),
            ..Default::default()
        };
        assert!(client_config(&key_is_cert, &[])
            .unwrap_err()
            .starts_with("tls.key_file: "));
        let mismatch = TlsServerConfig {
            key_file: Some(pki.path("client.key")),
            ..pki.server(false)
        };
        assert!(server_config(&mismatch, &[])
            .unwrap_err()
            .starts_with("tls.key_file: does not go with"));
        assert!(server_config(&TlsServerConfig::default(), &[])
            .unwrap_err()
            .starts_with("tls.cert_file: must be set"));
        let with_ca = TlsServerConfig {
            ca_file: Some(pki.path("ca.pem")),
            ..pki.server(false)
        };
        assert!(server_config(&with_ca, &[])
            .unwrap_err()
            .starts_with("tls.ca_file"));
        let missing_client_ca = TlsServerConfig {
            client_ca_file: Some("/nonexistent/c.pem".into()),
            ..pki.server(false)
        };
        assert!(server_config(&missing_client_ca, &[])
            .unwrap_err()
            .starts_with("tls.client_ca_file: cannot read /nonexistent/c.pem"));
        assert!(server_config(&pki.server(true), &[b"h2"]).is_ok());
        assert!(client_config(&pki.client("ca.pem", true), &[]).is_ok());
        // Inline PEM works as the file does.
        let inline = TlsClientConfig {
            ca_pem: Some(std::fs::read_to_string(pki.path("ca.pem")).unwrap()),
            ..Default::default()
        };
        assert!(client_config(&inline, &[]).is_ok());
    }

    #[test]
    fn versions_follow_the_reference_keys() {
        let v = |min: Option<&str>, max: Option<&str>| {
            versions(&min.map(String::from), &max.map(String::from))
        };
        assert_eq!(v(None, None).unwrap().len(), 2);
        assert_eq!(v(Some("1.3"), None).unwrap().len(), 1);
        assert_eq!(v(Some("1.2"), Some("1.2")).unwrap().len(), 1);
        assert!(v(Some("1.1"), None)
            .unwrap_err()
            .starts_with("tls.min_version"));
        assert!(v(None, Some("2"))
            .unwrap_err()
            .starts_with("tls.max_version"));
        assert!(v(Some("1.3"), Some("1.2"))
            .unwrap_err()
            .starts_with("tls.max_version"));
        let parsed: TlsClientConfig = serde_json::from_str(
            r#"{"ca_file": "/c", "min_version": "1.3", "server_name_override": "b",
                "insecure_skip_verify": true}"#,
        )
        .unwrap();
        assert_eq!(parsed.min_version.as_deref(), Some("1.3"));
        assert!(serde_json::from_str::<TlsClientConfig>(r#"{"cipher_suites": []}"#).is_err());
        assert!(serde_json::from_str::<TlsServerConfig>(r#"{"insecure": true}"#).is_err());
    }

    #[tokio::test]
    async fn handshakes_run_concurrently_and_versions_are_enforced() {
        let pki = TestPki::new();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = TlsServerConfig {
            min_version: Some("1.3".into()),
            ..pki.server(false)
        };
        let mut accepted = accept_tls(listener, server_config(&server, &[]).unwrap(), "test");
        // A client that connects and says nothing does not hold up the next one.
        let _stalled = TcpStream::connect(addr).await.unwrap();
        let client = client_config(&pki.client("ca.pem", false), &[]).unwrap();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = ServerName::try_from("localhost").unwrap();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let _client =
            tokio::time::timeout(Duration::from_secs(5), connector.connect(name.clone(), tcp))
                .await
                .unwrap()
                .unwrap();
        let stream = tokio::time::timeout(Duration::from_secs(5), accepted.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            stream.get_ref().1.protocol_version(),
            Some(rustls::ProtocolVersion::TLSv1_3)
        );
        // A TLS 1.2 client is refused by a server that asks for 1.3.
        let old = TlsClientConfig {
            max_version: Some("1.2".into()),
            ..pki.client("ca.pem", false)
        };
        let connector =
            tokio_rustls::TlsConnector::from(Arc::new(client_config(&old, &[]).unwrap()));
        let tcp = TcpStream::connect(addr).await.unwrap();
        assert!(connector.connect(name, tcp).await.is_err());
        // Dropping the receiver stops accepting and closes the listener.
        drop(accepted);
        let mut refused = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
            if TcpStream::connect(addr).await.is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "the listener is still open");
    }
}
