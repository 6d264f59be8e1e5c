//! The `gatehouse` command line: `run`, `check`, `--version`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use gatehouse::config::{self, LoadError, LogFormat};

#[derive(Parser)]
#[command(
    name = "gatehouse",
    version,
    about = "Gatehouse: an edge proxy and API gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[arg(long, short)]
        config: PathBuf,
        /// Log format; overrides `log.format` in the config.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
    },
    /// Validate a config file: exit 0 when valid, 1 with every error otherwise.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn main() -> ExitCode {
    gatehouse::alloc::disable_huge_pages();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match check(&config) {
            Ok(c) => {
                println!(
                    "{}: ok ({} listeners, {} routes)",
                    config.display(),
                    c.listeners.len(),
                    c.routes.len()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run { config, log_format } => match run(config, log_format) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gatehouse: {e:#}");
                ExitCode::FAILURE
            }
        },
    }
}

/// Validates the config, then loads every certificate, key and CA file it names.
fn check(path: &std::path::Path) -> anyhow::Result<config::Config> {
    let c = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    gatehouse::tls::TlsRt::build(&c).context("TLS settings")?;
    Ok(c)
}

fn run(path: PathBuf, log_format: Option<LogFormatArg>) -> anyhow::Result<()> {
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(LoadError::Invalid(errors)) => anyhow::bail!("invalid config:\n{errors}"),
        Err(e) => return Err(e.into()),
    };
    let format = match log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Text) => LogFormat::Text,
        None => config.log.format,
    };
    init_logging(&config.log.level, format);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %path.display(), workers = config.workers, "starting");
    // One worker: a current-thread runtime, with no cross-thread
    // scheduling to pay for. More: tokio's work-stealing scheduler.
    let mut builder = if config.workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        b.worker_threads(config.workers);
        b
    };
    let runtime = builder
        .enable_all()
        // Each worker hands its free pages back when it next goes idle
        // after the process asked for it (`alloc::release_free_pages`).
        .on_thread_park(gatehouse::alloc::on_worker_park)
        .build()
        .context("building the async runtime")?;
    let result = runtime.block_on(gatehouse::server::run(config));
    runtime.shutdown_timeout(std::time::Duration::from_secs(1));
    result
}

/// `RUST_LOG`, when set, overrides the configured level.
fn init_logging(level: &str, format: LogFormat) {
    // rustls warns about what peers send (an IP address as SNI, say), and
    // h2 about what clients do (a rapid-reset flood reaching its limit, on
    // every such connection): one line per connection would let any client
    // flood the log. Their errors are kept; our own end reasons say what
    // failed, and the metrics count it.
    let mut level = level.to_owned();
    for noisy in ["rustls", "h2"] {
        if !level.contains(noisy) {
            level.push_str(&format!(",{noisy}=error"));
        }
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.with_ansi(false).init(),
    }
}
