//! `strata server` and `strata server token`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;
use strata::cancel::CancelToken;
use strata::remote::protocol::Role;
use strata::remote::server::{serve, ServerConfig};
use strata::remote::tokens::Tokens;

use super::args::{ServerArgs, ServerCommand, TokenCommand};
use super::render::print_json;
use super::Status;

pub fn run(args: ServerArgs, limit_upload: Option<u64>, cancel: &CancelToken) -> Result<Status> {
    match args.command {
        Some(ServerCommand::Token(command)) => token(command),
        None => run_server(args, limit_upload, cancel),
    }
}

fn run_server(args: ServerArgs, limit_upload: Option<u64>, cancel: &CancelToken) -> Result<Status> {
    let mut repositories = Vec::new();
    for spec in &args.serve {
        let (name, location) = spec
            .split_once('=')
            .with_context(|| format!("--serve {spec:?}: expected NAME=LOCATION"))?;
        repositories.push((name.to_string(), PathBuf::from(location)));
    }
    if repositories.is_empty() {
        bail!("nothing to serve: give at least one --serve NAME=LOCATION");
    }
    let config = ServerConfig {
        listen: args.listen,
        state: args.dir.clone(),
        repositories,
        tls: args.tls_cert.zip(args.tls_key),
        max_sessions: args.max_sessions,
        session_timeout: Duration::from_secs(args.session_timeout),
        limit_upload,
        open: super::open_options(),
    };
    let stop = {
        let cancel = cancel.clone();
        async move {
            while !cancel.is_cancelled() {
                strata::remote::server::pause(Duration::from_millis(100)).await;
            }
        }
    };
    serve(
        config,
        |address, fingerprint| {
            // One line a script (or a test) can read before connecting.
            println!("listening {address} fingerprint {fingerprint}");
        },
        stop,
    )?;
    out!("stopped");
    Ok(Status::Ok)
}

fn token(command: TokenCommand) -> Result<Status> {
    match command {
        TokenCommand::Add {
            name,
            role,
            sources,
            dir,
        } => {
            let role = Role::parse(&role).context("unknown role")?;
            let secret = Tokens::in_state(&dir).add(&name, role, sources)?;
            eprintln!("token {name} ({}) made; it is shown once, keep it secret:", role.name());
            out!("{secret}");
        }
        TokenCommand::List { dir, json } => {
            let tokens = Tokens::in_state(&dir).list()?;
            if json.json {
                print_json(&json!(tokens
                    .iter()
                    .map(|t| json!({"name": t.name, "role": t.role, "sources": t.sources, "created": t.created}))
                    .collect::<Vec<_>>()))?;
            } else {
                for t in tokens {
                    out!("{}\t{}\t{}", t.name, t.role.name(), t.sources.join(","));
                }
            }
        }
        TokenCommand::Remove { name, dir } => {
            if !Tokens::in_state(&dir).remove(&name)? {
                bail!("no token named {name:?} in {}", dir.display());
            }
            out!("removed token {name}");
        }
    }
    Ok(Status::Ok)
}
