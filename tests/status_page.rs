//! The read-only status page and `/status.json` on the metrics address,
//! end to end: the real binary, a real headless Chromium.

mod common;

use common::chromium::Chromium;
use common::*;
use serde_json::Value;

fn spec(port: u16) -> String {
    format!(
        r#"
[supervisor]
metrics = "127.0.0.1:{port}"

[services.web]
command = ["sleep", "1000"]
replicas = 2

[services.db]
command = ["sleep", "1000"]
"#
    )
}

/// (replica, pid) of every replica of `status --json`, as the page's
/// rows carry them.
fn replicas_and_pids(status: &Value) -> Vec<(String, String)> {
    let mut rows = Vec::new();
    for s in status["services"].as_array().expect("services") {
        for r in s["replicas"].as_array().expect("replicas") {
            let pid = r["pid"].as_i64().map_or("-".into(), |p| p.to_string());
            rows.push((
                format!("{}.{}", s["name"].as_str().unwrap(), r["index"]),
                pid,
            ));
        }
    }
    rows
}

const ROWS: &str = "JSON.stringify([...document.querySelectorAll('tr[data-replica]')]\
    .map(r => [r.dataset.replica, r.dataset.pid]))";

fn page_rows(browser: &mut Chromium) -> Vec<(String, String)> {
    browser
        .eval(ROWS)
        .as_str()
        .and_then(|json| serde_json::from_str(json).ok())
        .unwrap_or_default()
}

#[test]
fn status_json_is_the_status_document_and_the_page_is_read_only() {
    let port = free_port();
    let p = Project::new(&spec(port));
    p.up(&[]);
    let mut served = Value::Null;
    let same = wait_until(SOON, || {
        let (code, headers, body) = http_get(port, "/status.json");
        assert_eq!(code, 200, "{body}");
        assert_eq!(headers["content-type"], "application/json");
        served = serde_json::from_str(&body).expect("JSON");
        served == p.status()
    });
    assert!(same, "/status.json {served:#} is not status --json");

    let (code, headers, body) = http_get(port, "/");
    assert_eq!(code, 200);
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    // Nothing inline may run: the script and style come from the binary.
    assert_eq!(
        headers["content-security-policy"],
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'"
    );
    for (path, kind) in [("/page.js", "text/javascript"), ("/page.css", "text/css")] {
        let (code, headers, body) = http_get(port, path);
        assert_eq!(
            (code, headers["content-type"].as_str()),
            (200, kind),
            "{body}"
        );
    }
    assert!(body.contains("data-replica=\"web.1\""), "{body}");
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "fetches from elsewhere: {body}"
    );

    // Nothing is changed over HTTP.
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    use std::io::{Read, Write};
    write!(
        stream,
        "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    assert!(response.starts_with("HTTP/1.1 405"), "{response}");
}

#[test]
fn the_page_in_chromium_shows_every_replica_and_updates_itself_after_a_kill_9() {
    let port = free_port();
    // `bad`'s spawn error names its command: markup that must stay text.
    let p = Project::new(&format!(
        r#"{}
[services.bad]
command = ["/no/such/<b id=injected>x</b>"]
restart = {{ policy = "never" }}
"#,
        spec(port)
    ));
    // Exit 1: `bad` failed, as it should; the rest runs.
    p.run(&["up", "-d"]).expect(1);
    // up -d ends at the failure: the others may still be on their way.
    let mut expected = Vec::new();
    let all_up = wait_until(SOON, || {
        expected = replicas_and_pids(&p.status());
        expected.iter().filter(|(_, pid)| pid != "-").count() == 3
    });
    assert!(all_up && expected.len() == 4, "{expected:?}");
    let mut browser = Chromium::open(&format!("http://127.0.0.1:{port}/"), p.marker());
    let mut rows = Vec::new();
    assert!(
        wait_until(SOON, || {
            rows = page_rows(&mut browser);
            rows == expected
        }),
        "page rows {rows:?}, status {expected:?}"
    );
    // The command's name is in the events as text, never as an element.
    let shown = wait_until(SOON, || {
        browser
            .eval("document.querySelector('ul.events').textContent")
            .as_str()
            .is_some_and(|t| t.contains("<b id=injected>x</b>"))
    });
    assert!(shown, "{}", browser.eval("document.body.innerHTML"));
    assert_eq!(
        browser.eval("document.getElementById('injected') === null"),
        Value::Bool(true),
        "the command's name became an element"
    );
    let png = browser.screenshot();
    // Base64 of the PNG signature, and more than a blank image.
    assert!(
        png.starts_with("iVBORw0KGgo") && png.len() > 10_000,
        "{}",
        png.len()
    );

    // Marks this document: a reload would lose the mark.
    browser.eval("window.loadedOnce = true");
    let old = pid_of(&p.replicas("web"), 1);
    kill9(old as i32);
    let mut now = Vec::new();
    let updated = wait_until(SOON, || {
        rows = page_rows(&mut browser);
        now = replicas_and_pids(&p.status());
        let web1 =
            |rows: &[(String, String)]| rows.iter().find(|r| r.0 == "web.1").map(|r| r.1.clone());
        web1(&rows).is_some_and(|pid| pid != "-" && pid != old.to_string()) && rows == now
    });
    assert!(
        updated,
        "page rows {rows:?}, status {now:?} (old pid {old})"
    );
    assert_eq!(
        browser.eval("window.loadedOnce"),
        Value::Bool(true),
        "the page was reloaded"
    );
    let last_exit = browser
        .eval("document.querySelector('tr[data-replica=\"web.1\"]').lastElementChild.textContent");
    assert!(
        last_exit.as_str().is_some_and(|t| t.starts_with("SIGKILL")),
        "{last_exit}"
    );
}
