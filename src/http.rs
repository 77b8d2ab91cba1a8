//! The HTTP client used for `http` health probes and webhook alerts.

use std::time::Duration;

/// A client with `timeout` on every request and no redirects followed.
/// reqwest is built without a crypto provider of its own (no aws-lc C
/// build): it uses the process default, ring, installed here once (a second
/// install is a harmless error).
pub fn client(timeout: Duration) -> reqwest::Result<reqwest::Client> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("supervise/", env!("CARGO_PKG_VERSION")))
        .build()
}
