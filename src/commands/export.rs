//! `supervise export --format kubernetes|systemd`: the spec translated for
//! an engine made for many machines (docs/export.md; the mapping is in
//! [`crate::export`]).

use std::path::Path;

use crate::cli::{Cli, ExportArgs, ExportFormat};
use crate::exit;
use crate::export::{self, Export, ExportError, File};

use super::{Exit, Failure, emit, read_spec};

pub fn run(cli: &Cli, args: &ExportArgs) -> Exit {
    let path = cli.spec_path(args.spec.as_ref());
    let spec = read_spec(&path)?;
    let project = args
        .project
        .clone()
        .unwrap_or_else(|| export::project_name(&spec));
    let source = path.display().to_string();
    let result = match args.format {
        ExportFormat::Kubernetes => export::kubernetes::export(&spec, &project, &source),
        ExportFormat::Systemd => {
            let search = std::env::var_os("PATH").unwrap_or_default();
            Ok(export::systemd::export(&spec, &project, &source, &search))
        }
    };
    let Export { files, warnings } = result.map_err(|ExportError(problems)| {
        for problem in problems {
            eprintln!("error: {problem}");
        }
        Failure::quiet(exit::USAGE)
    })?;
    for warning in &warnings {
        eprintln!("warning: {warning}");
    }
    if args.strict && !warnings.is_empty() {
        let n = warnings.len();
        let what = if n == 1 { "warning" } else { "warnings" };
        return Err(Failure::new(
            exit::FAILED,
            format!("--strict: {n} {what}, so nothing was written"),
        ));
    }
    match (&args.output, args.format) {
        (None, ExportFormat::Kubernetes) => {
            let mut out = std::io::stdout().lock();
            for file in &files {
                emit(&mut out, file.content.trim_end_matches('\n'))?;
            }
        }
        (None, ExportFormat::Systemd) => {
            // Several units on one stream: each under a `# <file name>`
            // line (as `podman generate systemd` does), a blank line between.
            let mut out = std::io::stdout().lock();
            for (i, file) in files.iter().enumerate() {
                let gap = if i == 0 { "" } else { "\n" };
                let text = format!(
                    "{gap}# {}\n{}",
                    file.path.display(),
                    file.content.trim_end()
                );
                emit(&mut out, &text)?;
            }
        }
        (Some(output), ExportFormat::Kubernetes) => {
            // An existing directory gets <project>.yaml; anything else is the file.
            let [file] = files.as_slice() else {
                unreachable!("a Kubernetes export is one file")
            };
            let target = if output.is_dir() {
                output.join(&file.path)
            } else {
                output.clone()
            };
            write(&target, file)?;
            if !cli.quiet {
                emit(
                    &mut std::io::stdout(),
                    &format!("wrote {}", target.display()),
                )?;
            }
        }
        (Some(dir), ExportFormat::Systemd) => {
            let mut written = Vec::new();
            for file in &files {
                let target = dir.join(&file.path);
                write(&target, file)?;
                written.push(target);
            }
            if !cli.quiet {
                let mut out = std::io::stdout().lock();
                for target in written {
                    emit(&mut out, &format!("wrote {}", target.display()))?;
                }
            }
        }
    }
    Ok(exit::OK)
}

/// Writes one file, creating its directory (an export's drop-in
/// directories, or the output directory itself).
fn write(target: &Path, file: &File) -> Result<(), Failure> {
    let failed = |e: std::io::Error| {
        Failure::new(
            exit::FAILED,
            format!("cannot write {}: {e}", target.display()),
        )
    };
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(failed)?;
    }
    std::fs::write(target, &file.content).map_err(failed)?;
    Ok(())
}
