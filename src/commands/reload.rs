//! `supervise reload [SPEC]`: validate an edited spec here, then have the
//! supervisor apply it; print the plan.

use std::path::Path;

use crate::cli::{Cli, ReloadArgs};
use crate::control::client;
use crate::control::protocol::ReloadPlan;
use crate::exit;
use crate::spec::{self, Located};

use super::{Context, Exit, Failure, absolute, emit, spec_file, warn};

pub fn run(cli: &Cli, args: &ReloadArgs) -> Exit {
    client::set_reply_timeout(args.answer.timeout);
    // Without a spec file here, the supervisor reloads the file it was
    // started with (and validates it itself).
    let (path, spec) = match spec_file(cli, args.spec.as_ref()) {
        None => (None, None),
        Some(path) => match spec::load(&path) {
            Ok(spec) => (Some(absolute(&path)), Some(spec)),
            Err(diagnostics) => {
                eprint!("{diagnostics}");
                return Err(Failure::new(
                    exit::FAILED,
                    format!(
                        "reload rejected: {} is invalid; the running state is untouched",
                        path.display()
                    ),
                ));
            }
        },
    };
    let ctx = Context::new(cli, spec.as_ref().map(Located::of));
    let (plan, warning) = client::reload(&ctx.state_dir, path, args.dry_run)?;
    warn(warning.as_deref());
    // -q silences the report of an applied reload; asked-for output (a dry
    // run, --json) is the result and still shows.
    if cli.quiet && !args.dry_run && !args.json {
        return Ok(exit::OK);
    }
    let text = if args.json {
        serde_json::to_string(&plan).expect("a plan always serialises")
    } else {
        render(&plan, &ctx.state_dir)
    };
    emit(&mut std::io::stdout().lock(), text.trim_end())?;
    Ok(exit::OK)
}

fn render(plan: &ReloadPlan, state_dir: &Path) -> String {
    let list = |names: &[String]| {
        if names.is_empty() {
            "-".to_string()
        } else {
            names.join(", ")
        }
    };
    let mut out = format!(
        "added      {}\nremoved    {}\nchanged    {}\nunchanged  {}\n",
        list(&plan.added),
        list(&plan.removed),
        list(&plan.changed),
        list(&plan.unchanged)
    );
    if plan.applied {
        out.push_str(&format!(
            "applied to the supervisor of {}: added services start, removed ones stop, changed ones restart\n",
            state_dir.display()
        ));
    } else {
        out.push_str("dry run: nothing was changed\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_lists_each_kind_of_change() {
        let plan = ReloadPlan {
            added: vec!["web".into()],
            removed: vec![],
            changed: vec!["api".into(), "worker".into()],
            unchanged: vec!["db".into()],
            applied: false,
        };
        assert_eq!(
            render(&plan, Path::new("/s")),
            "added      web\nremoved    -\nchanged    api, worker\nunchanged  db\n\
             dry run: nothing was changed\n"
        );
    }
}
