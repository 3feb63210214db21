//! The `strata` binary: parses arguments, calls the library, renders
//! results. Exit status: 0 success, 1 error, 2 usage, 3 partial (a backup
//! missed files or a restore failed entries), 4 `check` found problems.

mod cli;
mod commands;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // fuser logs routine events (such as unmounting an already
                // unmounted session) as errors; RUST_LOG=fuser=… shows them.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser=off")),
        )
        .with_writer(std::io::stderr)
        .init();
    strata::interrupt::install();
    match commands::run(cli) {
        Ok(status) => ExitCode::from(status as u8),
        Err(e) => {
            eprintln!("strata: {e:#}");
            ExitCode::from(commands::Status::Error as u8)
        }
    }
}
