//! `supervise scale SVC=N…`: new replica counts, kept as desired state.

use crate::cli::{Cli, ScaleArgs};
use crate::control::client;
use crate::control::protocol::Request;
use crate::exit;

use super::{Exit, context, emit, warn};

pub fn run(cli: &Cli, args: &ScaleArgs) -> Exit {
    client::set_reply_timeout(args.answer.timeout);
    let ctx = context(cli)?;
    let counts = args.counts.iter().cloned().collect();
    let client::Affected { replicas, warning } =
        client::affected(&ctx.state_dir, Request::Scale { counts })?;
    warn(warning.as_deref());
    let mut out = std::io::stdout().lock();
    if args.json {
        let json = serde_json::json!({ "replicas": replicas });
        emit(&mut out, &json.to_string())?;
    } else if !cli.quiet {
        for (service, count) in &args.counts {
            emit(&mut out, &format!("{service}: {count} replicas"))?;
        }
        let list = if replicas.is_empty() {
            "none".to_string()
        } else {
            replicas.join(", ")
        };
        emit(&mut out, &format!("affected: {list}"))?;
    }
    Ok(exit::OK)
}
