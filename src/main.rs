//! The `gatehouse` command line: `run`, `check`, `proxy`, `health`, `schema`, `completions`, `--version`.

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

/// Where the config is read from, unless given.
const DEFAULT_CONFIG: &str = "/etc/gatehouse/gatehouse.toml";

#[derive(clap::Args)]
struct ConfigArg {
    /// The config file (TOML).
    #[arg(long, short, env = "GATEHOUSE_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Log format; overrides `log.format` in the config.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
        /// Do not reload when the config file changes (SIGHUP and
        /// POST /config/reload still reload it).
        #[arg(long)]
        no_watch: bool,
        /// A Unix socket where this process hands its listening sockets
        /// to a successor started with --takeover (zero-downtime restart).
        #[arg(long, env = "GATEHOUSE_HANDOVER", value_name = "PATH")]
        handover: Option<PathBuf>,
        /// Take the listening sockets over from the process serving the
        /// --handover socket; it then stops accepting and drains.
        #[arg(long, env = "GATEHOUSE_TAKEOVER", requires = "handover")]
        takeover: bool,
    },
    /// Validate a config file (and load the certificates it names): exit 0
    /// when valid, 1 with every error otherwise.
    Check {
        /// The config file, as a plain argument (the same as --config).
        #[arg(value_name = "FILE", conflicts_with = "config")]
        file: Option<PathBuf>,
        #[command(flatten)]
        config: ConfigArg,
        /// Also print the effective config: every setting with the value
        /// in force, defaults and ${VAR} substitutions included.
        #[arg(long)]
        print: bool,
    },
    /// Ask a running Gatehouse's admin endpoint whether it is alive
    /// (GET /healthz): exit 0 if it answers 200 within 2 seconds, else 1.
    /// For container health checks, without curl in the image.
    Health {
        /// The admin endpoint.
        #[arg(long, value_name = "ADDR", default_value = config::DEFAULT_ADMIN_BIND)]
        admin: String,
    },
    /// Print the JSON Schema of the config file, for editors (for example
    /// with `#:schema ./gatehouse.schema.json` on a config's first line).
    Schema,
    /// Proxy at once, without a config file: every request (or, with
    /// --tcp, every connection) arriving at --from goes to the --to
    /// addresses, in turn. Built on the same config model as `run`.
    Proxy {
        /// Where to listen: HOST:PORT, or :PORT for every interface.
        #[arg(long, value_name = "ADDR")]
        from: String,
        /// Where to forward (HOST:PORT); repeat for several, used in turn.
        #[arg(long, value_name = "ADDR", required = true)]
        to: Vec<String>,
        /// Forward TCP connections (L4) instead of HTTP requests.
        #[arg(long, conflicts_with = "tls")]
        tcp: bool,
        /// Serve HTTPS with a certificate from the local CA ("internal"),
        /// for localhost and --host names.
        #[arg(long, value_name = "ISSUER", value_parser = ["internal"])]
        tls: Option<String>,
        /// Names the certificate is for (with --tls; default: localhost).
        #[arg(long = "host", value_name = "NAME")]
        hosts: Vec<String>,
        /// The admin endpoint (/metrics, /connections, …).
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9901")]
        admin: String,
        /// Log format.
        #[arg(long, value_enum)]
        log_format: Option<LogFormatArg>,
    },
    /// Print the hash of a password (argon2id), for a basic_auth filter's
    /// `users`: the password is read from standard input (its first line).
    HashPassword,
    /// Print the hash of an API key (`sha256:…`), for an api_key filter's
    /// `keys`: the key is read from standard input (its first line).
    HashKey,
    /// Print a completion script for a shell, to be sourced or installed
    /// (for example: gatehouse completions bash > /etc/bash_completion.d/gatehouse).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormatArg {
    Text,
    Json,
}

