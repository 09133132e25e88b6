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
    /// Only backups of this site (the snapshot label `ckan-vault snapshots` shows) count
    /// for `latest`, in a vault several sites share [default: every site's]
    #[arg(long, value_name = "LABEL")]
    site: Option<String>,
}

/// Exit code of a writer whose reader went away, as a shell reports a SIGPIPE death.
const EXIT_BROKEN_PIPE: u8 = 141;

pub fn run(g: &Global, args: Args) -> Result<ExitCode> {
    let loaded = g.load()?;
    let vault = super::open_vault(&loaded)?;
    let stdout = PipeOut {
        inner: std::io::stdout().lock(),
        closed: false,
    };
    let mut out = std::io::BufWriter::with_capacity(1 << 20, stdout);
    let result = ckan_vault::restore::dump_file(
        &vault,
        &args.snapshot,
        args.site.as_deref(),
        &args.path,
        &mut out,
    )
    .map_err(anyhow::Error::from)
    .and_then(|size| Ok(out.flush().map(|()| size)?));
    match result {
        Ok(size) => {
            log::info!("wrote {size} bytes");
            Ok(ExitCode::SUCCESS)
        }
        // `dump … | head`: the reader had enough, which is not a damaged vault.
        Err(e) if out.get_ref().closed => {
            log::debug!("stdout closed by its reader: {e:#}");
            Ok(ExitCode::from(EXIT_BROKEN_PIPE))
        }
        Err(e) => Err(e),
    }
}

/// Standard output that remembers whether its reader closed the pipe.
struct PipeOut<W> {
    inner: W,
    closed: bool,
}

impl<W: Write> PipeOut<W> {
    fn note(&mut self, r: std::io::Result<usize>) -> std::io::Result<usize> {
        if let Err(e) = &r
            && e.kind() == std::io::ErrorKind::BrokenPipe
        {
            self.closed = true;
        }
        r
    }
}

impl<W: Write> Write for PipeOut<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let r = self.inner.write(buf);
        self.note(r)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let r = self.inner.flush().map(|()| 0);
        self.note(r).map(|_| ())
    }
}
