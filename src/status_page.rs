//! The read-only status page served with the metrics (`GET /` on the
//! `[supervisor] metrics` address, docs/spec-file.md §11.1): the table of
//! `supervise top` and the last events, as one HTML document with no
//! framework and nothing fetched from elsewhere. Every value is escaped: a
//! name, a path or an event's text never becomes markup.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::time::SystemTime;

use crate::commands::format::{Cells, age, compact, millis};
use crate::control::protocol::{EventRecord, StatusReport};

/// What the page may load and run: its own script and style sheet, and
/// fetches of itself; nothing inline, so markup that escaped escaping
/// still could not run.
pub const POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'";

/// `/page.css`.
pub const STYLE: &str = "\
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}\
h1{font-size:1.3em;margin:0}h2{font-size:1.1em}\
table{border-collapse:collapse;font-variant-numeric:tabular-nums}\
th,td{padding:.2em .8em .2em 0;text-align:left;white-space:nowrap}\
thead th{border-bottom:1px solid #999}tr.service th{padding-top:.6em}\
.failed{color:#c00}.backoff,.unhealthy,.degraded,.stopping{color:#a60}\
.starting,.pending{color:#08a}.running,.healthy,.completed{color:#070}\
.stopped,.exited{color:#888}#gone{display:none;background:#fdd;padding:.5em}\
body[data-gone] #gone{display:block}ul.events{list-style:none;padding:0}time{color:#666}";

/// `/page.js`: every second, fetches the page again and swaps its content
/// in; on failure it shows that the supervisor does not answer (and keeps
/// trying).
pub const SCRIPT: &str = "\
setInterval(async()=>{try{\
const r=await fetch(location.pathname,{cache:'no-store'});if(!r.ok)throw 0;\
const d=new DOMParser().parseFromString(await r.text(),'text/html');\
document.getElementById('status').replaceWith(d.getElementById('status'));\
delete document.body.dataset.gone}catch(e){document.body.dataset.gone=1}},1000)";

/// `text` safe in HTML text and in a quoted attribute.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page: `report` (none before the first one) and the last
/// `events`, oldest first.
pub fn html(report: Option<&StatusReport>, events: &[EventRecord], now: SystemTime) -> String {
    let mut out = String::new();
    let title = report.map_or_else(String::new, |r| format!(": {}", r.supervisor.spec));
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>supervise{}</title><link rel=\"stylesheet\" href=\"/page.css\">\
         <noscript><meta http-equiv=\"refresh\" content=\"2\"></noscript></head><body>\
         <p id=\"gone\">The supervisor does not answer.</p><main id=\"status\">",
        escape(&title)
    );
    match report {
        Some(report) => body(&mut out, report, now),
        None => out.push_str("<p>Starting…</p>"),
    }
    out.push_str("<h2>Last events</h2><ul class=\"events\">");
    for e in events.iter().rev() {
        let _ = write!(
            out,
            "<li><time>{}</time> {}</li>",
            escape(&millis(&e.at)),
            escape(&e.detail)
        );
    }
    let _ = writeln!(
        out,
        "</ul><p>Read-only, updated every second. The same as JSON: \
         <a href=\"/status.json\">/status.json</a>; metrics: <a href=\"/metrics\">/metrics</a>.</p>\
         </main><script src=\"/page.js\"></script></body></html>"
    );
    out
}

