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
