//! A small client of etcd's v3 API through its JSON gateway (docs/cluster.md
//! §8): leases, a create-if-absent transaction, a guarded delete, and a
//! watch, over the HTTP client the project already has. Keys and values are
//! base64 in the gateway's JSON, and 64-bit integers are strings.
//!
//! Endpoints are tried in order, starting from the one that answered last:
//! a member that does not answer within the request timeout (stopped,
//! partitioned) is passed over for the next.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use serde_json::{Value, json};

pub struct Etcd {
    client: reqwest::Client,
    endpoints: Vec<String>,
    /// Index of the endpoint to try first.
    current: AtomicUsize,
    timeout: Duration,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No endpoint answered (connection refused, timeout).
    #[error("no etcd endpoint answered ({0})")]
    Unreachable(String),
    /// An endpoint answered with an error (no leader, lease not found…).
    #[error("etcd: {0}")]
    Refused(String),
}

/// The election key as a campaign found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Campaign {
    /// We created it: the fencing token is its creation revision.
    Won { token: u64 },
    /// Someone holds it: their value (node name) and token, and the store's
    /// revision then, from which to watch.
    Held {
        holder: String,
        token: u64,
        revision: u64,
    },
}

impl Etcd {
    /// `timeout` bounds every request but a watch's.
    pub fn new(endpoints: Vec<String>, timeout: Duration) -> reqwest::Result<Etcd> {
        Ok(Etcd {
            client: crate::http::client(timeout)?,
            endpoints,
            current: AtomicUsize::new(0),
            timeout,
        })
    }

    /// POSTs `body` to `path` of the first endpoint that answers, within
    /// `timeout` (None: the client's); the answer's head, and the endpoint.
    async fn send(
        &self,
        path: &str,
        body: &Value,
        timeout: Option<Duration>,
    ) -> Result<(reqwest::Response, usize), Error> {
        let start = self.current.load(Ordering::Relaxed);
        let mut last = String::new();
        for i in 0..self.endpoints.len() {
            let index = (start + i) % self.endpoints.len();
            let url = format!("{}{path}", self.endpoints[index]);
            let mut request = self.client.post(&url).body(body.to_string());
            if let Some(timeout) = timeout {
                request = request.timeout(timeout);
            }
            match request.send().await {
                Ok(response) => return Ok((response, index)),
                Err(e) => last = format!("{}: {}", self.endpoints[index], reason(&e)),
            }
        }
        Err(Error::Unreachable(last))
    }

    /// POSTs `body` to `path` of the first endpoint that answers. A
    /// request is not sent again to another endpoint once one answered:
    /// a transaction must not run twice.
    async fn call(&self, path: &str, body: &Value) -> Result<Value, Error> {
        let (response, index) = self.send(path, body, None).await?;
        let status = response.status();
        let text = response.text().await.map_err(|e| {
            Error::Unreachable(format!("{}: {}", self.endpoints[index], reason(&e)))
        })?;
        self.current.store(index, Ordering::Relaxed);
        let value: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if !status.is_success() {
            let message = value["message"]
                .as_str()
                .or(value["error"].as_str())
                .unwrap_or(&text);
            return Err(Error::Refused(format!("{status}: {}", message.trim())));
        }
        Ok(value)
    }

    /// A lease of `ttl`; its id.
    pub async fn grant(&self, ttl: Duration) -> Result<i64, Error> {
        let answer = self
            .call("/v3/lease/grant", &json!({ "TTL": ttl.as_secs() }))
            .await?;
        int(&answer["ID"]).ok_or_else(|| Error::Refused(format!("no lease in {answer}")))
    }

    /// Renews a lease; false if it is gone (expired or revoked).
    pub async fn keep_alive(&self, lease: i64) -> Result<bool, Error> {
        let answer = self
            .call("/v3/lease/keepalive", &json!({ "ID": lease.to_string() }))
            .await?;
        // The gateway streams: one `result` object per request.
        let ttl = int(&answer["result"]["TTL"]).unwrap_or(0);
        Ok(ttl > 0)
    }

    pub async fn revoke(&self, lease: i64) -> Result<(), Error> {
        self.call("/v3/lease/revoke", &json!({ "ID": lease.to_string() }))
            .await
            .map(drop)
    }

