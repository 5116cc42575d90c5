//! The `exdaas` command: parse arguments, load settings, start logging, run.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use exdaas_server::config;

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let loaded = match config::load(cli.config.as_deref()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("exdaas: invalid configuration: {e}");
            return ExitCode::from(2);
        }
    };
    match cli.command.unwrap_or(Command::Serve) {
        Command::CheckConfig => {
            match &loaded.file {
                Some(f) => println!("# configuration file: {}", f.display()),
                None => println!("# configuration file: none (built-in defaults)"),
            }
            match toml::to_string_pretty(&loaded.settings) {
                Ok(text) => println!("{text}"),
                Err(e) => {
                    eprintln!("exdaas: cannot print configuration: {e}");
                    return ExitCode::FAILURE;
                }
            }
            ExitCode::SUCCESS
        }
        Command::Serve => {
            match &loaded.file {
                Some(f) => tracing::info!(file = %f.display(), "configuration loaded"),
                None => {
                    tracing::info!("no configuration file; using built-in defaults and environment")
                }
            }
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("exdaas: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(exdaas_server::server::run(loaded)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "exdaas failed");
                    eprintln!("exdaas: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
