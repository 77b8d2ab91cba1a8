//! `depends_on` (docs/spec-file.md §8): each service's dependencies as
//! written, then the checks that need every service at once (a dependency
//! that can never complete, cycles) and the start order they give.

use std::collections::BTreeSet;

use toml::de::DeValue;

use super::graph::{find_cycles, topological_order};
use super::read::Table;
use super::service::Draft;
use super::text::{clip, closest, list, quote};
use super::{Checker, Span};
use crate::spec::{Condition, Dependency, Policy, Service};

impl Checker<'_> {
    /// The dependencies as written, with the span of each entry.
    pub(super) fn depends_on(
        &mut self,
        service: &Table,
        me: &str,
        names: &BTreeSet<&str>,
    ) -> (Vec<Dependency>, Vec<Span>) {
        const CONDITIONS: &[(&str, Condition)] = &[
            ("started", Condition::Started),
            ("healthy", Condition::Healthy),
            ("completed", Condition::Completed),
        ];
        let mut out = (Vec::new(), Vec::new());
        let Some(v) = service.get("depends_on") else {
            return out;
        };
        // (service, span of its name, span of the whole entry, condition)
        let entries: Vec<(&str, Span, Span, Option<Condition>)> = match v.get_ref() {
            DeValue::Array(_) => self
                .string_list("depends_on", v)
                .unwrap_or_default()
                .into_iter()
                .map(|(name, at)| (name, at.clone(), at, Some(Condition::Started)))
                .collect(),
            DeValue::Table(t) => Table::new(String::new(), v.span(), t)
                .entries
                .into_iter()
                .map(|(k, c)| {
                    let name = k.get_ref().as_ref();
                    let key = format!("depends_on.{}", clip(name));
                    let condition = self.choice(&key, c, CONDITIONS);
                    (name, k.span(), k.span().start..c.span().end, condition)
                })
                .collect(),
            _ => {
                self.wrong_type::<()>(
                    "depends_on",
                    v,
                    "an array of service names or a table of conditions",
                    "write depends_on = [\"db\"] or depends_on = { db = \"healthy\" }",
                );
                Vec::new()
            }
        };
        for (name, name_at, entry_at, condition) in entries {
            if name == me {
                self.error(
                    name_at,
                    format!("service {} depends on itself", quote(me)),
                    "remove it from its own `depends_on`",
                );
            } else if !names.contains(&name) {
                let hint = match closest(name, names.iter().copied()) {
                    Some(close) => format!("did you mean \"{close}\"?"),
                    None => format!(
                        "defined services: {}",
                        list(&names.iter().copied().collect::<Vec<_>>())
                    ),
                };
                self.error(
                    name_at,
                    format!("unknown service {} in `depends_on`", quote(name)),
                    hint,
                );
            } else if let Some(condition) = condition {
                out.0.push(Dependency {
                    service: name.to_string(),
                    condition,
                });
                out.1.push(entry_at);
            }
        }
        out
    }

    /// `drafts` are sorted by name.
    pub(super) fn check_dependencies(&mut self, drafts: &[Draft]) {
        let index = |name: &str| {
            drafts
                .binary_search_by(|d| d.service.name.as_str().cmp(name))
                .ok()
        };
        for d in drafts {
            for (dep, at) in d.service.depends_on.iter().zip(&d.dependency_at) {
                let target = index(&dep.service).map(|i| &drafts[i]);
                if dep.condition == Condition::Completed
                    && target.is_some_and(|t| t.policy == Some(Policy::Always))
                {
                    self.error(
                        at.clone(),
                        format!(
                            "service {} never completes: its restart policy is \"always\"",
                            quote(&dep.service)
                        ),
                        format!(
                            "give {} restart = {{ policy = \"never\" }} or \"on-failure\", or wait for \"started\" or \"healthy\"",
                            quote(&dep.service)
                        ),
                    );
                }
            }
        }
        let graph = dependency_graph(drafts);
        for cycle in find_cycles(&graph) {
            let path: Vec<&str> = cycle
                .iter()
                .map(|&i| drafts[i].service.name.as_str())
                .collect();
            // Point at the dependency that closes the cycle.
            let (from, to) = (cycle[cycle.len() - 2], cycle[0]);
            let at = drafts[from]
                .service
                .depends_on
                .iter()
                .position(|dep| dep.service == drafts[to].service.name)
                .and_then(|i| drafts[from].dependency_at.get(i).cloned())
                .unwrap_or_else(|| drafts[from].at.clone());
            self.error(
                at,
                format!("dependency cycle: {}", path.join(" -> ")),
                "remove one of these dependencies; a service starts only after those it depends on",
            );
        }
    }
}

/// Edges from each service to the services it depends on (indices into `drafts`,
/// which are sorted by name); unknown services and self-dependencies are left out.
fn dependency_graph(drafts: &[Draft]) -> Vec<Vec<usize>> {
    drafts
        .iter()
        .enumerate()
        .map(|(me, d)| {
            d.service
                .depends_on
                .iter()
                .filter_map(|dep| {
                    drafts
                        .binary_search_by(|t| t.service.name.as_str().cmp(&dep.service))
                        .ok()
                })
                .filter(|&to| to != me)
                .collect()
        })
        .collect()
}

/// Services in start order: dependencies first, ties broken by name.
pub(super) fn start_order(drafts: Vec<Draft>) -> Vec<Service> {
    let graph = dependency_graph(&drafts);
    let order = topological_order(&graph);
    let mut slots: Vec<Option<Service>> = drafts.into_iter().map(|d| Some(d.service)).collect();
    order
        .into_iter()
        .filter_map(|i| slots.get_mut(i).and_then(Option::take))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::super::tests::{problems, spec};

    #[test]
    fn a_two_service_cycle_is_reported_once() {
        let found = problems(
            "[services.a]\ncommand = [\"a\"]\ndepends_on = [\"b\"]\n\
             [services.b]\ncommand = [\"b\"]\ndepends_on = [\"a\"]\n",
        );
        assert_eq!(found, [(6, "dependency cycle: a -> b -> a".to_string())]);
    }

    #[test]
    fn completed_is_fine_for_jobs_that_end() {
        spec(
            "[services.job]\ncommand = [\"j\"]\nrestart = { policy = \"on-failure\" }\n\
             [services.app]\ncommand = [\"a\"]\ndepends_on = { job = \"completed\" }\n",
        );
    }
}
