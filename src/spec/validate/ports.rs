//! Ports (docs/spec-file.md §5): replica i of a service listens on
//! `port + i`, so the range of each service must end at 65535 and must not
//! overlap another's, and `{port}` can only be expanded where `port` is set.

use super::service::Draft;
use super::text::quote;
use super::{Checker, Value};

impl Checker<'_> {
    /// The ports of the service being read: `{port}` needs a `port`
    /// (`port_value`, valid or not), and its replicas' range must end at 65535.
    pub(super) fn service_ports(
        &mut self,
        name: &str,
        port_value: Option<&Value>,
        port: Option<u16>,
        replicas: u32,
    ) {
        self.check_port_uses(name, port_value.is_some());
        if let (Some(base), Some(v)) = (port, port_value) {
            let end = u32::from(base) + replicas;
            if end > 65536 {
                self.error(
                    v.span(),
                    format!(
                        "{} of service {} go past 65535",
                        ports(base.into(), end),
                        quote(name)
                    ),
                    "lower `port` or `replicas`; replica i listens on port + i",
                );
            }
        }
    }

    /// `{port}` anywhere in a service that has no `port` cannot be expanded.
    fn check_port_uses(&mut self, service: &str, has_port: bool) {
        let uses = std::mem::take(&mut self.port_uses);
        if let (false, Some(first)) = (has_port, uses.into_iter().next()) {
            self.error(
                first,
                format!(
                    "`{{port}}` is used but service {} has no `port`",
                    quote(service)
                ),
                "set `port` (replica i gets port + i) or remove the placeholder",
            );
        }
    }

    /// Port ranges, in file order, so a clash is reported at the later service.
    pub(super) fn check_ports(&mut self, drafts: &[Draft]) {
        let mut taken: Vec<(&str, u32, u32)> = Vec::new();
        for d in drafts {
            let (Some(port), Some(at)) = (d.service.port, &d.port_at) else {
                continue;
            };
            // A service scaled to 0 still owns its base port: scaling it up must not collide.
            let first = u32::from(port);
            let end = first + d.service.replicas.max(1);
            if let Some((other, other_first, other_end)) = taken
                .iter()
                .find(|(_, f, e)| first < *e && *f < end)
                .copied()
            {
                self.error(
                    at.clone(),
                    format!(
                        "service {} ({}) clashes with service {} ({})",
                        quote(&d.service.name),
                        ports(first, end),
                        quote(other),
                        ports(other_first, other_end),
                    ),
                    "give each service its own port range; replica i listens on port + i",
                );
            }
            taken.push((&d.service.name, first, end));
        }
    }
}

fn ports(first: u32, end: u32) -> String {
    if end <= first + 1 {
        format!("port {first}")
    } else {
        format!("ports {first}-{}", end - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::one_problem;

    #[test]
    fn a_service_without_replicas_still_owns_its_port() {
        let (line, message) = one_problem(
            "[services.a]\ncommand = [\"a\"]\nport = 9000\nreplicas = 0\n\
             [services.b]\ncommand = [\"b\"]\nport = 9000\n",
        );
        assert_eq!(line, 7);
        assert!(message.contains("clashes with service \"a\""), "{message}");
    }
}