fn body(out: &mut String, report: &StatusReport, now: SystemTime) {
    let sup = &report.supervisor;
    let uptime = age(&sup.started_at, now).map_or_else(|| "-".into(), |d| compact(d, 2));
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let replicas = report.services.iter().flat_map(|s| &s.replicas);
    for r in replicas.clone() {
        *counts.entry(r.state.as_str()).or_default() += 1;
    }
    let counts: Vec<String> = counts
        .iter()
        .map(|(state, n)| format!("<span class=\"{0}\">{n} {0}</span>", escape(state)))
        .collect();
    let _ = write!(
        out,
        "<h1>supervise</h1><p>{} · supervisor pid {}, up {uptime} · {} services, {} replicas: {}</p>\
         <table><thead><tr><th>REPLICA</th><th>PID</th><th>STATE</th><th>HEALTH</th><th>ROLE</th>\
         <th>RESTARTS</th><th>UPTIME</th><th>CPU</th><th>MEM</th><th>LAST EXIT</th></tr></thead><tbody>",
        escape(&sup.spec),
        sup.pid,
        report.services.len(),
        replicas.count(),
        counts.join(" ")
    );
    for s in &report.services {
        let running = s.replicas.iter().filter(|r| r.state == "running").count();
        let _ = write!(
            out,
            "<tr class=\"service\" data-service=\"{0}\"><th colspan=\"2\">{0} {running}/{1}</th>\
             <th class=\"{2}\" colspan=\"8\">{2}</th></tr>",
            escape(&s.name),
            s.desired,
            escape(&s.state)
        );
        for r in &s.replicas {
            let c = Cells::of(&s.name, r, now);
            let _ = write!(
                out,
                "<tr data-replica=\"{0}\" data-pid=\"{1}\"><td>{0}</td><td>{1}</td>\
                 <td class=\"{2}\">{2}</td><td class=\"{3}\">{3}</td><td>{4}</td><td>{5}</td>\
                 <td>{6}</td><td>{7}</td><td>{8}</td><td>{9}</td></tr>",
                escape(&c.replica),
                escape(&c.pid),
                escape(&c.state),
                escape(&c.health),
                escape(&c.role),
                escape(&c.restarts),
                escape(&c.uptime),
                escape(&c.cpu),
                escape(&c.memory),
                escape(&c.last_exit),
            );
        }
    }
    out.push_str("</tbody></table>");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::select::tests::report;

    #[test]
    fn every_value_is_escaped() {
        let mut r = report(&[("web", &["running"])]);
        r.supervisor.spec = "/tmp/<script>alert(1)</script>/s.toml".into();
        r.services[0].name = "we\"b<b>".into();
        r.services[0].replicas[0].role = Some("<i>&".into());
        let event = EventRecord {
            at: "2026-11-23T12:00:00.000001Z".into(),
            event: "spawned".into(),
            service: None,
            replica: None,
            pid: None,
            detail: "<img src=x onerror=alert(1)>".into(),
        };
        let page = html(Some(&r), &[event], SystemTime::now());
        for raw in ["<script>alert", "<b>", "<i>", "<img"] {
            assert!(!page.contains(raw), "{raw} unescaped in {page}");
        }
        assert!(page.contains("/tmp/&lt;script&gt;alert(1)&lt;/script&gt;/s.toml"));
        assert!(page.contains("data-replica=\"we&quot;b&lt;b&gt;.0\""));
        assert!(page.contains("&lt;img src=x onerror=alert(1)&gt;"));
        assert!(page.contains("&lt;i&gt;&amp;"));
        // The page's own script is the only one, and not inline.
        assert_eq!(page.matches("<script").count(), 1, "{page}");
        assert!(
            page.contains("<script src=\"/page.js\"></script>"),
            "{page}"
        );
    }

    #[test]
    fn the_page_has_a_row_per_replica_with_its_pid_and_the_events_newest_first() {
        let r = report(&[("db", &["running"]), ("api", &["running", "backoff"])]);
        let event = |detail: &str| EventRecord {
            at: "2026-11-23T12:00:00.000001Z".into(),
            event: "spawned".into(),
            service: None,
            replica: None,
            pid: None,
            detail: detail.into(),
        };
        let page = html(
            Some(&r),
            &[event("first"), event("second")],
            SystemTime::now(),
        );
        assert!(
            page.contains("<tr data-replica=\"db.0\" data-pid=\"1000\">"),
            "{page}"
        );
        assert!(
            page.contains("<tr data-replica=\"api.1\" data-pid=\"-\">"),
            "{page}"
        );
        assert!(
            page.contains("<td class=\"backoff\">backoff</td>"),
            "{page}"
        );
        assert!(page.find("second").unwrap() < page.find("first").unwrap());
        assert!(page.contains("3 replicas: <span class=\"backoff\">1 backoff</span>"));
    }
}
