//! The man pages in `man/` are generated from the clap definitions; this test
//! fails when they are stale. Regenerate with:
//!     SUPERVISE_UPDATE_MAN=1 cargo test --test man_pages

use std::path::Path;

use clap::CommandFactory;
use supervise::cli::Cli;

fn render(cmd: &clap::Command) -> Vec<u8> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut out)
        .expect("rendering to memory cannot fail");
    out
}

/// `supervise.1` plus one page per subcommand (`supervise-up.1`, …).
fn pages() -> Vec<(String, Vec<u8>)> {
    let mut root = Cli::command();
    root.build();
    let mut pages = vec![("supervise.1".to_string(), render(&root))];
    for sub in root
        .get_subcommands()
        .filter(|s| !s.is_hide_set() && s.get_name() != "help")
    {
        let name = format!("supervise-{}", sub.get_name());
        let page = sub.clone().display_name(&name).bin_name(&name);
        pages.push((format!("{name}.1"), render(&page)));
    }
    pages
}

#[test]
fn man_pages_are_up_to_date() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("man");
    let update = std::env::var_os("SUPERVISE_UPDATE_MAN").is_some();
    let mut stale = Vec::new();
    for (file, content) in pages() {
        let path = dir.join(&file);
        if update {
            std::fs::write(&path, &content).expect("writing man page");
        } else if std::fs::read(&path).ok().as_deref() != Some(content.as_slice()) {
            stale.push(file);
        }
    }
    assert!(
        stale.is_empty(),
        "stale man pages {stale:?}; run SUPERVISE_UPDATE_MAN=1 cargo test --test man_pages"
    );
}
