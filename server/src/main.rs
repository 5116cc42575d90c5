//! The `exdaas` command: parse arguments, load settings, start logging, run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use exdaas_server::admin_client::{Target, TlsArgs};
use exdaas_server::config::{self, LoadedSettings};
use exdaas_server::plugin::compiler;
use exdaas_server::{admin_client, backup, kv_cli, plugin_cli, token_cli};

/// A durable, sharded JSON key-value server with WebAssembly write plugins.
#[derive(Parser)]
#[command(name = "exdaas", version)]
struct Cli {
    /// Settings file (TOML). Default: config/exdaas.toml when it exists.
    #[arg(long, global = true, value_name = "PATH")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server (the default).
    Serve,
    /// Validate the settings and print the effective configuration as TOML.
    CheckConfig,
    /// Write a backup: from a running server (default, at server.listen or
    /// --server), or from a stopped server's data directory (--data-dir).
    Backup {
        /// The file to write (written to FILE.partial, checked, then renamed).
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
        /// Read a stopped server's data directory instead of asking a running one.
        #[arg(long, value_name = "DIR", conflicts_with = "server")]
        data_dir: Option<PathBuf>,
        /// host:port of the running server (default: from server.listen).
        #[arg(long, value_name = "HOST:PORT")]
        server: Option<String>,
        /// Bearer token for the server, if it requires one.
        #[arg(long, env = "EXDAAS_TOKEN", hide_env_values = true)]
        token: Option<String>,
        #[command(flatten)]
        tls: TlsArgs,
    },
    /// Restore a backup into a new or empty data directory (the server must
    /// not be running on it). The file is checked completely first.
    Restore {
        /// The backup file.
        #[arg(long = "in", value_name = "FILE")]
        input: PathBuf,
        /// Target directory (default: storage.data_dir).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Start numbering this far past the backup's revision, so that no
        /// version the source handed out after the backup is handed out again.
        #[arg(long, value_name = "N", default_value_t = backup::DEFAULT_RESTORE_BUMP)]
        bump_revision: u64,
    },
    /// Rewrite a stopped server's data directory with another shard count
    /// (the previous directory is kept beside it until you remove it).
    Reshard {
        /// The new shard count.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1024))]
        shards: u32,
        /// The data directory (default: storage.data_dir).
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Talk to a running server's key-value API (exit codes: 0 ok, 3 not
    /// found, 4 condition failed, 5 rejected, 6 not allowed, 1 other).
    Kv {
        /// host:port or https://host:port of the server (default: from
        /// server.listen, over TLS when the configuration has [tls]).
        #[arg(long, value_name = "HOST:PORT", global = true)]
        server: Option<String>,
        /// Bearer token, if the server requires one.
        #[arg(long, env = "EXDAAS_TOKEN", hide_env_values = true, global = true)]
        token: Option<String>,
        #[command(flatten)]
        tls: TlsArgs,
        #[command(subcommand)]
        command: exdaas_server::kv_cli::KvCommand,
    },
    /// Try a plugin module without a server: run its test vectors, or call
    /// it once (exit codes: 0 passed / ran, 1 a vector or the call failed,
    /// 2 the module, vectors or arguments are unusable).
    Plugin {
        #[command(subcommand)]
        command: plugin_cli::PluginCommand,
    },
    /// Compile one plugin module for a running server (which starts this
    /// itself, under its `[plugin_compile]` bounds).
    #[command(name = "compile-module", hide = true)]
    CompileModule {
        /// The module, binary WebAssembly.
        #[arg(long, value_name = "FILE")]
        input: PathBuf,
        /// Where the compiled module goes.
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        /// Compile for an engine that meters fuel.
        #[arg(long)]
        metered: bool,
        /// Address-space limit to set first.
        #[arg(long, value_name = "BYTES")]
        max_memory_bytes: u64,
    },
    /// Make tokens: `exdaas token new` prints a fresh secret and the
    /// tokens-file entry that holds only its SHA-256.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Exit 0 when the server answers /health (for container health checks).
    Health {
        /// host:port or https://host:port of the server (default: from server.listen).
        #[arg(long, value_name = "HOST:PORT")]
        server: Option<String>,
        #[command(flatten)]
        tls: TlsArgs,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// A fresh secret and its entry for `auth.tokens_file`.
    New(token_cli::NewToken),
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("EXDAAS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    if std::env::var("EXDAAS_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json")) {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        // Disk reads run on blocking threads: a few per core keep the disk
        // busy, and every extra thread costs a stack and a malloc arena.
        .max_blocking_threads(16)
        .enable_all()
        .build()?)
}

/// The server a subcommand talks to: `--server`, else this configuration's
/// own listener (over TLS when it has `[tls]`).
fn target(
    loaded: &LoadedSettings,
    server: Option<String>,
    tls: &TlsArgs,
) -> anyhow::Result<Target> {
    let server = match server {
        Some(s) => s,
        None => admin_client::local_target(loaded.listen_addr()?),
    };
    Target::parse(&server, loaded.settings.tls.enabled(), tls)
}

fn check_config(loaded: &LoadedSettings) -> anyhow::Result<()> {
    match &loaded.file {
        Some(f) => println!("# configuration file: {}", f.display()),
        None => println!("# configuration file: none (built-in defaults)"),
    }
    println!("{}", toml::to_string_pretty(&loaded.settings)?);
    Ok(())
}

/// Where a backup comes from.
enum BackupSource {
    /// A stopped server's data directory.
    Stopped(PathBuf),
    /// A running server, with its token.
    Running(Target, Option<String>),
}

/// Writes the backup stream into `partial` and syncs it to disk.
fn write_backup_file(
    loaded: &LoadedSettings,
    partial: &Path,
    source: BackupSource,
) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(
        std::fs::File::create(partial)
            .map_err(|e| anyhow::anyhow!("{}: {e}", partial.display()))?,
    );
    match source {
        BackupSource::Stopped(dir) => {
            backup::backup_stopped(&dir, loaded.settings.storage.store_cache_bytes, &mut file)?;
        }
        BackupSource::Running(addr, token) => {
            let status = runtime()?.block_on(admin_client::get(
                &addr,
                "/v1/admin/backup",
                token.as_deref(),
                &mut file,
            ))?;
            if status != 200 {
                drop(file);
                let why = server_reason(partial);
                anyhow::bail!("server at {addr} refused the backup ({status}): {why}");
            }
        }
    }
    std::io::Write::flush(&mut file)?;
    file.get_ref().sync_all()?;
    Ok(())
}

fn backup_cmd(loaded: &LoadedSettings, out: &Path, source: BackupSource) -> anyhow::Result<()> {
    let partial = out.with_extension("partial");
    let written = write_backup_file(loaded, &partial, source)
        .and_then(|()| Ok(backup::validate(&partial)?))
        .and_then(|summary| {
            std::fs::rename(&partial, out)
                .map_err(|e| anyhow::anyhow!("{}: {e}", out.display()))?;
            Ok(summary)
        });
    let summary = match written {
        Ok(summary) => summary,
        Err(e) => {
            // A failed backup leaves nothing that could be mistaken for one.
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    println!(
        "backup {}: {} records from {} shards",
        out.display(),
        summary.records,
        summary.shards
    );
    Ok(())
}

/// The `message` of a server's error answer saved in `path` (what it
/// said, for the user), or its first bytes when it is not one.
fn server_reason(path: &Path) -> String {
    let body = std::fs::read(path).unwrap_or_default();
    reason_of(&body)
}

fn reason_of(body: &[u8]) -> String {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(body).ok();
    match parsed.as_ref().and_then(|v| v["error"]["message"].as_str()) {
        Some(message) => exdaas_server::logsafe::escape(message, 1024),
        None => exdaas_server::logsafe::escape(&String::from_utf8_lossy(body), 256),
    }
}

fn health(loaded: &LoadedSettings, server: Option<String>, tls: &TlsArgs) -> anyhow::Result<()> {
    let addr = target(loaded, server, tls)?;
    let mut body = Vec::new();
    let status = runtime()?.block_on(admin_client::get(&addr, "/health", None, &mut body))?;
    if status != 200 {
        anyhow::bail!("{addr} answered {status}: {}", reason_of(&body));
    }
    println!("{}", String::from_utf8_lossy(&body));
    Ok(())
}

/// `exdaas kv ...`: one request; the exit code says how it went.
fn kv_cmd(
    loaded: &LoadedSettings,
    server: Option<String>,
    token: Option<String>,
    tls: &TlsArgs,
    command: kv_cli::KvCommand,
) -> ExitCode {
    let outcome = target(loaded, server, tls).and_then(|addr| {
        let read_stdin = || std::io::read_to_string(std::io::stdin());
        runtime()?.block_on(kv_cli::run(&addr, token.as_deref(), command, read_stdin))
    });
    match outcome {
        Ok(outcome) => {
            if !outcome.stdout.is_empty() {
                println!("{}", outcome.stdout);
            }
            if !outcome.stderr.is_empty() {
                eprintln!("{}", outcome.stderr);
            }
            ExitCode::from(outcome.code)
        }
        Err(e) => {
            eprintln!("exdaas kv: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// `exdaas plugin ...`: prints the report; the exit code says how it went.
fn plugin_cmd(loaded: &LoadedSettings, command: plugin_cli::PluginCommand) -> ExitCode {
    let limits = loaded.settings.limits.value_limits();
    match plugin_cli::run(command, limits, &loaded.settings.storage.data_dir) {
        Ok(outcome) => {
            println!("{}", outcome.stdout);
            ExitCode::from(outcome.code)
        }
        Err(e) => {
            eprintln!("exdaas plugin: {e}");
            ExitCode::from(2)
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The compile child reads no settings and logs nothing: it answers to
    // the server that started it, on stdout, stderr and its exit code.
    if let Some(Command::CompileModule {
        input,
        output,
        metered,
        max_memory_bytes,
    }) = cli.command
    {
        let args = compiler::ChildArgs {
            input,
            output,
            metered,
            max_memory_bytes,
        };
        let code = compiler::run_child(&args);
        return ExitCode::from(u8::try_from(code).unwrap_or(1));
    }
    if let Some(Command::Token {
        command: TokenCommand::New(asked),
    }) = cli.command
    {
        return token_cli::run_new(asked);
    }
    init_logging();
    let loaded = match config::load(cli.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("exdaas: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    let serving = matches!(command, Command::Serve);
    let result = match command {
        Command::Kv {
            server,
            token,
            tls,
            command,
        } => return kv_cmd(&loaded, server, token, &tls, command),
        Command::Plugin { command } => return plugin_cmd(&loaded, command),
        Command::CheckConfig => check_config(&loaded),
        Command::Backup {
            out,
            data_dir,
            server,
            token,
            tls,
        } => match data_dir {
            Some(dir) => backup_cmd(&loaded, &out, BackupSource::Stopped(dir)),
            None => target(&loaded, server, &tls)
                .and_then(|t| backup_cmd(&loaded, &out, BackupSource::Running(t, token))),
        },
        Command::Restore {
            input,
            data_dir,
            bump_revision,
        } => {
            let dir = data_dir.unwrap_or_else(|| loaded.settings.storage.data_dir.clone());
            let storage = &loaded.settings.storage;
            let shards = storage.shards;
            let options = backup::RestoreOptions {
                shards,
                store_cache_bytes: storage.store_cache_bytes,
                bump_revision,
                plugins: Some(backup::PluginChecks {
                    compile: loaded.settings.plugin_compile.limits(),
                    isolated: true,
                    max_module_bytes: loaded.settings.plugin_uploads.max_module_bytes,
                    value_limits: loaded.settings.limits.value_limits(),
                }),
            };
            backup::restore(&input, &dir, &options)
                .map(|s| {
                    println!(
                        "restored {} records into {} ({shards} shards; the backup had {}); \
                         versions continue above {}",
                        s.records,
                        dir.display(),
                        s.shards,
                        s.seq.saturating_add(bump_revision)
                    )
                })
                .map_err(anyhow::Error::from)
        }
        Command::Health { server, tls } => health(&loaded, server, &tls),
        Command::CompileModule { .. } | Command::Token { .. } => Ok(()), // answered above
        Command::Reshard { shards, data_dir } => {
            let dir = data_dir.unwrap_or_else(|| loaded.settings.storage.data_dir.clone());
            backup::reshard(&dir, shards, loaded.settings.storage.store_cache_bytes)
                .map(|(summary, previous)| {
                    println!(
                        "resharded {} into {shards} shards ({} records); the previous data is kept at {}: \
                         remove it once the server runs with storage.shards = {shards}",
                        dir.display(),
                        summary.records,
                        previous.display()
                    )
                })
                .map_err(anyhow::Error::from)
        }
        Command::Serve => {
            match &loaded.file {
                Some(f) => tracing::info!(file = %f.display(), "configuration loaded"),
                None => {
                    tracing::info!("no configuration file; using built-in defaults and environment")
                }
            }
            runtime().and_then(|rt| {
                let result = rt.block_on(exdaas_server::server::run(loaded));
                // The stores are closed by now; do not let a stuck blocking
                // task (a client read, say) keep the process alive.
                rt.shutdown_timeout(std::time::Duration::from_secs(2));
                result
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once: a server says it in its log (which may be JSON for a
            // collector), a command on its standard error.
            if serving {
                tracing::error!(error = %format!("{e:#}"), "exdaas failed");
            } else {
                eprintln!("exdaas: {e:#}");
            }
            ExitCode::FAILURE
        }
    }
}
