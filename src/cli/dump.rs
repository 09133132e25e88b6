//! `ckan-vault dump SNAPSHOT PATH`

use std::io::Write;
use std::process::ExitCode;

use anyhow::Result;

use super::Global;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// `latest`, `latest~N` or a snapshot id
    snapshot: String,
    /// A path inside the snapshot, e.g. db/ckan.pgdump
    path: String,
}

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    let loaded = g.load()?;
    let vault = super::open_vault(&loaded)?;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout.lock());
    let size = ckan_vault::restore::dump_file(&vault, &args.snapshot, &args.path, &mut out)?;
    out.flush()?;
    log::info!("wrote {size} bytes");
    Ok(ExitCode::SUCCESS)
}
