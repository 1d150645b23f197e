//! The HTTP client every outgoing call is built with: webhooks, and the
//! node-to-node calls of table sync and pull. rustls with the system's
//! root certificates plus an optional CA file; there is no switch to
//! accept any certificate.

/// An error and every error it wraps, so a TLS failure says why
/// ("invalid peer certificate: UnknownIssuer"), not only "error sending
/// request".
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// A client with these timeouts, default headers, and trusted certificates
/// (the system's roots, plus those of `ca_pem`).
pub fn client(
    connect_timeout: std::time::Duration,
    timeout: std::time::Duration,
    ca_pem: Option<&[u8]>,
    headers: &[(String, String)],
) -> Result<reqwest::Client, String> {
    let mut default_headers = reqwest::header::HeaderMap::new();
    for (k, v) in headers {
        let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
            .map_err(|e| format!("header `{k}`: {e}"))?;
        let mut value =
            reqwest::header::HeaderValue::from_str(v).map_err(|e| format!("header `{k}`: {e}"))?;
        value.set_sensitive(true);
        default_headers.insert(name, value);
    }
    let mut b = reqwest::Client::builder()
        .connect_timeout(connect_timeout)
        .timeout(timeout)
        .default_headers(default_headers)
        .https_only(false);
    if let Some(pem) = ca_pem {
        for cert in reqwest::Certificate::from_pem_bundle(pem)
            .map_err(|e| format!("ca_file: {}", error_chain(&e)))?
        {
            b = b.add_root_certificate(cert);
        }
    }
    b.build().map_err(|e| error_chain(&e))
}
