//! The `strata` binary: parses arguments, calls the library, renders
//! results. Exit status: 0 success, 1 error, 2 usage, 3 partial (a backup
//! missed files or a restore failed entries), 4 `check` found problems.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Chunk buffers (128 KiB to 16 MiB) are allocated and freed constantly
    // on many threads. A fixed mmap threshold keeps glibc from raising it
    // dynamically and then holding freed buffers in per-thread arenas, which
    // made a long-running mount's memory grow far past its cache size.
    // SAFETY: mallopt only changes allocator tuning; called before threads start.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
    let args = cli::args::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                // fuser logs routine events (such as unmounting an already
                // unmounted session) as errors; RUST_LOG=fuser=… shows them.
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,fuser=off")),
        )
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cancel = cli::signals::install();
    match cli::run(args, &cancel) {
        Ok(status) => ExitCode::from(status as u8),
        Err(e) if cli::is_closed_stdout(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("strata: {}", error_line(&e));
            ExitCode::from(cli::Status::Error as u8)
        }
    }
}

/// The error and its causes on one line, each cause said once: an error
/// that quotes its cause in its own message (`reading X: cause`) does
/// not repeat it.
fn error_line(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}
