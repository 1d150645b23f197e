//! Certificates made in the test: a CA, and a server certificate it signs
//! for `127.0.0.1` and `localhost` (crate `rcgen`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A CA and one server certificate, as PEM and as a rustls server config.
#[derive(Debug)]
pub struct TestCa {
    /// The CA certificate (what a client trusts through `ca_file`).
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
    pub server: Arc<rustls::ServerConfig>,
}

impl TestCa {
    pub fn new() -> TestCa {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
        let ca_key = KeyPair::generate().expect("ca key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "tandem test CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let key = KeyPair::generate().expect("server key");
        let params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server params");
        let cert = params.signed_by(&key, &ca, &ca_key).expect("server cert");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .expect("server config");
        TestCa {
            ca_pem: ca.pem(),
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
            server: Arc::new(server),
        }
    }

    /// Write the CA certificate to `dir/ca.pem`; returns the path.
    pub fn write_ca(&self, dir: &Path) -> PathBuf {
        let path = dir.join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("ca.pem");
        path
    }

    /// Write the server's certificate and key to `dir`; returns the paths.
    pub fn write_server(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
        std::fs::write(&cert, &self.server_cert_pem).expect("server.pem");
        std::fs::write(&key, &self.server_key_pem).expect("server.key");
        (cert, key)
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

/// A TLS front for a plain HTTP server (as a reverse proxy terminating
/// TLS would be): each request that arrives over TLS is sent on to
/// `target` on a connection of its own, and the answer sent back.
#[derive(Debug)]
pub struct TlsFront {
    addr: String,
}

impl TlsFront {
    pub fn start(target: &str, tls: Arc<rustls::ServerConfig>) -> TlsFront {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr").to_string();
        let target = target.to_owned();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (tls, target) = (tls.clone(), target.clone());
                std::thread::spawn(move || {
                    let Ok(conn) = rustls::ServerConnection::new(tls) else {
                        return;
                    };
                    let mut front = rustls::StreamOwned::new(conn, stream);
                    while forward_one(&mut front, &target).is_some() {}
                });
            }
        });
        TlsFront { addr }
    }

    /// `https://ADDR`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }
}

/// Read one request from `front`, send it to `target`, write back the
/// answer. `None` when the client is gone.
fn forward_one<S: std::io::Read + std::io::Write>(front: &mut S, target: &str) -> Option<()> {
    use std::io::{BufRead, Read, Write};
    let mut reader = std::io::BufReader::new(&mut *front);
    let mut head = String::new();
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        let lower = line.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if !lower.starts_with("connection:") {
            head.push_str(&line);
        }
    }
    head.push_str("Connection: close\r\n\r\n");
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    drop(reader);
    let mut back = std::net::TcpStream::connect(target).ok()?;
    back.write_all(head.as_bytes()).ok()?;
    back.write_all(&body).ok()?;
    let mut answer = Vec::new();
    back.read_to_end(&mut answer).ok()?;
    front.write_all(&answer).ok()?;
    front.flush().ok()?;
    Some(())
}