    /// Creates `key` = `value` under `lease` if no one holds it.
    pub async fn campaign(&self, key: &str, value: &str, lease: i64) -> Result<Campaign, Error> {
        match self.try_campaign(key, value, lease).await? {
            // Created under our lease by an attempt whose answer was lost (a
            // member that stalled, then ran it), or left by a resignation
            // not yet through: never taken up again, as its token may
            // have served a term already. It goes, and a new key (with a
            // new token) is tried for.
            Err(stale) => {
                self.resign(key, stale).await?;
                match self.try_campaign(key, value, lease).await? {
                    Ok(campaign) => Ok(campaign),
                    Err(_) => Err(Error::Refused(format!(
                        "{key} is still held under our lease"
                    ))),
                }
            }
            Ok(campaign) => Ok(campaign),
        }
    }

    /// One campaign transaction; `Err(token)`: the key is held under `lease`.
    async fn try_campaign(
        &self,
        key: &str,
        value: &str,
        lease: i64,
    ) -> Result<Result<Campaign, u64>, Error> {
        let k = B64.encode(key);
        let body = json!({
            "compare": [{ "target": "CREATE", "key": k, "create_revision": "0" }],
            "success": [{ "request_put": {
                "key": k, "value": B64.encode(value), "lease": lease.to_string()
            }}],
            "failure": [{ "request_range": { "key": k } }],
        });
        let answer = self.call("/v3/kv/txn", &body).await?;
        let revision = int(&answer["header"]["revision"]).unwrap_or(0) as u64;
        if answer["succeeded"].as_bool() == Some(true) {
            // The put is the transaction's only write: the key was created
            // at the revision the transaction made.
            return Ok(Ok(Campaign::Won { token: revision }));
        }
        let kv = &answer["responses"][0]["response_range"]["kvs"][0];
        let token = int(&kv["create_revision"]).unwrap_or(0) as u64;
        if int(&kv["lease"]) == Some(lease) {
            return Ok(Err(token));
        }
        Ok(Ok(Campaign::Held {
            holder: decode(&kv["value"]),
            token,
            revision,
        }))
    }

    /// Deletes `key` if it is still the one created at `token`.
    pub async fn resign(&self, key: &str, token: u64) -> Result<(), Error> {
        let k = B64.encode(key);
        let body = json!({
            "compare": [{ "target": "CREATE", "key": k, "create_revision": token.to_string() }],
            "success": [{ "request_delete_range": { "key": k } }],
        });
        self.call("/v3/kv/txn", &body).await.map(drop)
    }

    /// Returns once `key` is deleted after `revision`, or `wait` has passed,
    /// or the watch broke: in each case, the key may be free.
    pub async fn watch_for_delete(&self, key: &str, revision: u64, wait: Duration) {
        let body = json!({ "create_request": {
            "key": B64.encode(key), "start_revision": (revision + 1).to_string()
        }});
        let Ok((mut response, _)) = self.send("/v3/watch", &body, Some(wait)).await else {
            // Do not spin on an endpoint that refuses at once.
            tokio::time::sleep(self.timeout).await;
            return;
        };
        let mut pending = Vec::new();
        while let Ok(Some(chunk)) = response.chunk().await {
            pending.extend_from_slice(&chunk);
            // One JSON object per line.
            while let Some(end) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=end).collect();
                let Ok(message) = serde_json::from_slice::<Value>(&line) else {
                    continue;
                };
                let events = message["result"]["events"].as_array().cloned();
                if events
                    .unwrap_or_default()
                    .iter()
                    .any(|e| e["type"].as_str() == Some("DELETE"))
                    || message["result"]["canceled"].as_bool() == Some(true)
                {
                    return;
                }
            }
        }
    }
}

/// The gateway writes 64-bit integers as strings.
fn int(v: &Value) -> Option<i64> {
    match v {
        Value::String(s) => s.parse().ok(),
        v => v.as_i64(),
    }
}

fn decode(v: &Value) -> String {
    v.as_str()
        .and_then(|s| B64.decode(s).ok())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// reqwest's error with its causes, on one line.
fn reason(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text = format!("{text}: {s}");
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_integers_are_strings_or_numbers() {
        assert_eq!(int(&json!("7")), Some(7));
        assert_eq!(int(&json!(7)), Some(7));
        assert_eq!(int(&Value::Null), None);
        assert_eq!(decode(&json!(B64.encode("db-a"))), "db-a");
    }
}
