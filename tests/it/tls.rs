//! TLS (issue 18): the fake hub behind a TLS front whose certificate a private CA made by the
//! test signed, as a mirror inside a company is. Trusting that CA through `SSL_CERT_FILE`,
//! `REQUESTS_CA_BUNDLE` or `CURL_CA_BUNDLE` makes it work; without them the certificate error
//! ends the run at once (one connection, no retries) with a hint naming the variables; a bundle
//! that cannot be read is `E_ARGS`.
//!
//! Edges: the real binary against the fake hub on loopback; the TLS front is a byte relay on
//! another loopback port that terminates TLS (tokio-rustls with ring).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio_rustls::rustls;

use crate::fake_hub::{FakeHub, FileSpec, RepoSpec};
use crate::reliability::Workspace;

const MODEL: &str = "corp/private-mirror-model";

/// A private CA, and a TLS relay to `backend` serving a certificate it signed for
/// `127.0.0.1`. Counts the connections it accepted.
struct TlsFront {
    url: String,
    ca_pem: String,
    accepted: Arc<AtomicUsize>,
    _thread: std::thread::JoinHandle<()>,
}

impl TlsFront {
    fn start(backend: std::net::SocketAddr) -> TlsFront {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kmm test private CA");
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = rcgen::KeyPair::generate().unwrap();
        let leaf =
            rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
                .unwrap()
                .signed_by(&leaf_key, &ca, &ca_key)
                .unwrap();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let url = format!("https://{}", listener.local_addr().unwrap());
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        return;
                    };
                    counter.fetch_add(1, Ordering::SeqCst);
                    let acceptor = acceptor.clone();
                    tokio::spawn(async move {
                        // An untrusting client aborts the handshake: nothing to relay then.
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let Ok(mut upstream) = tokio::net::TcpStream::connect(backend).await else {
                            return;
                        };
                        let _ = tokio::io::copy_bidirectional(&mut tls, &mut upstream).await;
                    });
                }
            });
        });
        TlsFront {
            url,
            ca_pem: ca.pem(),
            accepted,
            _thread: thread,
        }
    }
}

fn stage() -> (FakeHub, TlsFront, Workspace, PathBuf) {
    // Regular files only: the API serves them itself, so every request goes through the front.
    let hub = FakeHub::start(vec![RepoSpec::new(MODEL).commit(vec![
        FileSpec::regular("config.json", br#"{"model_type":"bert"}"#.to_vec()),
        FileSpec::regular("tokenizer.json", br#"{"version":"1.0"}"#.to_vec()),
    ])]);
    let backend = hub.url().trim_start_matches("http://").parse().unwrap();
    let front = TlsFront::start(backend);
    let mut ws = Workspace::new(&hub, &[(MODEL, "main")]);
    ws.endpoint = front.url.clone();
    let ca = ws.dir.path().join("corp-ca.pem");
    fs_err::write(&ca, &front.ca_pem).unwrap();
    (hub, front, ws, ca)
}

#[test]
fn an_untrusted_certificate_fails_at_once_with_a_hint_naming_the_variables() {
    let (_hub, front, ws, _ca) = stage();
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.error_code(), "E_NET", "{}", run.stdout);
    let doc = run.json();
    let message = doc["message"].as_str().unwrap();
    assert!(message.contains("not trusted"), "{message}");
    for variable in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "SSL_CERT_DIR"] {
        assert!(
            message.contains(variable),
            "the hint names {variable}: {message}"
        );
    }
    assert_eq!(
        front.accepted.load(Ordering::SeqCst),
        1,
        "a certificate error was retried"
    );
    assert!(!ws.model_dir(MODEL).exists());
}

#[test]
fn a_private_ca_named_by_any_of_the_usual_variables_is_trusted() {
    for variable in ["SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"] {
        let (_hub, _front, mut ws, ca) = stage();
        ws.set_env(variable, ca.to_str().unwrap());
        ws.run(&["apply", "--quiet"]).ok();
        assert_eq!(
            fs_err::read(ws.model_dir(MODEL).join("config.json")).unwrap(),
            br#"{"model_type":"bert"}"#,
            "{variable}"
        );
    }
}

#[test]
fn a_private_ca_in_ssl_cert_dir_is_trusted() {
    let (_hub, _front, mut ws, ca) = stage();
    let dir = ws.dir.path().join("certs");
    fs_err::create_dir_all(&dir).unwrap();
    fs_err::copy(&ca, dir.join("corp-ca.pem")).unwrap();
    ws.set_env("SSL_CERT_DIR", dir.to_str().unwrap());
    ws.run(&["apply", "--quiet"]).ok();
    assert!(ws.model_dir(MODEL).join("tokenizer.json").is_file());
}

#[test]
fn a_ca_bundle_that_cannot_be_read_or_holds_no_certificate_is_e_args() {
    let (_hub, front, mut ws, _ca) = stage();
    ws.set_env("REQUESTS_CA_BUNDLE", "/nonexistent/corp-ca.pem");
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.error_code(), "E_ARGS", "{}", run.stdout);
    assert!(run.stdout.contains("REQUESTS_CA_BUNDLE"), "{}", run.stdout);
    let not_pem = ws.dir.path().join("not-a-bundle.txt");
    fs_err::write(&not_pem, "hello").unwrap();
    ws.set_env("REQUESTS_CA_BUNDLE", not_pem.to_str().unwrap());
    let run = ws.run(&["apply", "--json"]);
    assert_eq!(run.error_code(), "E_ARGS", "{}", run.stdout);
    assert!(run.stdout.contains("no PEM certificate"), "{}", run.stdout);
    assert_eq!(front.accepted.load(Ordering::SeqCst), 0, "nothing was sent");
}
