//! Finding a running supervisor from its spec without validating the spec:
//! the commands that only talk to one (`status`, `stop`, `events`, …) need
//! two settings of `[supervisor]`, and must keep working while the file is
//! being edited and momentarily invalid. `check`, `up` and `reload` validate
//! in full (see `validate`).

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::de::{DeTable, DeValue};

use super::SupervisorSettings;
use super::validate::normalize;

/// What locating a supervisor reads of a spec.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    /// As the full validation resolves it (relative to the spec's directory).
    pub state_dir: PathBuf,
    /// None when absent or not a duration (the supervisor's own applies).
    pub shutdown_timeout: Option<Duration>,
    /// Why the file did not read cleanly as TOML, when it did not: what
    /// could be read is used all the same.
    pub problem: Option<String>,
}

impl Located {
    /// What a validated spec says, for a command that validated it anyway.
    pub fn of(spec: &super::Spec) -> Located {
        Located {
            state_dir: spec.supervisor.state_dir.clone(),
            shutdown_timeout: Some(spec.supervisor.shutdown_timeout),
            problem: None,
        }
    }
}

/// Reads `[supervisor] state_dir` and `shutdown_timeout` of the spec at
/// `path`; `Err` when the file cannot be read at all.
pub fn locate(path: &Path) -> Result<Located, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let dir = parent
        .canonicalize()
        .map_err(|e| format!("cannot resolve the directory of {}: {e}", path.display()))?;
    let (root, errors) = DeTable::parse_recoverable(&text);
    let supervisor = match entry(root.get_ref(), "supervisor") {
        Some(DeValue::Table(t)) => Some(t),
        _ => None,
    };
    let string = |key: &str| match entry(supervisor?, key) {
        Some(DeValue::String(s)) => Some(s.to_string()),
        _ => None,
    };
    let state_dir = match string("state_dir").filter(|d| !d.is_empty()) {
        Some(d) => normalize(&dir.join(d)),
        None => SupervisorSettings::with_defaults(&dir).state_dir,
    };
    Ok(Located {
        state_dir,
        shutdown_timeout: string("shutdown_timeout")
            .and_then(|d| humantime::parse_duration(d.as_str()).ok()),
        problem: errors.first().map(|e| e.message().to_string()),
    })
}

fn entry<'t, 'i>(table: &'t DeTable<'i>, key: &str) -> Option<&'t DeValue<'i>> {
    table
        .iter()
        .find(|(k, _)| k.get_ref().as_ref() == key)
        .map(|(_, v)| v.get_ref())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn located(text: &str) -> Located {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("supervise.toml");
        std::fs::write(&path, text).unwrap();
        let mut found = locate(&path).unwrap();
        let root = dir.path().canonicalize().unwrap();
        found.state_dir = found
            .state_dir
            .strip_prefix(&root)
            .unwrap_or(&found.state_dir)
            .into();
        found
    }

    #[test]
    fn reads_the_state_dir_as_validation_resolves_it() {
        let found = located("[supervisor]\nstate_dir = \"./var/run\"\nshutdown_timeout = \"5s\"\n");
        assert_eq!(found.state_dir, Path::new("var/run"));
        assert_eq!(found.shutdown_timeout, Some(Duration::from_secs(5)));
        assert_eq!(found.problem, None);
        assert_eq!(located("[services.a]\n").state_dir, Path::new(".supervise"));
        assert_eq!(
            located("[supervisor]\nstate_dir = \"/abs\"\n").state_dir,
            Path::new("/abs")
        );
    }

    #[test]
    fn a_file_being_edited_still_says_where_its_supervisor_is() {
        let found =
            located("[supervisor]\nstate_dir = \"state\"\n[services.a]\ncommand = [\"a\",\n");
        assert_eq!(found.state_dir, Path::new("state"));
        assert!(found.problem.is_some());
        // Invalid as a spec, not as TOML: nothing to say here.
        assert_eq!(located("[services.a]\nreplicas = \"x\"\n").problem, None);
    }
}