fn main() -> ExitCode {
    gatehouse::alloc::disable_huge_pages();
    // (Before anything is opened: what the leak audit must not count.)
    gatehouse::admin::audit::note_start();
    let cli = Cli::parse();
    match cli.command {
        Command::Check {
            file,
            config,
            print,
        } => {
            let path = file.unwrap_or(config.config);
            match check(&path) {
                Ok(c) => {
                    for w in &c.warnings {
                        eprintln!("warning: {w}");
                    }
                    if print {
                        print!("{}", config::print(&c));
                        return ExitCode::SUCCESS;
                    }
                    println!(
                        "{}: ok ({}, {})",
                        path.display(),
                        count(c.listeners.len(), "listener"),
                        count(c.routes.len(), "route")
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Run {
            config,
            log_format,
            no_watch,
            handover,
            takeover,
        } => {
            let opts = gatehouse::server::RunOptions {
                watch: !no_watch,
                handover: gatehouse::handover::Options {
                    path: handover,
                    takeover,
                },
            };
            exit(run(config.config, log_format, opts), log_format)
        }
        Command::Proxy {
            from,
            to,
            tcp,
            tls,
            hosts,
            admin,
            log_format,
        } => {
            let protocol = match (tcp, tls.is_some()) {
                (true, _) => "tcp",
                (false, true) => "https",
                (false, false) => "http",
            };
            let text = proxy_config(&from, &to, protocol, &hosts, &admin);
            let env = |name: &str| std::env::var(name).ok();
            let result = match config::parse("gatehouse proxy", &text, &env) {
                Ok(c) => {
                    println!(
                        "gatehouse proxy: {} {} → {} (admin: http://{}/)",
                        protocol,
                        listen_addr(&from),
                        to.join(", "),
                        admin
                    );
                    serve(c, None, log_format, Default::default())
                }
                Err(e) => Err(anyhow::anyhow!("{e}")),
            };
            exit(result, log_format)
        }
        Command::Health { admin } => match health(&admin) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("gatehouse health: {admin}: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Schema => {
            print!("{}", config::json_schema());
            ExitCode::SUCCESS
        }
        command @ (Command::HashPassword | Command::HashKey) => {
            let mut line = String::new();
            if std::io::stdin().read_line(&mut line).is_err() {
                eprintln!("cannot read standard input");
                return ExitCode::FAILURE;
            }
            let secret = line.trim_end_matches(['\r', '\n']);
            let hashed = match command {
                Command::HashKey => Ok(gatehouse::filter::hash_key(secret)),
                _ => gatehouse::filter::hash_password(secret),
            };
            match hashed {
                Ok(h) => {
                    println!("{h}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Completions { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "gatehouse",
                &mut std::io::stdout(),
            );
            ExitCode::SUCCESS
        }
    }
}

/// The exit status of `run` or `proxy`; a failure said by `fatal`.
fn exit(result: anyhow::Result<()>, log_format: Option<LogFormatArg>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            fatal(
                &format!("{e:#}"),
                matches!(log_format, Some(LogFormatArg::Json)),
            );
            ExitCode::FAILURE
        }
    }
}

/// "1 listener", "2 routes".
fn count(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

/// A fatal error on standard error: a log event once logging is set up
/// (JSON or text, as the log), or before that (the config could not be
/// read) one JSON event with `--log-format json`, else a plain line.
fn fatal(message: &str, json: bool) {
    if !tracing::dispatcher::has_been_set() && json {
        init_logging("error", LogFormat::Json);
    }
    if tracing::dispatcher::has_been_set() {
        tracing::error!("{message}");
    } else {
        eprintln!("gatehouse: {message}");
    }
}

/// Validates the config, then loads every certificate, key and CA file it names.
fn check(path: &std::path::Path) -> anyhow::Result<config::Config> {
    let c = config::load(path).map_err(|e| anyhow::anyhow!("{e}"))?;
    gatehouse::tls::TlsRt::build(&c).context("TLS settings")?;
    if let Some(t) = &c.admin_tls {
        gatehouse::tls::settings::admin_server_config(t).context("admin.tls")?;
    }
    Ok(c)
}

/// `GET /healthz` on the admin endpoint, with a 2-second deadline.
fn health(admin: &str) -> anyhow::Result<()> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let deadline = std::time::Duration::from_secs(2);
    let addr = admin
        .to_socket_addrs()?
        .next()
        .context("no address to connect to")?;
    let mut s = std::net::TcpStream::connect_timeout(&addr, deadline)?;
    s.set_read_timeout(Some(deadline))?;
    s.set_write_timeout(Some(deadline))?;
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: gatehouse\r\nConnection: close\r\n\r\n")?;
    let mut answer = Vec::new();
    s.take(4096).read_to_end(&mut answer)?;
    let line = String::from_utf8_lossy(&answer);
    let status = line.lines().next().unwrap_or_default();
    anyhow::ensure!(status.starts_with("HTTP/1.1 200"), "answered {status:?}");
    Ok(())
}

/// `:PORT` is every interface, as Caddy reads it.
fn listen_addr(from: &str) -> String {
    match from.strip_prefix(':') {
        Some(port) => format!("0.0.0.0:{port}"),
        None => from.to_owned(),
    }
}

/// The config `gatehouse proxy` stands for: one listener, one route, and
/// for HTTPS a certificate from the internal issuer (the default one).
/// (Values are TOML strings: the config's own validation checks them.)
fn proxy_config(
    from: &str,
    to: &[String],
    protocol: &str,
    hosts: &[String],
    admin: &str,
) -> String {
    let quote = |s: &str| toml::Value::String(s.to_owned()).to_string();
    let list = |v: &[String]| v.iter().map(|t| quote(t)).collect::<Vec<_>>().join(", ");
    let mut text = format!("admin.bind = {}\n", quote(admin));
    if protocol == "https" {
        let hosts = if hosts.is_empty() {
            vec!["localhost".to_owned()]
        } else {
            hosts.to_vec()
        };
        text.push_str(&format!(
            "[[certificates]]\nhosts = [{}]\nissuer = \"internal\"\ndefault = true\n",
            list(&hosts)
        ));
    }
    text.push_str(&format!(
        "[[listeners]]\nname = \"proxy\"\nbind = {}\nprotocol = \"{protocol}\"\n\
         [[routes]]\nname = \"proxy\"\naction.forward = [{}]\n",
        quote(&listen_addr(from)),
        list(to)
    ));
    text
}

fn run(
    path: PathBuf,
    log_format: Option<LogFormatArg>,
    opts: gatehouse::server::RunOptions,
) -> anyhow::Result<()> {
    let config = match config::load(&path) {
        Ok(c) => c,
        Err(LoadError::Invalid(errors)) => anyhow::bail!("invalid config:\n{errors}"),
        Err(e) => return Err(e.into()),
    };
    serve(config, Some(path), log_format, opts)
}

/// Runs the proxy on a loaded config until it is told to stop.
fn serve(
    config: config::Config,
    path: Option<PathBuf>,
    log_format: Option<LogFormatArg>,
    opts: gatehouse::server::RunOptions,
) -> anyhow::Result<()> {
    let source = path
        .as_ref()
        .map_or_else(|| "gatehouse proxy".to_owned(), |p| p.display().to_string());
    let format = match log_format {
        Some(LogFormatArg::Json) => LogFormat::Json,
        Some(LogFormatArg::Text) => LogFormat::Text,
        None => config.log.format,
    };
    init_logging(&config.log.level, format);
    tracing::info!(version = env!("CARGO_PKG_VERSION"), config = %source, workers = config.workers, "starting");
    for w in &config.warnings {
        tracing::warn!("config: {w}");
    }
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
    let result = runtime.block_on(gatehouse::server::run(config, path, opts));
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
    let wanted = std::env::var("RUST_LOG").unwrap_or(level);
    let (wanted, clamped) = clamp_levels(&wanted, tracing::level_filters::STATIC_MAX_LEVEL);
    let filter = tracing_subscriber::EnvFilter::new(wanted);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    // (Set once: a second call, for a fatal error, keeps the first.)
    let _ = match format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Text => builder.with_ansi(false).try_init(),
    };
    if clamped {
        tracing::warn!(
            "debug and trace events were asked for (RUST_LOG or log.level), but a release \
             build leaves them out; a debug build (cargo build) has them"
        );
    }
}

/// A filter with every debug or trace level lowered to `info` when the
/// build's `max` leaves those events out (a release build), and whether it
/// was. (tracing-subscriber would otherwise print its own advice about
/// crate features, in colour, even into a file.)
fn clamp_levels(filter: &str, max: tracing::level_filters::LevelFilter) -> (String, bool) {
    if max >= tracing::level_filters::LevelFilter::DEBUG {
        return (filter.to_owned(), false);
    }
    let mut clamped = false;
    let parts: Vec<String> = filter
        .split(',')
        .map(|part| {
            let (target, level) = match part.rsplit_once('=') {
                Some((t, l)) if !l.contains(['}', ']']) => (Some(t), l),
                Some(_) => return part.to_owned(),
                None => (None, part),
            };
            if !matches!(
                level.trim().to_ascii_lowercase().as_str(),
                "debug" | "trace"
            ) {
                return part.to_owned();
            }
            clamped = true;
            match target {
                Some(t) => format!("{t}=info"),
                None => "info".to_owned(),
            }
        })
        .collect();
    (parts.join(","), clamped)
}

#[cfg(test)]
mod tests {
    use super::clamp_levels;
    use tracing::level_filters::LevelFilter;

    #[test]
    fn debug_levels_are_lowered_only_where_the_build_has_none() {
        let f = "debug,h2=error,gatehouse::access=TRACE,x[span{a=1}]";
        assert_eq!(
            clamp_levels(f, LevelFilter::INFO),
            (
                "info,h2=error,gatehouse::access=info,x[span{a=1}]".to_owned(),
                true
            )
        );
        assert_eq!(clamp_levels(f, LevelFilter::TRACE), (f.to_owned(), false));
        assert_eq!(
            clamp_levels("info,rustls=error", LevelFilter::INFO),
            ("info,rustls=error".to_owned(), false)
        );
    }
}
