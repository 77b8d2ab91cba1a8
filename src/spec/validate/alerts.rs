//! `[[alerts]]` (docs/spec-file.md §10): which events run a command or post
//! to a webhook.

use toml::de::DeValue;

use super::read::{Placeholders, Table};
use super::{Checker, Value};
use crate::spec::{Alert, AlertTarget};

const ALERT_KEYS: &[&str] = &["events", "command", "webhook"];
/// The event names alerts may name (docs/commands.md §4).
const EVENTS: &[&str] = &[
    "spawned",
    "exited",
    "restarted",
    "unhealthy",
    "healthy",
    "promoted",
    "failed",
    "scaled",
    "reloaded",
    "oom",
    "memory_limit",
    "elected",
    "resigned",
    "fenced",
];

impl Checker<'_> {
    pub(super) fn alerts(&mut self, root: &Table) -> Vec<Alert> {
        let Some(v) = root.get("alerts") else {
            return Vec::new();
        };
        let DeValue::Array(items) = v.get_ref() else {
            self.wrong_type::<()>(
                "alerts",
                v,
                "an array of tables",
                "write each alert as an [[alerts]] section (double brackets)",
            );
            return Vec::new();
        };
        items.iter().filter_map(|item| self.alert(item)).collect()
    }

    fn alert(&mut self, v: &Value) -> Option<Alert> {
        let t = self.table("[[alerts]]".into(), "alerts", v.span(), v, ALERT_KEYS)?;
        let events = match t.get("events") {
            Some(v) => self.events(v),
            None => {
                self.missing(&t, "events", "e.g. events = [\"failed\", \"unhealthy\"]");
                None
            }
        };
        let command = self.field(&t, "command", |c, k, v| c.argv(k, v, Placeholders::Replica));
        let webhook = self.field(&t, "webhook", |c, k, v| c.http_url(k, v, None));
        match (t.entry("command"), t.entry("webhook")) {
            (None, None) => self.missing(
                &t,
                "command",
                "add command = [\"./notify.sh\"] (the event arrives as JSON on stdin) or webhook = \"http://...\"",
            ),
            (Some(_), Some((k, _))) => self.error(
                k.span(),
                "an alert has both `command` and `webhook`",
                "use one [[alerts]] section for each target",
            ),
            _ => {}
        }
        let target = command
            .map(AlertTarget::Command)
            .or(webhook.map(AlertTarget::Webhook))?;
        Some(Alert {
            events: events?,
            target,
        })
    }

    fn events(&mut self, v: &Value) -> Option<Vec<String>> {
        let events = self.string_list("events", v)?;
        if events.is_empty() {
            self.error(
                v.span(),
                "`events` is empty",
                "list the events to alert on, e.g. [\"failed\", \"unhealthy\"]",
            );
            return None;
        }
        let mut ok = true;
        for (event, at) in &events {
            if !EVENTS.contains(event) {
                ok = false;
                self.not_one_of("events", at.clone(), event, EVENTS);
            }
        }
        ok.then(|| events.iter().map(|(e, _)| e.to_string()).collect())
    }
}
